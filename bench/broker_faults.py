"""Live delivery through Redis faults: killed, restarted, stalled (SIGSTOP), resumed (tidings).

One `tidings serve --broker redis://...` process on its own throwaway redis-server, one
WebSocket subscriber, events published through the mutation at a steady rate. Per phase
it prints delivery latency (publish to receive) and the slowest mutation response, and
after Redis returns, how long until an event is delivered live again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
from websockets.asyncio.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    SUBPROTOCOL,
    SUBSCRIBE,
    Publisher,
    Server,
    cli,
    free_port,
    median,
    pct,
    start_redis,
    start_server,
)

LIVE = 0.1  # an event delivered within this is live, not from the gap check (1 s)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A redis-server on a free port; the list holds the current process (restarts replace it)."""
    port = free_port()
    procs = [start_redis(port, workdir)]
    try:
        yield port, procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(5)


class Subscriber:
    def __init__(self) -> None:
        self.received: list[tuple[float, float]] = []  # (publish time, receive time)
        self.arrived = asyncio.Event()

    async def run(self, ws: ClientConnection) -> None:
        async for raw in ws:
            message = orjson.loads(raw)
            if message.get("type") == "next":
                body = message["payload"]["data"]["messageEvents"]["record"]["body"]
                self.received.append((float(body), time.time()))
                self.arrived.set()


async def phase(name: str, pub: Publisher, sub: Subscriber, events: int, rate: float) -> None:
    start = len(sub.received)
    slowest = 0.0
    for _ in range(events):
        began = time.monotonic()
        await asyncio.wait_for(pub.publish_timed("bench"), 30)
        slowest = max(slowest, time.monotonic() - began)
        await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - began)))
    deadline = time.monotonic() + 5
    while len(sub.received) < start + events and time.monotonic() < deadline:
        sub.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sub.arrived.wait(), 0.5)
    latencies = [(r - p) * 1000 for p, r in sub.received[start:]]
    got = len(latencies)
    p50 = f"{median(latencies):7.1f}" if latencies else "      -"
    p99 = f"{pct(latencies, 99):7.1f}" if latencies else "      -"
    print(f"  {name:<22} {got:>4}/{events:<4} {p50} {p99} {slowest * 1000:11.1f}")


async def until_live(pub: Publisher, sub: Subscriber, limit: float, streak: int = 5) -> float | None:
    """Seconds from now until live delivery is back: the first of ``streak`` events in a row
    delivered live (one published every 50 ms), so a gap check landing by chance does not count."""
    began = time.monotonic()
    first_live = 0.0
    live = 0
    while time.monotonic() - began < limit:
        count = len(sub.received)
        sent = time.monotonic()
        await asyncio.wait_for(pub.publish_timed("bench"), 30)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sub.arrived.wait(), 0.05)
        sub.arrived.clear()
        if any(r - p < LIVE for p, r in sub.received[count:]):
            first_live = sent if live == 0 else first_live
            live += 1
            if live == streak:
                return first_live - began
        else:
            live = 0
        await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - sent)))
    return None


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as tmp:
        workdir = Path(tmp)
        with redis_server(workdir) as (port, procs):
            url = f"redis://127.0.0.1:{port}/0"
            with start_server("tidings", workdir, "--broker", url) as server:
                await measure(server, port, procs, workdir, args)
                problems = server.log_problems()
        if problems:
            print("  ! tidings log:\n    " + "\n    ".join(problems[:10]))


async def measure(
    server: Server, port: int, procs: list[subprocess.Popen[bytes]], workdir: Path, args: argparse.Namespace
) -> None:
    sub = Subscriber()
    async with connect(server.ws_url, subprotocols=[SUBPROTOCOL]) as ws, Publisher(server, timeout=30) as pub:  # type: ignore[list-item]
        await ws.send(orjson.dumps({"type": "connection_init"}).decode())
        await ws.recv()
        query = {"query": SUBSCRIBE["tidings"], "variables": {"room": "bench"}}
        await ws.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": query}).decode())
        reader = asyncio.create_task(sub.run(ws))
        try:
            await asyncio.sleep(0.3)  # let the subscription register before the first event
            n, rate = args.events, args.rate
            print(f"  {'phase':<22} {'got':>9} {'p50 ms':>7} {'p99 ms':>7} {'slowest POST ms':>11}")
            await phase("healthy", pub, sub, n, rate)
            procs[0].kill()
            procs[0].wait(5)
            await phase("redis killed", pub, sub, n, rate)
            procs[0] = start_redis(port, workdir)
            took = await until_live(pub, sub, 10)
            print(f"  live again {took:.2f} s after redis-server restarted" if took else "  ! never live again")
            await phase("after restart", pub, sub, n, rate)
            os.kill(procs[0].pid, signal.SIGSTOP)
            try:
                await phase("redis stalled (SIGSTOP)", pub, sub, n, rate)
            finally:
                os.kill(procs[0].pid, signal.SIGCONT)
            took = await until_live(pub, sub, 10)
            print(f"  live again {took:.2f} s after SIGCONT" if took else "  ! never live again")
            await phase("after SIGCONT", pub, sub, n, rate)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=40, help="events per phase")
    parser.add_argument("--rate", type=float, default=20.0, help="events a second")
    args = parser.parse_args()
    cli(lambda: run(args), "the server and redis-server")


if __name__ == "__main__":
    main()
