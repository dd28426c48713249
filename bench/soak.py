"""Soak: a long run of churning clients, writes and resuming subscribers, with the server's memory
followed by RSS and tracemalloc snapshots, to tell a leak from warm-up.

    .venv/bin/python bench/soak.py                  # 30 minutes, a snapshot every 5
    .venv/bin/python bench/soak.py --minutes 6 --every 2
    .venv/bin/python bench/soak.py --quick          # 2 minutes, a snapshot every minute

One `tidings serve` (SQLite, memory broker) started through `soak_server.py`, which runs it with
tracemalloc on and writes a snapshot when sent SIGUSR1. The load, all on 127.0.0.1:
  - a writer creating tasks at --rate a second;
  - --churn WebSocket connections a second (graphql-transport-ws), each subscribing to
    taskEvents, reading one event and closing, and as many SSE streams;
  - --resumers clients that each hold a cursor, reconnect every 5 s with `after:` it and check
    that the seqs they get continue exactly (missing, duplicated or out of order are counted).
Printed at every snapshot: elapsed minutes, RSS, writes, connections, and the resumers' errors;
at the end, the RSS slope per phase and the ten biggest tracemalloc growths between the first
snapshot after warm-up and the last, by file and line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable
from pathlib import Path

import httpx
import websockets
from harness import BENCH, apply_quick, cli, free_port

CREATE = "mutation($t: String!) { createTask(input: {title: $t}) { id } }"
EVENTS = "subscription($after: String) { taskEvents(after: $after) { seq cursor record { id } } }"


class Counts:
    def __init__(self) -> None:
        self.writes = 0
        self.connections = 0
        self.resumed_events = 0
        self.missing = 0
        self.duplicated = 0
        self.failures = 0
        self.reasons: dict[str, int] = {}

    def fail(self, reason: str) -> None:
        self.failures += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


async def writer(url: str, rate: float, stop: asyncio.Event, counts: Counts) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            try:
                response = await client.post("/graphql", json={"query": CREATE, "variables": {"t": "soak"}})
                body = response.json()
                if body.get("data"):
                    counts.writes += 1
                else:
                    counts.fail("write: " + str(body["errors"][0].get("extensions", {}).get("code")))
            except httpx.HTTPError as exc:
                counts.fail(f"write: {type(exc).__name__}")
            await asyncio.sleep(1 / rate)


async def ws_once(ws_url: str, counts: Counts) -> None:
    async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"], open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "connection_init"}))
        await asyncio.wait_for(ws.recv(), 10)
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": EVENTS}}))
        await asyncio.wait_for(ws.recv(), 10)  # the next write's event
    counts.connections += 1


async def sse_once(url: str, counts: Counts) -> None:
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        client.stream("GET", "/graphql", params={"query": EVENTS}, headers={"accept": "text/event-stream"}) as r,
    ):
        async for line in r.aiter_lines():
            if line.startswith("data:") and "seq" in line:
                break
    counts.connections += 1


async def counted(job: Awaitable[None], what: str, counts: Counts) -> None:
    try:
        await job
    except (OSError, httpx.HTTPError, websockets.WebSocketException, TimeoutError) as exc:
        counts.fail(f"{what}: {type(exc).__name__}")


async def churn(url: str, ws_url: str, per_second: float, stop: asyncio.Event, counts: Counts) -> None:
    tasks: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        for job in (
            counted(ws_once(ws_url, counts), "churn ws", counts),
            counted(sse_once(url, counts), "churn sse", counts),
        ):
            task = asyncio.create_task(job)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.sleep(1 / per_second)
    for task in list(tasks):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)


async def resumer(ws_url: str, stop: asyncio.Event, counts: Counts) -> None:
    cursor: str | None = None
    last_seq: int | None = None
    while not stop.is_set():
        try:
            async with websockets.connect(ws_url, subprotocols=["graphql-transport-ws"], open_timeout=10) as ws:
                await ws.send(json.dumps({"type": "connection_init"}))
                await asyncio.wait_for(ws.recv(), 10)
                payload = {"query": EVENTS, "variables": {"after": cursor}}
                await ws.send(json.dumps({"id": "r", "type": "subscribe", "payload": payload}))
                until = time.monotonic() + 5
                while time.monotonic() < until and not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        message = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, until - time.monotonic())))
                        if message.get("type") == "ping":
                            await ws.send(json.dumps({"type": "pong"}))
                            continue
                        if message.get("type") != "next":
                            counts.fail(f"resume: {message.get('type')} {message.get('payload')}"[:120])
                            break
                        event = message["payload"]["data"]["taskEvents"]
                        seq = int(event["seq"])
                        if last_seq is not None and seq <= last_seq:
                            counts.duplicated += 1
                        elif last_seq is not None and seq > last_seq + 1:
                            counts.missing += seq - last_seq - 1
                        last_seq, cursor = max(seq, last_seq or 0), event["cursor"]
                        counts.resumed_events += 1
        except (OSError, websockets.WebSocketException, TimeoutError) as exc:
            counts.fail(f"resume: {type(exc).__name__}")
            await asyncio.sleep(0.5)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def snapshot(pid: int, folder: Path, index: int) -> tracemalloc.Snapshot:
    path = folder / f"snapshot-{index}.pickle"
    os.kill(pid, signal.SIGUSR1)
    for _ in range(600):
        if path.exists() and (folder / f"snapshot-{index}.done").exists():
            return tracemalloc.Snapshot.load(str(path))
        await asyncio.sleep(0.1)
    raise RuntimeError("the server wrote no snapshot within 60 s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=5.0, help="minutes between snapshots")
    parser.add_argument("--warmup", type=float, default=2.0, help="minutes before the first snapshot compared")
    parser.add_argument("--rate", type=float, default=20.0, help="writes a second")
    parser.add_argument("--churn", type=float, default=4.0, help="WebSocket (and as many SSE) connections a second")
    parser.add_argument("--resumers", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    apply_quick(parser, args, {"minutes": 2.0, "every": 1.0, "warmup": 0.5})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        port = free_port()
        command = [
            sys.executable, str(BENCH / "soak_server.py"), str(folder), "serve", "--port", str(port),
            "--db", f"sqlite:///{folder / 'soak.db'}", "--log-level", "warning", "--no-graphiql",
            "--rate-subscribe", "0", "--rate-user-subscribe", "0", "--rate-mutations", "0",
        ]  # fmt: skip
        log = (folder / "server.log").open("wb")
        proc = await asyncio.create_subprocess_exec(*command, stdout=log, stderr=log)
        url, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/graphql"
        try:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    async with httpx.AsyncClient(timeout=1) as client:
                        if (await client.get(url + "/healthz")).status_code == 200:
                            break
                await asyncio.sleep(0.1)
            counts, stop = Counts(), asyncio.Event()
            load = [
                asyncio.create_task(writer(url, args.rate, stop, counts)),
                asyncio.create_task(churn(url, ws_url, args.churn, stop, counts)),
                *(asyncio.create_task(resumer(ws_url, stop, counts)) for _ in range(args.resumers)),
            ]
            started = time.monotonic()
            rss: list[tuple[float, float]] = []
            snapshots: list[tuple[float, tracemalloc.Snapshot]] = []
            marks = [args.warmup + i * args.every for i in range(int((args.minutes - args.warmup) / args.every) + 1)]
            for mark in marks:
                while (time.monotonic() - started) / 60 < mark:
                    await asyncio.sleep(1)
                    rss.append(((time.monotonic() - started) / 60, rss_mb(proc.pid)))
                snapshots.append((mark, await snapshot(proc.pid, folder, len(snapshots))))
                print(
                    f"{mark:5.1f} min: RSS {rss[-1][1]:6.1f} MB, traced {snapshot_mb(snapshots[-1][1]):6.1f} MB; "
                    f"writes {counts.writes}, connections {counts.connections}, resumed events "
                    f"{counts.resumed_events} (missing {counts.missing}, duplicated {counts.duplicated}), "
                    f"failures {counts.failures}",
                    flush=True,
                )
            stop.set()
            await asyncio.gather(*load, return_exceptions=True)
            for reason, n in sorted(counts.reasons.items()):
                print(f"failures: {n} x {reason}")
            for (m0, s0), (m1, s1) in itertools.pairwise(snapshots):
                grown = snapshot_mb(s1) - snapshot_mb(s0)
                print(f"traced growth {m0:.1f} -> {m1:.1f} min: {grown:+.2f} MB ({grown / (m1 - m0):+.3f} MB/min)")
            if len(snapshots) >= 2:
                print(f"top growth, {snapshots[0][0]:.1f} -> {snapshots[-1][0]:.1f} min, by line:")
                for stat in snapshots[-1][1].compare_to(snapshots[0][1], "lineno")[:10]:
                    print(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  {stat.traceback}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 15)
            if proc.returncode is None:
                proc.kill()
            log.close()


def snapshot_mb(s: tracemalloc.Snapshot) -> float:
    return sum(stat.size for stat in s.statistics("filename")) / 1e6


if __name__ == "__main__":
    cli(main, "the server")
