"""Scale-out benchmark: one `tidings serve` vs `tidings serve --workers 2`, same port, same broker.

    .venv/bin/python bench/workers.py                 # 4,000 subscribers, 20 events, 1 then 2 workers
    .venv/bin/python bench/workers.py --quick         # 400 subscribers, 5 events
    .venv/bin/python bench/workers.py --db postgresql://user@127.0.0.1/db   # PostgreSQL, its LISTEN/NOTIFY broker

N subscribers (one graphql-transport-ws connection and subscription each) of one room; E events
published back to back through the port (each POST waits for the previous one). The broker is a
throwaway redis-server (or, with --db postgresql://..., the database's LISTEN/NOTIFY). Printed per
worker count: deliveries/s, server CPU per delivery (the supervisor and every worker, from /proc),
latency, how the kernel spread the connections over the workers, losses and dup/out-of-order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fanout import ROOM, warm_up
from harness import (
    SUBSCRIBE,
    Publisher,
    apply_quick,
    cli,
    cpu_seconds_of,
    free_port,
    load_workers,
    median,
    pct,
    start_redis,
    start_server,
)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; stopped however the block ends."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (or pass --db postgresql://... to use its broker)")
    port = free_port()
    proc = start_redis(port, workdir)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait(5)


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the supervisor, its workers, multiprocessing's tracker)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in Path(f"/proc/{current}/task/{task}/children").read_text().split()]
    return found


def tree_cpu(pid: int) -> dict[int, float]:
    cpu = {}
    for p in tree(pid):
        with contextlib.suppress(OSError):
            cpu[p] = cpu_seconds_of(p)
    return cpu


def spread(pids: list[int], port: int) -> dict[int, int]:
    """Established connections on ``port`` held by each process, from /proc/net/tcp and each one's fds."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # ESTABLISHED
            inodes.add(f"socket:[{fields[9]}]")
    counts = {}
    for pid in pids:
        n = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    n += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
        if n:
            counts[pid] = n
    return counts


async def measure(args: argparse.Namespace, workdir: Path, workers: int, broker: list[str]) -> dict[str, Any]:
    extra = [*broker, "--workers", str(workers)]
    if args.db:
        extra += ["--db", args.db]
    with start_server("tidings", workdir, *extra, start_timeout=60) as server:
        async with Publisher(server) as publisher, load_workers(args.load_workers) as load:
            await warm_up_port(publisher)
            await load.connect(server.ws_url, SUBSCRIBE["tidings"], [[ROOM] for _ in range(args.subscribers)])
            await warm_up(server, publisher, load, args.subscribers, timeout=180)
            await asyncio.sleep(0.5)  # let the warm-up fan-out finish
            await load.measure()
            pids = tree(server.pid)
            cpu0, t0, client0 = tree_cpu(server.pid), time.time(), load.cpu_seconds()
            for _ in range(args.events):
                await publisher.publish_timed(ROOM)
            result = await load.wait(ROOM, args.events, args.timeout)
            cpu1, client1 = tree_cpu(server.pid), load.cpu_seconds()
            connections = spread(pids, server.port)
        problems = server.log_problems()
    received = result["received"]
    span = max(result["last_at"] - t0, 1e-9)
    cpu = sum(cpu1.get(p, 0.0) - c for p, c in cpu0.items())
    return {
        "workers": workers,
        "deliveries": received,
        "deliv_per_s": received / span,
        "cpu_us": cpu / max(received, 1) * 1e6,
        "cpu_s": cpu,
        "cpu_busy": cpu / span * 100,  # % of one core, all server processes together
        "span_s": span,
        # the busiest load worker's CPU over the span: near 100 = the load client is the limit
        "client_busy": max(b - a for a, b in zip(client0, client1, strict=True)) / span * 100,
        "p50_ms": pct(result["latencies"], 50) * 1000,
        "p99_ms": pct(result["latencies"], 99) * 1000,
        "first_ms": median(list(result["first"].values())) * 1000,
        "spread": sorted(connections.values(), reverse=True),
        "losses": args.subscribers * args.events - received,
        "dups": result["duplicates"],
        "ooo": result["out_of_order"],
        "server_log": problems,
    }


async def warm_up_port(publisher: Publisher) -> None:
    """One event before anything connects, retried while the workers start (the port listens before)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            await publisher.publish("nobody", "warm")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=4000)
    parser.add_argument("--events", type=int, default=20, help="events published back to back")
    parser.add_argument("--workers", default="1,2", help="comma list of server worker counts to measure")
    parser.add_argument("--load-workers", type=int, default=2, help="load client processes")
    parser.add_argument("--db", default=None, help="postgresql://... (its LISTEN/NOTIFY broker); default SQLite+Redis")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every delivery")
    parser.add_argument("--max-seconds", type=float, default=1200, help="the whole run stops after this long")
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke run")
    args = parser.parse_args()
    apply_quick(parser, args, {"subscribers": 400, "events": 5})
    counts = [int(n) for n in args.workers.split(",") if n]
    print(
        f"workers benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
        f"python {sys.version.split()[0]}; {args.subscribers} subscribers of one room, {args.events} events; "
        f"load client: {args.load_workers} process(es); all on 127.0.0.1",
        flush=True,
    )
    rows = []
    started = time.monotonic()
    async with asyncio.timeout(args.max_seconds):
        with tempfile.TemporaryDirectory(prefix="tidings-bench-") as tmp, contextlib.ExitStack() as stack:
            broker = [] if args.db else ["--broker", stack.enter_context(redis_server(Path(tmp)))]
            for n in counts:
                row = await measure(args, Path(tmp), n, broker)
                print(f"  {n} worker(s): {row['deliveries']} deliveries, {row['cpu_s']:.2f} s server CPU", flush=True)
                rows.append(row)
    head = f"{'workers':>7}{'deliv/s':>9}{'CPU us/d':>9}{'CPU %':>7}{'1st ms':>8}{'p50 ms':>8}{'p99 ms':>8}"
    print(f"\n{head}{'client%':>8}{'losses':>7}{'dup/ooo':>8}  connections per worker")
    for r in rows:
        print(
            f"{r['workers']:>7}{r['deliv_per_s']:>9.0f}{r['cpu_us']:>9.1f}{r['cpu_busy']:>7.0f}{r['first_ms']:>8.1f}"
            f"{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['client_busy']:>8.0f}{r['losses']:>7.0f}"
            f"{r['dups']:>4.0f}/{r['ooo']:<3.0f}  "
            f"{r['spread']}"
        )
        for line in r["server_log"][:8]:
            print(f"  ! log: {line[:300]}")
    print(
        f"\n(run took {time.monotonic() - started:.0f} s)\n"
        "CPU us/d: CPU of the supervisor and all workers from the first publish to the last delivery / deliveries;\n"
        "CPU %: that CPU over the same span, in % of one core (200 = both cores of a 2-core machine);\n"
        "1st ms: median over events of publish-to-first-delivery; p50/p99: publish-to-receipt over all deliveries;\n"
        "client%: CPU of the busiest load client process over the span (near 100 = the client is the limit)."
    )


if __name__ == "__main__":
    cli(main)
