"""Chaos on `tidings serve --workers 2`: a worker killed, the broker stalled; nothing lost.

    .venv/bin/python bench/workers_chaos.py                      # SQLite + a throwaway redis-server
    .venv/bin/python bench/workers_chaos.py --db postgresql://user@127.0.0.1/db   # + --broker below
    .venv/bin/python bench/workers_chaos.py --db postgresql://... --broker postgres

--subscribers clients (default 8) subscribe through the port (the kernel spreads them over the
workers: printed) and resume like real clients: when their connection drops they reconnect to
the port with ``after:`` their last seq. Events are published at --rate (20/s) through new
connections (so through both workers). Phases, --seconds each (default 3): healthy; one worker
SIGKILLed (the supervisor starts another); the broker SIGSTOPped for --stall seconds (default 5;
redis-server only: a stalled PostgreSQL is the database too, so with --broker postgres this
phase is skipped); after SIGCONT. Printed per phase: events, p50/p99 publish-to-receipt latency
over all subscribers, slowest mutation; after SIGCONT, seconds until every subscriber gets events
live again (5 in a row within 100 ms); at the end, every subscriber's seqs are checked against
the log: missing, duplicated, out of order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson
import websockets
from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import SUBPROTOCOL, Server, cli, median, pct, start_server
from workers import redis_server, spread, tree

ROOM = "chaos"
CREATE = "mutation($i: CreateMessageInput!) { createMessage(input: $i) { id } }"
LIVE = 0.1


class Subscriber:
    """A client that resumes: on a dropped connection it reconnects with ``after:`` its last seq."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seqs: list[int] = []
        self.received: list[tuple[float, float]] = []  # (publish time, receive time)
        self.reconnects = 0
        self.ready = asyncio.Event()

    async def run(self) -> None:
        while True:
            after = self.seqs[-1] if self.seqs else 0
            query = (
                f'subscription {{ messageEvents(where: {{room: {{eq: "{ROOM}"}}}}, after: "{after}") '
                "{ seq record { body } } }"
            )
            try:
                async with connect(self.url, subprotocols=[SUBPROTOCOL], open_timeout=10) as ws:  # type: ignore[list-item]
                    await ws.send(orjson.dumps({"type": "connection_init"}).decode())
                    await ws.recv()
                    await ws.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}).decode())
                    self.ready.set()
                    async for raw in ws:
                        message = orjson.loads(raw)
                        if message.get("type") == "next":
                            event = message["payload"]["data"]["messageEvents"]
                            self.seqs.append(int(event["seq"]))
                            self.received.append((float(event["record"]["body"]), time.time()))
            except (OSError, websockets.ConnectionClosed, TimeoutError):
                pass
            self.reconnects += 1
            await asyncio.sleep(0.1)  # a client's reconnect delay


async def publish(http: httpx.AsyncClient) -> float:
    """One event through a new connection; the seconds the mutation took (retried if a worker dies)."""
    began = time.monotonic()
    while True:
        try:
            values = {"room": ROOM, "author": "chaos", "body": f"{time.time():.6f}"}
            response = await http.post("/graphql", json={"query": CREATE, "variables": {"i": values}})
        except httpx.TransportError:
            continue
        if response.status_code != 200 or "errors" in response.json():
            raise RuntimeError(f"publish failed: {response.status_code} {response.text[:300]}")
        return time.monotonic() - began


async def phase(name: str, http: httpx.AsyncClient, subs: list[Subscriber], seconds: float, rate: float) -> None:
    starts = [len(s.received) for s in subs]
    slowest, sent, began = 0.0, 0, time.monotonic()
    while time.monotonic() - began < seconds:
        slowest = max(slowest, await publish(http))
        sent += 1
        await asyncio.sleep(max(0.0, began + sent / rate - time.monotonic()))
    deadline = time.monotonic() + 5
    while any(len(s.received) - n < sent for s, n in zip(subs, starts, strict=True)):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    latencies = [(r - p) * 1000 for s, n in zip(subs, starts, strict=True) for p, r in s.received[n:]]
    got = min(len(s.received) - n for s, n in zip(subs, starts, strict=True))
    print(
        f"  {name:<26} {got:>4}/{sent:<4} {median(latencies):8.1f} {pct(latencies, 99):8.1f} {slowest * 1000:10.1f}",
        flush=True,
    )


