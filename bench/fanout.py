"""Fan-out benchmark: tidings, a naive Strawberry server and a raw broadcast, side by side.

    .venv/bin/python bench/fanout.py                 # all runs, default sizes
    .venv/bin/python bench/fanout.py --quick         # small smoke run
    .venv/bin/python bench/fanout.py --runs fanout --subscribers 2000 --events 30

Runs (``--runs``, comma list):
  fanout   N subscribers (graphql-transport-ws) of one room on each server, E events
           published back to back through mutations; deliveries/s, latency, server
           CPU per delivery, server memory per connection, losses, ratios to raw.
  latency  the same at a steady rate (default 1,000 subscribers, 50 events/s).
  rooms    tidings alone: 10,000 subscriptions over 1,000 rooms versus only the 10 of
           the room being published to; server CPU per event in both, and the ratio.
  slow     tidings alone: subscribers plus one that stops reading; the slow one must
           be closed (4008) while the others get everything, and memory stays bounded.

Every server runs in its own process on a free 127.0.0.1 port and is measured from
/proc (CPU time, RSS); load clients run in worker processes. Runs are bounded in
count and time and stop everything they started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")

SUBSCRIBE = {
    "tidings": "subscription($room: String!) { messageEvents(where: {room: {eq: $room}}) "
    "{ operation seq record { id room author body } } }",
}
SUBSCRIBE["naive"] = SUBSCRIBE["tidings"]
SUBSCRIBE["raw"] = SUBSCRIBE["tidings"]
CREATE = "mutation($i: CreateMessageInput!) { createMessage(input: $i) { id } }"


# -- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    @property
    def publish_path(self) -> str:
        return "/publish" if self.name == "raw" else "/graphql"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def errors(self) -> list[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line]


@contextlib.contextmanager
def start_server(name: str, workdir: Path, *extra: str) -> Iterator[Server]:
    port = free_port()
    log = workdir / f"{name}-{port}.log"
    uvicorn_common = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if name == "tidings":
        db = workdir / f"bench-{port}.db"
        cmd = [
            PYTHON,
            "-m",
            "tidings.cli",
            "serve",
            *uvicorn_common,
            "--db",
            f"sqlite:///{db}",
            "--no-graphiql",
            *extra,
        ]
    else:
        module = {"naive": "bench.naive_strawberry:app", "raw": "bench.raw_ws:app"}[name]
        cmd = [PYTHON, "-m", "uvicorn", module, *uvicorn_common, "--ws-per-message-deflate", "false"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    server = Server(name, proc, port, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.05)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def publish(client: httpx.AsyncClient, server: Server, room: str, body: str) -> None:
    payload = {"query": CREATE, "variables": {"i": {"room": room, "author": "bench", "body": body}}}
    response = await client.post(
        server.publish_path, content=orjson.dumps(payload), headers={"content-type": "application/json"}
    )
    data = response.json()
    if response.status_code != 200 or data.get("errors"):
        raise RuntimeError(f"{server.name} publish failed: {response.status_code} {data}")


# -- load workers --------------------------------------------------------------------------


@dataclass
class Tally:
    seen: int = 0
    received: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    last_seq: int = 0
    latencies: list[float] = field(default_factory=list)
    last_at: float = 0.0
    closed: tuple[int, str] | None = None


class Worker:
    """Owns some subscriber connections; driven by commands from the parent process."""

    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self.tallies: list[Tally] = []  # of the connections that read
        self.conns: list[ClientConnection] = []
        self.slow_conns: list[ClientConnection] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.measuring = False

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            command, args = await loop.run_in_executor(None, self.pipe.recv)
            if command == "stop":
                for task in self.tasks:
                    task.cancel()
                for conn in self.conns:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 1)
                self.pipe.send(("stopped", None))
                return
            result = await getattr(self, command)(**args)
            self.pipe.send(("ok", result))

    async def connect(self, url: str, query: str, rooms: list[list[str]], slow: bool = False) -> int:
        """One connection per entry of ``rooms``, one subscription per room in it."""
        sem = asyncio.Semaphore(50)

        async def one(conn_rooms: list[str]) -> None:
            async with sem:
                kw: dict[str, Any] = {}
                if slow:
                    sock = socket.socket()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0])))
                    sock.setblocking(False)
                    kw = {"sock": sock, "max_queue": 1}
                conn = await websockets.connect(
                    url,
                    subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
                    compression=None,
                    max_size=None,
                    ping_interval=None,
                    open_timeout=60,
                    **kw,
                )
                await conn.send('{"type":"connection_init","payload":{}}')
                ack = orjson.loads(await asyncio.wait_for(conn.recv(), 30))
                assert ack["type"] == "connection_ack", ack
                for i, room in enumerate(conn_rooms):
                    subscribe = {
                        "id": str(i + 1),
                        "type": "subscribe",
                        "payload": {"query": query, "variables": {"room": room}},
                    }
                    await conn.send(orjson.dumps(subscribe).decode())  # a text frame, as the protocol requires
                self.conns.append(conn)
                if slow:
                    self.slow_conns.append(conn)  # never read until read_slow
                else:
                    tally = Tally()
                    self.tallies.append(tally)
                    self.tasks.append(asyncio.create_task(self.read(conn, tally)))

        await asyncio.gather(*(one(r) for r in rooms))
        return len(self.conns)

    async def read(self, conn: ClientConnection, tally: Tally) -> None:
        try:
            async for raw in conn:
                now = time.time()
                message = orjson.loads(raw)
                kind = message.get("type")
                if kind == "ping":
                    await conn.send('{"type":"pong"}')
                    continue
                if kind != "next":
                    continue
                event = message["payload"]["data"]["messageEvents"]
                body = event["record"]["body"]
                tally.seen += 1
                if not self.measuring:
                    continue
                seq = int(event["seq"])
                if seq <= tally.last_seq:
                    tally.duplicates += seq == tally.last_seq
                    tally.out_of_order += seq < tally.last_seq
                tally.last_seq = max(tally.last_seq, seq)
                tally.received += 1
                tally.last_at = now
                with contextlib.suppress(ValueError):
                    tally.latencies.append(now - float(body[:24].split(" ", 1)[0]))
        except websockets.ConnectionClosed as exc:
            tally.closed = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "")
        except Exception as exc:  # a malformed message: say so rather than look like a loss
            tally.closed = (0, f"client error: {exc!r}")

    async def measure(self, on: bool) -> None:
        if on:
            for tally in self.tallies:
                tally.received = tally.duplicates = tally.out_of_order = 0
                tally.latencies.clear()
                tally.last_at = 0.0
        self.measuring = on

    async def wait_warm(self, timeout: float) -> int:
        """Wait until every reading connection saw a warm-up event (so its subscriptions are live)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(t.seen for t in self.tallies):
                break
            await asyncio.sleep(0.05)
        return sum(1 for t in self.tallies if t.seen)

    async def wait(self, expected: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        readers = self.tallies
        while time.monotonic() < deadline and any(t.received < expected for t in readers):
            await asyncio.sleep(0.02)
        return {
            "received": sum(t.received for t in readers),
            "duplicates": sum(t.duplicates for t in readers),
            "out_of_order": sum(t.out_of_order for t in readers),
            "last_at": max((t.last_at for t in readers), default=0.0),
            "latencies": [x for t in readers for x in t.latencies],
            "closed": [t.closed for t in readers if t.closed],
        }

    async def read_slow(self, timeout: float) -> dict[str, Any]:
        """The slow connections start reading again: what they got, and how they were closed."""
        out = []
        for conn in self.slow_conns:
            count, close = 0, None
            try:
                while True:
                    raw = await asyncio.wait_for(conn.recv(), timeout)
                    count += orjson.loads(raw).get("type") == "next"
            except websockets.ConnectionClosed as exc:
                close = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "no close frame")
            except TimeoutError:
                close = None
            out.append({"received": count, "close": close})
        return {"slow": out}


