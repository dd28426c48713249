"""What the benchmark scripts share: servers in subprocesses, /proc readings, load workers.

Servers run one per process on a free 127.0.0.1 port; their CPU time and memory
are read from /proc (no psutil). Subscribers live in load worker processes, each
an asyncio loop with the ``websockets`` client, driven over a pipe by the script.
Everything is bounded in time and stops what it started, on errors and Ctrl-C too.
Size: ~720 lines, over the house's ~500: it is the benchmarks' one toolbox (servers, load
workers, publishers, figures), kept whole so each script stays a page of what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
SUBPROTOCOL = "graphql-transport-ws"
KINDS = ("tidings", "naive", "raw")

# The documents each server is driven with. The naive server's API takes plain arguments
# (as Strawberry's docs would write it); its events have the same shape as tidings'.
SELECTION = "{ operation seq record { id room author body } }"
SUBSCRIBE = {
    "tidings": "subscription($room: String!) { messageEvents(where: {room: {eq: $room}}) " + SELECTION + " }",
    "naive": "subscription($room: String!) { messageEvents(room: $room) " + SELECTION + " }",
    "raw": "subscription($room: String!) { messageEvents(where: {room: {eq: $room}}) " + SELECTION + " }",
}
CREATE_TIDINGS = "mutation($i: CreateMessageInput!) { createMessage(input: $i) { id } }"
CREATE_NAIVE = (
    "mutation($room: String!, $author: String!, $body: String!) "
    "{ createMessage(room: $room, author: $author, body: $body) { id } }"
)
EXPECTED_LOG_LINES = ("No JWT secret or key configured",)  # tidings serve without auth says so, rightly
WARM = "warm"  # bodies starting with this are warm-up events, never measured


def stop_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every ``finally`` stops what it started."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def cli(main: Callable[[], Coroutine[Any, Any, None]], what: str = "servers and load workers") -> None:
    """Run a benchmark's ``main`` from the command line; Ctrl-C and SIGTERM stop everything it started."""
    stop_on_sigterm()
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        print(f"\ninterrupted; {what} stopped", file=sys.stderr)
        raise SystemExit(130) from None


def apply_quick(parser: argparse.ArgumentParser, args: argparse.Namespace, quick: dict[str, Any]) -> None:
    """With --quick, small numbers for the options left at their defaults."""
    if args.quick:
        for name, value in quick.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    kind: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    def cpu_seconds(self) -> float:
        return cpu_seconds_of(self.pid)

    def _status_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def rss_kb(self) -> int:
        return self._status_kb("VmRSS")

    def log_problems(self) -> list[str]:
        """Lines of the server's output that look like trouble (it runs at log level warning)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        marks = ("ERROR", "CRITICAL", "Traceback", "WARNING", "Exception")
        return [
            line
            for line in text.splitlines()
            if any(m in line for m in marks) and not any(b in line for b in EXPECTED_LOG_LINES)
        ]


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15: utime, stime


def server_command(kind: str, port: int, workdir: Path, extra: Sequence[str]) -> list[str]:
    common = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if kind == "tidings":
        script = Path(sys.executable).with_name("tidings")  # the venv's console script
        launcher = [str(script)] if script.exists() else [sys.executable, "-m", "tidings.cli"]
        db = f"sqlite:///{workdir / f'bench-{port}.db'}"
        return [*launcher, "serve", *common, "--db", db, "--no-graphiql", *extra]
    module = {"naive": "naive_strawberry:app", "raw": "raw_ws:app"}[kind]
    # The uvicorn settings `tidings serve` uses (its keepalive, no permessage-deflate); transport "auto" for all.
    ws = ["--ws-per-message-deflate", "false", "--ws-ping-interval", "15", "--ws-ping-timeout", "15"]
    return [sys.executable, "-m", "uvicorn", module, "--app-dir", str(BENCH), *common, *ws, *extra]


@contextlib.contextmanager
def start_server(
    kind: str, workdir: Path, *extra: str, start_timeout: float = 30.0, exits: bool = False
) -> Iterator[Server]:
    """Start a server in its own process; stop it (terminate, then kill) however the block ends.

    ``exits``: the block ends the process itself (a SIGTERM), so its exit is not reported as a failure.
    """
    port = free_port()
    log = workdir / f"{kind}-{port}.log"
    cmd = server_command(kind, port, workdir, extra)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    server = Server(kind, proc, port, log)
    listening = False
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not listen within {start_timeout:.0f} s")
            time.sleep(0.05)
        listening = True
        yield server
    finally:
        if listening and not exits and proc.poll() is not None:  # it should still be running: say how it ended
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            print(f"  ! {kind} server exited early with code {proc.returncode}; its log ends:\n{tail}", file=sys.stderr)
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A throwaway redis-server on 127.0.0.1:``port`` (no persistence), once it accepts connections."""
    args = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            proc.wait(5)
            raise RuntimeError("redis-server did not start")
        time.sleep(0.02)


