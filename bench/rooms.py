"""Many rooms (tidings only): does an event for one room cost more when thousands of subscriptions exist elsewhere?

    .venv/bin/python bench/rooms.py            # 10,000 subscriptions over 1,000 rooms vs 10 in one room
    .venv/bin/python bench/rooms.py --quick    # 1,000 over 100 rooms, fewer events and rounds

Two tidings servers run side by side:
  many  --connections connections with many subscriptions each (distinct op ids, one room
        variable per subscription): --rooms rooms x --per-room subscriptions;
  one   only the --per-room subscriptions of the room that is published to.
In each round, E events are published to that room on each server (sequential mutations)
and the server's CPU time from the first publish until the room's subscribers received
every event is divided by E. Rounds alternate between the servers; medians are quoted
because the machine is noisy. Target: many / one within 1.2.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from contextlib import AsyncExitStack, ExitStack
from pathlib import Path
from typing import Any

from harness import (
    SUBSCRIBE,
    WARM,
    Load,
    Publisher,
    Server,
    apply_quick,
    cli,
    load_workers,
    median,
    pct,
    start_server,
)

ROOM = "r0"


async def prepare(
    server: Server, publisher: Publisher, load: Load, layout: list[list[str]], rooms: int, warm_events: int
) -> int:
    """Connect, make every subscription prove it is live, then warm the published room's path."""
    await load.connect(server.ws_url, SUBSCRIBE["tidings"], layout)
    total = sum(len(rooms_of_conn) for rooms_of_conn in layout)
    names = sorted({room for conn in layout for room in conn})
    for _ in range(3):
        for name in names:  # one event per room reaches every subscription once
            await publisher.publish(name, WARM)
        if await load.live(30.0) == total:
            break
    else:
        raise RuntimeError(f"not every one of the {total} subscriptions became live")
    for _ in range(warm_events):  # the same warm-up of the measured path on both servers
        await publisher.publish(ROOM, WARM)
    await asyncio.sleep(0.5)
    return total


async def measure(server: Server, publisher: Publisher, load: Load, events: int, expect: int) -> dict[str, Any]:
    await load.measure()
    cpu0, t0 = server.cpu_seconds(), time.time()
    for _ in range(events):
        await publisher.publish_timed(ROOM)
    result = await load.wait(ROOM, events, timeout=60)
    cpu1 = server.cpu_seconds()
    return {
        "us_per_event": (cpu1 - cpu0) / events * 1e6,
        "seconds": time.time() - t0,
        "received": result["received"],
        "expected": expect * events,
        "misrouted": result["misrouted"],
        "dups": result["duplicates"] + result["out_of_order"],
        "p99_ms": pct(result["latencies"], 99) * 1000,
    }


async def main_run(args: argparse.Namespace) -> None:
    total = args.rooms * args.per_room
    per_conn = -(-total // args.connections)
    many = [[f"r{(c * per_conn + i) % args.rooms}" for i in range(per_conn)] for c in range(args.connections)]
    many = [conn for conn in many if conn]
    one = [[ROOM] for _ in range(args.per_room)]
    layouts = {"many": many, "one": one}
    flags = ["--max-subscriptions", str(max(100, per_conn))]
    print(
        f"many rooms: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}\n"
        f"  many: {total} subscriptions over {args.rooms} rooms on {len(many)} connections ({per_conn} each)\n"
        f"  one:  the {args.per_room} subscriptions of room {ROOM} only, one connection each\n"
        f"  {args.events} events to room {ROOM} per round, {args.repeat} rounds",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="tidings-rooms-") as tmp, ExitStack() as servers:
        async with AsyncExitStack() as stack:
            setup: dict[str, tuple[Server, Publisher, Load]] = {}
            for label, layout in layouts.items():
                started = time.monotonic()
                server = servers.enter_context(start_server("tidings", Path(tmp), *flags))
                publisher = await stack.enter_async_context(Publisher(server))
                load = await stack.enter_async_context(load_workers(args.workers))
                rss0 = server.rss_kb()
                count = await prepare(server, publisher, load, layout, args.rooms, args.warm_events)
                print(
                    f"  {label}: {count} subscriptions live in {time.monotonic() - started:.0f} s, "
                    f"server RSS {rss0 / 1024:.0f} -> {server.rss_kb() / 1024:.0f} MiB",
                    flush=True,
                )
                setup[label] = (server, publisher, load)
            rounds: dict[str, list[dict[str, Any]]] = {label: [] for label in layouts}
            for n in range(args.repeat):
                order = list(layouts) if n % 2 == 0 else list(reversed(layouts))  # alternate who goes first
                for label in order:
                    server, publisher, load = setup[label]
                    rounds[label].append(await measure(server, publisher, load, args.events, args.per_room))
                print(
                    f"  round {n + 1}: "
                    + ", ".join(f"{label} {rounds[label][-1]['us_per_event']:.0f} us/event" for label in layouts),
                    flush=True,
                )
            problems = {label: setup[label][0].log_problems() for label in layouts}
    figures = {label: median([r["us_per_event"] for r in rs]) for label, rs in rounds.items()}
    print(f"\nServer CPU per event published to one room of {args.per_room} subscribers (median of {args.repeat}):")
    for label, rs in rounds.items():
        got, want = sum(r["received"] for r in rs), sum(r["expected"] for r in rs)
        values = ", ".join(f"{r['us_per_event']:.0f}" for r in rs)
        what = f"{total} subscriptions over {args.rooms} rooms" if label == "many" else f"only its {args.per_room}"
        print(
            f"  {what:<40} {figures[label]:8.0f} us/event   (rounds: "
            f"{values}; delivered {got}/{want}, "
            f"misrouted {sum(r['misrouted'] for r in rs)}, dup/ooo {sum(r['dups'] for r in rs)}, "
            f"p99 {median([r['p99_ms'] for r in rs]):.1f} ms)"
        )
    ratio = figures["many"] / figures["one"]
    print(f"  ratio many/one: {ratio:.2f}  (target <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'})")
    for label, lines in problems.items():
        for line in lines[:8]:
            print(f"  ! {label} server log: {line[:300]}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--per-room", type=int, default=10, help="subscriptions per room")
    parser.add_argument("--connections", type=int, default=100, help="connections carrying the many subscriptions")
    parser.add_argument("--events", type=int, default=200, help="events per round")
    parser.add_argument("--warm-events", type=int, default=50, help="warm-up events to the room, on both servers")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; medians are quoted")
    parser.add_argument("--workers", type=int, default=1, help="load client processes per server")
    parser.add_argument("--max-seconds", type=float, default=900, help="the whole run stops after this long")
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke run")
    args = parser.parse_args()
    apply_quick(parser, args, {"rooms": 100, "connections": 20, "events": 50, "warm_events": 10, "repeat": 3})
    started = time.monotonic()
    async with asyncio.timeout(args.max_seconds):
        await main_run(args)
    print(f"\n(run took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    cli(main)