async def until_live(http: httpx.AsyncClient, subs: list[Subscriber], limit: float, streak: int = 5) -> float | None:
    began = time.monotonic()
    first, live = 0.0, 0
    while time.monotonic() - began < limit:
        counts = [len(s.received) for s in subs]
        sent = time.monotonic()
        await publish(http)
        while time.monotonic() - sent < LIVE and any(len(s.received) == n for s, n in zip(subs, counts, strict=True)):
            await asyncio.sleep(0.005)
        if all(any(r - p < LIVE for p, r in s.received[n:]) for s, n in zip(subs, counts, strict=True)):
            first = sent if live == 0 else first
            live += 1
            if live == streak:
                return first - began
        else:
            live = 0
        await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - sent)))
    return None


async def chaos(args: argparse.Namespace, server: Server, broker_pid: int | None) -> None:
    subs = [Subscriber(server.ws_url) for _ in range(args.subscribers)]
    tasks = [asyncio.create_task(s.run()) for s in subs]
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30, limits=no_keepalive) as http:
            await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in subs)), 60)
            workers = [p for p in tree(server.pid) if p != server.pid and "spawn_main" in cmdline(p)]
            held = spread(workers, server.port)
            print(f"  workers {workers}; subscriber connections per worker {held}")
            victim = max(workers, key=lambda pid: held.get(pid, 0))  # the one holding the most subscribers
            print(f"  {'phase':<26} {'got':>9} {'p50 ms':>8} {'p99 ms':>8} {'slowest ms':>10}")
            await phase("healthy", http, subs, args.seconds, args.rate)
            os.kill(victim, signal.SIGKILL)
            await phase(f"worker {victim} SIGKILLed", http, subs, args.seconds, args.rate)
            await phase("after the kill", http, subs, args.seconds, args.rate)
            if broker_pid is None:
                print("  (broker stall skipped: the PostgreSQL broker is the database, a stall stops writes too)")
            else:
                os.kill(broker_pid, signal.SIGSTOP)
                try:
                    await phase(f"broker SIGSTOPped {args.stall:g} s", http, subs, args.stall, args.rate)
                finally:
                    os.kill(broker_pid, signal.SIGCONT)
                took = await until_live(http, subs, 10)
                print(f"  live again {took:.2f} s after SIGCONT" if took is not None else "  ! never live again")
                await phase("after SIGCONT", http, subs, args.seconds, args.rate)
            # Every worker's dispatcher reaches the head once the last event is delivered; any one says it.
            head = int((await http.get("/healthz")).json()["seq"])
        deadline = time.monotonic() + 10
        while any(not s.seqs or s.seqs[-1] < head for s in subs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        missing = sum(len(set(range(1, head + 1)) - set(s.seqs)) for s in subs)
        dups = sum(len(s.seqs) - len(set(s.seqs)) for s in subs)
        ooo = sum(sum(1 for a, b in zip(s.seqs, s.seqs[1:], strict=False) if b <= a) for s in subs)
        print(
            f"  log head {head}; over {len(subs)} subscribers: {missing} missing, {dups} duplicated, "
            f"{ooo} out of order; {sum(s.reconnects for s in subs)} reconnects"
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    return ""


async def run(args: argparse.Namespace) -> None:
    print(f"workers chaos: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        extra = ["--workers", "2", "--log-level", "warning"]
        broker_pid = None
        if args.db:
            extra += ["--db", args.db]
        if args.broker == "redis":
            url = stack.enter_context(redis_server(workdir))
            port = int(re.findall(r":(\d+)/", url)[0])
            broker_pid = next(p for p in all_pids() if f"127.0.0.1:{port}" in cmdline(p) or f" {port} " in cmdline(p))
            extra += ["--broker", url]
        else:
            extra += ["--broker", args.broker]
        with start_server("tidings", workdir, *extra, start_timeout=60) as server:
            await chaos(args, server, broker_pid)
            problems = server.log_problems()
        for line in problems[:12]:
            print(f"  log: {line[:200]}")


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=8)
    parser.add_argument("--rate", type=float, default=20.0, help="events a second")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each phase")
    parser.add_argument("--stall", type=float, default=5.0, help="seconds the broker stays SIGSTOPped")
    parser.add_argument("--db", default=None, help="postgresql://...; default a temporary SQLite file")
    parser.add_argument("--broker", default="redis", help="redis (a throwaway redis-server) or postgres")
    args = parser.parse_args()
    cli(lambda: asyncio.wait_for(run(args), 300), "the server and redis-server")


if __name__ == "__main__":
    main()