@contextlib.contextmanager
def profiling(command: str | None, pid: int) -> Iterator[None]:
    """Run ``command`` (``{pid}`` filled in, e.g. a py-spy record) during the block; SIGINT it afterwards."""
    if not command:
        yield
        return
    proc = subprocess.Popen(shlex.split(command.format(pid=pid)), stdin=subprocess.DEVNULL)
    try:
        time.sleep(0.5)  # let it attach
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class Publisher:
    """Publishes messages through a server's mutation, over one keep-alive HTTP connection."""

    def __init__(self, server: Server, timeout: float = 120.0) -> None:
        self.server = server
        self.client = httpx.AsyncClient(base_url=server.base_url, timeout=timeout)

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    def request(self, room: str, body: str) -> bytes:
        if self.server.kind == "naive":
            variables: dict[str, Any] = {"room": room, "author": "bench", "body": body}
            return orjson.dumps({"query": CREATE_NAIVE, "variables": variables})
        values = {"room": room, "author": "bench", "body": body}
        return orjson.dumps({"query": CREATE_TIDINGS, "variables": {"i": values}})

    async def publish(self, room: str, body: str) -> None:
        response = await self.client.post(
            "/graphql", content=self.request(room, body), headers={"content-type": "application/json"}
        )
        if response.status_code != 200 or b'"errors"' in response.content:
            raise RuntimeError(f"{self.server.kind}: publish failed: {response.status_code} {response.text[:500]}")

    async def publish_timed(self, room: str, pad: str = "") -> None:
        """A measured event: its body starts with the publish time (time.time()), for latency."""
        await self.publish(room, f"{time.time():.6f}{pad}")


def stamp_pad(size: int) -> str:
    """Filler for bodies of about ``size`` characters (after the time stamp)."""
    return " " + "x" * (size - 18) if size > 18 else ""


# -- load worker (runs in its own process) -------------------------------------------------------


@dataclass(slots=True)
class Sub:
    """One subscription of a load connection."""

    room: str
    seen: int = 0  # events of any kind, warm-up included
    received: int = 0  # measured events
    last_seq: int = 0
    first_seq: int = 0  # of the measured events
    duplicates: int = 0
    out_of_order: int = 0


@dataclass
class Conn:
    ws: ClientConnection
    subs: dict[str, Sub]
    local_port: int
    bytes: int = 0
    closed: tuple[int, str] | None = None
    reader: asyncio.Task[None] | None = None


@dataclass
class Stats:
    """What the readers of one worker saw while measuring."""

    latencies: list[float] = field(default_factory=list)
    first: dict[int, float] = field(default_factory=dict)  # seq -> latency of its earliest delivery here
    last_at: float = 0.0
    frames: int = 0
    bytes: int = 0
    misrouted: int = 0  # an event of a room the subscription is not in
    errors: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.latencies = []
        self.first = {}
        self.last_at = 0.0
        self.frames = self.bytes = self.misrouted = 0
        self.errors = []