def _worker_main(pipe: Connection) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(Worker(pipe).run())


class Load:
    """A set of worker processes, each holding a share of the connections."""

    def __init__(self, workers: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs = []
        for _ in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)

    def call(self, command: str, per_worker: list[dict[str, Any]] | None = None, **args: Any) -> list[Any]:
        for i, pipe in enumerate(self.pipes):
            pipe.send((command, per_worker[i] if per_worker else args))
        results = []
        for pipe in self.pipes:
            _, result = pipe.recv()
            results.append(result)
        return results

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("stop")
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


# -- runs ----------------------------------------------------------------------------------


async def warm_up(server: Server, load: Load, room: str, http: httpx.AsyncClient) -> None:
    """Publish until every subscriber has seen an event: then every subscription is live."""
    deadline = time.monotonic() + 60
    while True:
        await publish(http, server, room, "warm")
        counts = load.call("wait_warm", timeout=1.0)
        if all(c == n for c, n in zip(counts, load_sizes(load), strict=True)) or time.monotonic() > deadline:
            return


def load_sizes(load: Load) -> list[int]:
    return getattr(load, "sizes", [])


async def fanout_once(
    name: str, workdir: Path, subscribers: int, events: int, rate: float | None, workers: int, body_size: int = 0
) -> dict[str, Any]:
    with start_server(name, workdir) as server:
        rss_before = server.rss_kb()
        load = Load(workers)
        try:
            rooms = [["room"] for _ in range(subscribers)]
            load.sizes = load.call(
                "connect",
                per_worker=[  # type: ignore[attr-defined]
                    {"url": server.ws, "query": SUBSCRIBE[name], "rooms": part} for part in split(rooms, workers)
                ],
            )
            # generous: an overloaded server (the naive one) must still finish, however late
            async with httpx.AsyncClient(base_url=server.http, timeout=180) as http:
                await warm_up(server, load, "room", http)
                await asyncio.sleep(0.5)
                rss_after = server.rss_kb()
                load.call("measure", on=True)
                cpu0, t0 = server.cpu_seconds(), time.time()
                pad = "x" * body_size
                if rate:  # open loop: each event leaves on time, whether or not the last one is done
                    sent = []
                    for i in range(events):
                        await asyncio.sleep(max(0.0, t0 + i / rate - time.time()))
                        sent.append(asyncio.create_task(publish(http, server, "room", f"{time.time():.6f} {pad}")))
                    await asyncio.gather(*sent)
                else:
                    for _ in range(events):
                        await publish(http, server, "room", f"{time.time():.6f} {pad}")
                results = await asyncio.to_thread(load.call, "wait", expected=events, timeout=180)
                cpu1 = server.cpu_seconds()
                load.call("measure", on=False)
        finally:
            load.close()
        errors = server.errors()
    closed = [c for r in results for c in r["closed"]]
    if closed:
        errors.append(f"{len(closed)} subscriber connections were closed: {closed[:3]}")
    received = sum(r["received"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    last_at = max(r["last_at"] for r in results)
    return {
        "server": name,
        "deliveries": received,
        "deliveries_per_s": received / max(last_at - t0, 1e-9),
        "events_per_s": events / max(last_at - t0, 1e-9),
        "p50_ms": pct(latencies, 50) * 1000,
        "p99_ms": pct(latencies, 99) * 1000,
        "cpu_us_per_delivery": (cpu1 - cpu0) / max(received, 1) * 1e6,
        "kb_per_conn": (rss_after - rss_before) / subscribers,
        "losses": subscribers * events - received,
        "dups": sum(r["duplicates"] + r["out_of_order"] for r in results),
        "errors": errors[:5],
    }


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    raw = next((r for r in rows if r["server"] == "raw"), None)
    print(f"\n{title}")
    head = (
        f"{'server':<9}{'events/s':>9}{'deliv/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/d':>10}{'KB/conn':>9}"
        f"{'losses':>8}{'dups':>6}{'cpu/raw':>9}{'rate/raw':>9}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        cpu_ratio = r["cpu_us_per_delivery"] / raw["cpu_us_per_delivery"] if raw else float("nan")
        rate_ratio = r["deliveries_per_s"] / raw["deliveries_per_s"] if raw else float("nan")
        print(
            f"{r['server']:<9}{r['events_per_s']:>9.1f}{r['deliveries_per_s']:>10.0f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['cpu_us_per_delivery']:>10.1f}{r['kb_per_conn']:>9.1f}{r['losses']:>8}{r['dups']:>6}"
            f"{cpu_ratio:>9.2f}{rate_ratio:>9.2f}"
        )
        for line in r["errors"]:
            print(f"   ! {r['server']} logged: {line}")


async def run_fanout(
    args: argparse.Namespace, workdir: Path, rate: float | None, subscribers: int, events: int, title: str
) -> None:
    per_server: dict[str, list[dict[str, Any]]] = {name: [] for name in args.only}
    for _ in range(args.repeat):
        for name in args.only:  # interleaved, so drift in the machine's load hits all alike
            per_server[name].append(await fanout_once(name, workdir, subscribers, events, rate, args.workers))
    rows = []
    for name, runs in per_server.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if isinstance(runs[0][k], (int, float))}
        rows.append({**med, "server": name, "errors": [e for r in runs for e in r["errors"]]})
    print_table(rows, f"{title} (median of {args.repeat})")


async def cpu_per_event(server: Server, http: httpx.AsyncClient, room: str, events: int) -> float:
    cpu0 = server.cpu_seconds()
    for i in range(events):
        await publish(http, server, room, f"{time.time():.6f} e{i}")
    await asyncio.sleep(0.3)  # let the last fan-out finish
    return (server.cpu_seconds() - cpu0 - 0.0) / events * 1e6


async def run_rooms(args: argparse.Namespace, workdir: Path) -> None:
    conns, per_conn, rooms_n = (20, 50, 100) if args.quick else (100, 100, 1000)
    events = 50 if args.quick else 200
    layouts = {
        "all rooms": [[f"r{(c * per_conn + i) % rooms_n}" for i in range(per_conn)] for c in range(conns)],
    }
    per_room = conns * per_conn // rooms_n
    layouts["one room"] = [["r0"] for _ in range(per_room)]
    figures: dict[str, list[float]] = {k: [] for k in layouts}
    for _ in range(args.repeat):
        for label, layout in layouts.items():
            with start_server("tidings", workdir, "--max-subscriptions", str(max(per_conn, 100))) as server:
                load = Load(args.workers)
                try:
                    load.call(
                        "connect",
                        per_worker=[
                            {"url": server.ws, "query": SUBSCRIBE["tidings"], "rooms": p}
                            for p in split(layout, args.workers)
                        ],
                    )
                    async with httpx.AsyncClient(base_url=server.http, timeout=30) as http:
                        # every room gets an event, so all subscriptions are known to be live
                        for r in range(rooms_n if label == "all rooms" else 1):
                            await publish(http, server, f"r{r}", "warm")
                        await asyncio.sleep(1.0)
                        load.call("measure", on=True)
                        figures[label].append(await cpu_per_event(server, http, "r0", events))
                        results = load.call("wait", expected=events, timeout=30)
                        load.call("measure", on=False)
                finally:
                    load.close()
            got = sum(r["received"] for r in results)
            if got != per_room * events:
                print(f"   ! {label}: {got} deliveries, expected {per_room * events}")
    a, b = statistics.median(figures["all rooms"]), statistics.median(figures["one room"])
    print(
        f"\nMany rooms: server CPU per event published to one room of {per_room} subscribers (median of {args.repeat})"
    )
    print(f"  {conns * per_conn} subscriptions over {rooms_n} rooms: {a:8.0f} us/event")
    print(f"  only that room's {per_room} subscriptions:  {b:8.0f} us/event")
    print(f"  ratio: {a / b:.2f}  (target <= 1.2)")


async def run_slow(args: argparse.Namespace, workdir: Path) -> None:
    readers, events, body = (20, 150, 32_000) if args.quick else (50, 200, 32_000)
    with start_server("tidings", workdir) as server:
        load = Load(1)
        slow = Load(1)
        try:
            load.sizes = load.call(
                "connect",
                url=server.ws,
                query=SUBSCRIBE["tidings"],  # type: ignore[attr-defined]
                rooms=[["room"] for _ in range(readers)],
            )
            slow.call("connect", url=server.ws, query=SUBSCRIBE["tidings"], rooms=[["room"]], slow=True)
            async with httpx.AsyncClient(base_url=server.http, timeout=30) as http:
                await warm_up(server, load, "room", http)
                await asyncio.sleep(0.5)
                rss0 = server.rss_kb()
                load.call("measure", on=True)
                pad = os.urandom(body * 3 // 4).hex()[:body]  # incompressible
                for _ in range(events):
                    await publish(http, server, "room", f"{time.time():.6f} {pad}")
                results = load.call("wait", expected=events, timeout=60)
                rss1 = server.rss_kb()
                slow_result = slow.call("read_slow", timeout=15)[0]["slow"][0]
        finally:
            load.close()
            slow.close()
        errors = server.errors()
    got = sum(r["received"] for r in results)
    lat = [x for r in results for x in r["latencies"]]
    print(f"\nSlow consumer: {readers} readers + 1 client that stops reading; {events} events of {body // 1000} KB")
    print(
        f"  readers: {got}/{readers * events} delivered, p50 {pct(lat, 50) * 1000:.1f} ms, "
        f"p99 {pct(lat, 99) * 1000:.1f} ms, dups {sum(r['duplicates'] + r['out_of_order'] for r in results)}"
    )
    print(
        f"  slow client: {slow_result['received']} events read after it resumed reading, then close "
        f"{slow_result['close']}"
    )
    print(f"  server RSS: {rss0 / 1024:.1f} MiB before, {rss1 / 1024:.1f} MiB after")
    for line in errors[:5]:
        print(f"   ! tidings logged: {line}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="fanout,latency,rooms,slow")
    parser.add_argument("--only", default="tidings,naive,raw", help="servers for fanout and latency")
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--events", type=int, default=30)
    parser.add_argument("--latency-subscribers", type=int, default=1000)
    parser.add_argument("--rate", default="50,20", help="events/s of the latency runs (comma list)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of the latency run")
    parser.add_argument("--workers", type=int, default=2, help="load client processes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; medians are printed")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat: a smoke run")
    args = parser.parse_args()
    args.only = [s for s in args.only.split(",") if s]
    runs = [r for r in args.runs.split(",") if r]
    if args.quick:
        args.subscribers, args.events, args.latency_subscribers, args.seconds, args.repeat = 200, 10, 100, 1.0, 1
    print(
        f"fan-out benchmark: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, load in {args.workers} "
        f"worker processes, all on 127.0.0.1"
    )
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as tmp:
        workdir = Path(tmp)
        started = time.monotonic()
        if "fanout" in runs:
            await run_fanout(
                args,
                workdir,
                None,
                args.subscribers,
                args.events,
                f"Fan-out: {args.subscribers} subscribers, one room, {args.events} events back to back",
            )
        for rate in [float(r) for r in args.rate.split(",")] if "latency" in runs else []:
            events = int(rate * args.seconds)
            await run_fanout(
                args,
                workdir,
                rate,
                args.latency_subscribers,
                events,
                f"Latency: {args.latency_subscribers} subscribers, {rate:.0f} ev/s offered for {args.seconds:.0f} s",
            )
        if "rooms" in runs:
            await run_rooms(args, workdir)
        if "slow" in runs:
            await run_slow(args, workdir)
        print(f"\n(total {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    asyncio.run(main())