class Worker:
    """Holds some subscriber connections; does what the parent process asks over the pipe."""

    COMMANDS = frozenset({"connect", "live", "measure", "wait", "drain_slow"})

    def __init__(self, pipe: Connection) -> None:
        self.pipe = pipe
        self.conns: list[Conn] = []
        self.slow: list[Conn] = []
        self.measuring = False
        self.stats = Stats()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    command, args = await loop.run_in_executor(None, self.pipe.recv)
                except EOFError:  # the parent is gone
                    return
                if command not in self.COMMANDS:
                    return  # "stop"
                try:
                    result: Any = ("ok", await getattr(self, command)(**args))
                except Exception as exc:
                    result = ("error", f"{type(exc).__name__}: {exc}")
                self.pipe.send(result)
        finally:
            await self.close_all()
            with contextlib.suppress(OSError):
                self.pipe.send(("ok", "stopped"))

    async def close_all(self) -> None:
        for conn in self.conns + self.slow:
            if conn.reader is not None:
                conn.reader.cancel()
        await asyncio.gather(
            *(asyncio.wait_for(c.ws.close(), 2) for c in self.conns + self.slow), return_exceptions=True
        )

    # -- commands ------------------------------------------------------------

    async def connect(
        self, url: str, query: str, layout: list[list[str]], slow: bool = False, variables: dict[str, Any] | None = None
    ) -> list[int]:
        """One connection per entry of ``layout``; one subscription per room in it (op ids "1", "2", ...).

        ``variables`` are sent with each subscription besides ``room`` (e.g. ``after`` to resume).

        A slow connection reads its first event (so it is known to be subscribed) and then
        nothing: with a small receive buffer and ``max_queue=1`` it soon stops reading its socket.
        Returns the local ports of the connections.
        """
        limit = asyncio.Semaphore(50)

        async def open_one(rooms: list[str]) -> Conn:
            async with limit:
                extra: dict[str, Any] = {}
                if slow:
                    sock = socket.socket()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
                    sock.setblocking(False)
                    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
                    extra = {"sock": sock, "max_queue": 1}
                ws = await connect(
                    url,
                    subprotocols=[SUBPROTOCOL],  # type: ignore[list-item]
                    compression=None,
                    max_size=2**24,
                    ping_interval=None,
                    open_timeout=60,
                    close_timeout=2,
                    **extra,
                )
                await ws.send('{"type":"connection_init","payload":{}}')
                ack = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
                if ack.get("type") != "connection_ack":
                    raise RuntimeError(f"expected connection_ack, got {ack}")
                subs: dict[str, Sub] = {}
                for i, room in enumerate(rooms, 1):
                    op_id = str(i)
                    subs[op_id] = Sub(room)
                    message = {
                        "id": op_id,
                        "type": "subscribe",
                        "payload": {"query": query, "variables": {"room": room, **(variables or {})}},
                    }
                    await ws.send(orjson.dumps(message).decode())  # text frames, as the protocol requires
                return Conn(ws, subs, ws.local_address[1])

        conns = await asyncio.gather(*(open_one(rooms) for rooms in layout))
        for conn in conns:
            if slow:
                self.slow.append(conn)
            else:
                self.conns.append(conn)
                conn.reader = asyncio.create_task(self.read(conn))
        if slow:
            for conn in conns:
                await self.read_first_event(conn, timeout=60)
        return [c.local_port for c in conns]

    async def read_first_event(self, conn: Conn, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            message = orjson.loads(await asyncio.wait_for(conn.ws.recv(), max(0.1, deadline - time.monotonic())))
            if message.get("type") == "next":
                conn.subs[message["id"]].seen += 1
                return
            if message.get("type") == "ping":
                await conn.ws.send('{"type":"pong"}')

    async def read(self, conn: Conn) -> None:
        loads, stats, subs = orjson.loads, self.stats, conn.subs
        try:
            async for raw in conn.ws:
                now = time.time()
                message = loads(raw)
                kind = message.get("type")
                if kind != "next":
                    if kind == "ping":
                        await conn.ws.send('{"type":"pong"}')
                    elif kind in ("error", "complete"):
                        stats.errors.append(f"{kind}: {str(message)[:300]}")
                    continue
                sub = subs[message["id"]]
                sub.seen += 1
                event = message["payload"]["data"]["messageEvents"]
                record = event["record"]
                body = record["body"]
                if not self.measuring or body.startswith(WARM):
                    continue
                if record["room"] != sub.room:
                    stats.misrouted += 1
                seq = int(event["seq"])
                if seq <= sub.last_seq:
                    if seq == sub.last_seq:
                        sub.duplicates += 1
                    else:
                        sub.out_of_order += 1
                else:
                    sub.last_seq = seq
                if not sub.received:
                    sub.first_seq = seq
                sub.received += 1
                stats.frames += 1
                stats.bytes += len(raw)
                stats.last_at = now
                latency = now - float(body[:17])
                stats.latencies.append(latency)
                if seq not in stats.first:
                    stats.first[seq] = latency
        except websockets.ConnectionClosed as exc:
            conn.closed = close_of(exc)
        except Exception as exc:  # a malformed message: report it rather than look like a loss
            conn.closed = (0, f"client error: {exc!r}")

    async def live(self, timeout: float) -> int:
        """Wait until every subscription saw an event (so it is live); the number that did."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = sum(1 for c in self.conns for s in c.subs.values() if not s.seen)
            if not waiting or time.monotonic() > deadline:
                return sum(1 for c in self.conns for s in c.subs.values() if s.seen)
            await asyncio.sleep(0.05)

    async def measure(self) -> None:
        """Start a measurement: counters to zero."""
        self.stats.reset()
        for conn in self.conns:
            for sub in conn.subs.values():
                sub.received = sub.duplicates = sub.out_of_order = sub.first_seq = 0
        self.measuring = True

    async def wait(self, room: str, expected: int, timeout: float) -> dict[str, Any]:
        """Wait until each subscription to ``room`` received ``expected`` events (or the timeout); the tallies."""
        deadline = time.monotonic() + timeout
        subs = [s for c in self.conns for s in c.subs.values() if s.room == room]
        while time.monotonic() < deadline and any(s.received < expected for s in subs):
            if all(c.closed for c in self.conns):
                break
            await asyncio.sleep(0.01)
        self.measuring = False
        stats = self.stats
        return {
            "subscriptions": len(subs),
            "received": sum(s.received for s in subs),
            "duplicates": sum(s.duplicates for s in subs),
            "out_of_order": sum(s.out_of_order for s in subs),
            "short": sum(1 for s in subs if s.received < expected),
            "first_seq": min((s.first_seq for s in subs if s.received), default=0),
            "misrouted": stats.misrouted,
            "last_at": stats.last_at,
            "frames": stats.frames,
            "bytes": stats.bytes,
            "latencies": stats.latencies,
            "first": stats.first,
            "closed": [c.closed for c in self.conns if c.closed],
            "errors": stats.errors[:5],
            "error_count": len(stats.errors),
        }

    async def drain_slow(self, timeout: float) -> list[dict[str, Any]]:
        """The slow connections read again: what was still buffered for them, and how they were closed."""
        out = []
        for conn in self.slow:
            warm, measured, last_seq, last_stamp = 0, 0, 0, 0.0
            close: tuple[int, str] | None = None
            started, close_at = time.time(), 0.0
            try:
                while True:
                    message = orjson.loads(await asyncio.wait_for(conn.ws.recv(), timeout))
                    if message.get("type") == "next":
                        event = message["payload"]["data"]["messageEvents"]
                        body = event["record"]["body"]
                        if body.startswith(WARM):
                            warm += 1
                        else:
                            measured += 1
                            last_seq, last_stamp = int(event["seq"]), float(body[:17])
                    elif message.get("type") == "ping":
                        await conn.ws.send('{"type":"pong"}')
            except websockets.ConnectionClosed as exc:
                close = close_of(exc)
                close_at = time.time()
            except TimeoutError:
                close = None  # still open: nothing came for ``timeout`` seconds
            out.append(
                {
                    "warm": warm,
                    "measured": measured,
                    "last_seq": last_seq,
                    "last_stamp": last_stamp,
                    "close": close,
                    "close_at": close_at,
                    "started": started,
                }
            )
        return out


def close_of(exc: websockets.ConnectionClosed) -> tuple[int, str]:
    """The close code and reason the client got from the server (1006 when no close frame came)."""
    if exc.rcvd is not None:
        return exc.rcvd.code, exc.rcvd.reason
    why = f"; the client sent {exc.sent.code} {exc.sent.reason!r}" if exc.sent is not None else ""
    cause = f"; {exc.__cause__!r}" if exc.__cause__ is not None else ""
    return 1006, f"no close frame{why}{cause}"


def _worker_main(pipe: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us; Ctrl-C reaches it too
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(Worker(pipe).serve())


class Load:
    """Load worker processes, each holding a share of the subscriber connections."""

    def __init__(self, workers: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[BaseProcess] = []
        for _ in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child,), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    def __len__(self) -> int:
        return len(self.pipes)

    def cpu_seconds(self) -> list[float]:
        """CPU time of each worker process so far."""
        return [cpu_seconds_of(p.pid) for p in self.procs if p.pid is not None]

    def _call(self, command: str, per_worker: Sequence[dict[str, Any]], timeout: float) -> list[Any]:
        for pipe, args in zip(self.pipes, per_worker, strict=True):
            pipe.send((command, args))
        deadline = time.monotonic() + timeout
        results = []
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"load worker did not answer {command!r} within {timeout:.0f} s")
            status, result = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"load worker failed {command!r}: {result}")
            results.append(result)
        return results

    async def call(
        self, command: str, per_worker: Sequence[dict[str, Any]] | None = None, timeout: float = 120, **args: Any
    ) -> list[Any]:
        """Run ``command`` in every worker (the same ``args``, or one dict each); their answers."""
        return await asyncio.to_thread(self._call, command, per_worker or [args] * len(self.pipes), timeout)

    async def connect(
        self, url: str, query: str, layout: list[list[str]], slow: bool = False, variables: dict[str, Any] | None = None
    ) -> list[int]:
        parts = split(layout, len(self))
        args = [{"url": url, "query": query, "layout": p, "slow": slow, "variables": variables} for p in parts]
        return [port for ports in await self.call("connect", args, timeout=300) for port in ports]

    async def wait(self, room: str, expected: int, timeout: float) -> dict[str, Any]:
        args = {"room": room, "expected": expected, "timeout": timeout}
        return merge(await self.call("wait", [args] * len(self), timeout=timeout + 30))

    async def live(self, timeout: float) -> int:
        return sum(await self.call("live", [{"timeout": timeout}] * len(self), timeout=timeout + 30))

    async def measure(self) -> None:
        await self.call("measure")

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop", {}))
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        for pipe in self.pipes:
            pipe.close()


@contextlib.asynccontextmanager
async def load_workers(workers: int) -> AsyncIterator[Load]:
    load = Load(workers)
    try:
        yield load
    finally:
        load.close()


def split(items: list[Any], parts: int) -> list[list[Any]]:
    return [items[i::parts] for i in range(parts)]


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in results:
        for key, value in r.items():
            if key == "first":  # per event, the earliest delivery over all workers
                merged = out.setdefault(key, {})
                for seq, latency in value.items():
                    merged[seq] = min(latency, merged.get(seq, latency))
            elif key == "last_at":
                out[key] = max(out.get(key, 0.0), value)
            elif key == "first_seq":
                out[key] = min((x for x in (out.get(key, 0), value) if x), default=0)  # 0 = none seen
            elif isinstance(value, list):
                out.setdefault(key, []).extend(value)
            else:
                out[key] = out.get(key, 0) + value
    return out


# -- TCP sockets, from /proc/net/tcp ------------------------------------------------------------

TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def tcp_socket(local_port: int, remote_port: int) -> tuple[str, int] | None:
    """State and send-queue bytes of the 127.0.0.1 socket local_port -> remote_port, or None if gone."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
        if int(local.rsplit(":", 1)[1], 16) == local_port and int(remote.rsplit(":", 1)[1], 16) == remote_port:
            return TCP_STATES.get(state, state), int(queues.split(":")[0], 16)
    return None
