"""Reconnect storm (tidings only): every client resumes at once with ``after:`` far back.

    .venv/bin/python bench/replay_storm.py            # 2,000 clients, 500 events, 3 rounds
    .venv/bin/python bench/replay_storm.py --quick    # 200 clients, 1 round

One tidings server (`tidings serve` on a temporary SQLite file). Each round:
  (a) live    --clients graphql-transport-ws connections subscribe to one room and are made
              live; --events events are published back to back (each POST waits for the
              previous one); the time from the first publish until every subscriber has
              every event;
  (b) replay  those clients are gone; as many new ones connect at once, each subscribing with
              ``after:`` the seq just before those events, so each replays all of them from the
              log; the time from the first connect until every subscriber has every event,
              the errors (error/complete messages and closed connections) and the subscribers
              that did not get every event (short);
  (c) query   meanwhile a plain query (`{ messages(limit: 1) { id } }`) is sent every
              --query-interval seconds: its latency (a failed or timed-out one counts as failed).
Target: 0 errors, (b) within 3x (a), every query in (c) under 1 s. Medians over rounds are quoted
because the machine is noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from harness import (
    SELECTION,
    SUBSCRIBE,
    WARM,
    Publisher,
    Server,
    apply_quick,
    cli,
    load_workers,
    median,
    start_server,
)

ROOM = "r0"
RESUME = (
    "subscription($room: String!, $after: String) "
    "{ messageEvents(where: {room: {eq: $room}}, after: $after) " + SELECTION + " }"
)
QUERY = "{ messages(limit: 1) { id } }"


async def head_seq(client: httpx.AsyncClient) -> int:
    response = await client.post("/graphql", json={"query": QUERY})
    return int(response.json()["extensions"]["seq"])


async def probe_queries(server: Server, interval: float, stop: asyncio.Event, out: list[float | None]) -> None:
    """A plain query every ``interval`` s until ``stop``: latencies, None for a failed one."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                response = await client.post("/graphql", json={"query": QUERY})
                ok = response.status_code == 200 and b'"errors"' not in response.content
            except httpx.HTTPError:
                ok = False
            out.append(time.monotonic() - t0 if ok else None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)


async def one_round(server: Server, publisher: Publisher, args: argparse.Namespace) -> dict[str, Any]:
    layout = [[ROOM] for _ in range(args.clients)]
    # (a) live delivery
    async with load_workers(args.workers) as load:
        await load.connect(server.ws_url, SUBSCRIBE["tidings"], layout)
        for _ in range(5):
            await publisher.publish(ROOM, WARM)
            if await load.live(30.0) == args.clients:
                break
        else:
            raise RuntimeError(f"not every one of the {args.clients} subscriptions became live")
        after = await head_seq(publisher.client)
        await load.measure()
        t0 = time.time()
        for _ in range(args.events):
            await publisher.publish_timed(ROOM)
        live = await load.wait(ROOM, args.events, timeout=args.timeout)
        live_s = live["last_at"] - t0
    # (b) everyone resumes at once from `after`, (c) queries meanwhile
    async with load_workers(args.workers) as load:
        await load.measure()
        stop = asyncio.Event()
        latencies: list[float | None] = []
        prober = asyncio.create_task(probe_queries(server, args.query_interval, stop, latencies))
        try:
            t0 = time.time()
            await load.connect(server.ws_url, RESUME, layout, variables={"after": str(after)})
            replay = await load.wait(ROOM, args.events, timeout=args.timeout)
        finally:
            stop.set()
            await prober
        replay_s = replay["last_at"] - t0
    errors = replay["error_count"] + len(replay["closed"])  # error/complete messages, closed connections
    ok = [x for x in latencies if x is not None]
    return {
        "live_s": live_s,
        "live_short": live["short"],
        "replay_s": replay_s,
        "errors": errors,
        "short": replay["short"],
        "error_samples": replay["errors"][:2] + [str(c) for c in replay["closed"][:2]],
        "dups": replay["duplicates"] + replay["out_of_order"],
        "queries": len(latencies),
        "query_failed": len(latencies) - len(ok),
        "query_max_s": max(ok, default=float("nan")),
        "query_median_s": median(ok),
    }


async def main_run(args: argparse.Namespace) -> None:
    print(
        f"replay storm: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}\n"
        f"  {args.clients} clients, {args.events} events per round, {args.repeat} round(s), "
        f"{args.workers} load worker(s)",
        flush=True,
    )
    rounds = []
    with (
        tempfile.TemporaryDirectory(prefix="tidings-replay-") as tmp,
        start_server("tidings", Path(tmp), *args.tidings_args.split()) as server,
    ):
        async with Publisher(server) as publisher:
            for n in range(args.repeat):
                r = await one_round(server, publisher, args)
                rounds.append(r)
                print(
                    f"  round {n + 1}: (a) live {r['live_s']:.1f} s (short {r['live_short']})  "
                    f"(b) replay {r['replay_s']:.1f} s, errors {r['errors']}, short {r['short']}, "
                    f"dup/ooo {r['dups']}  (c) queries {r['queries']}, failed {r['query_failed']}, "
                    f"median {r['query_median_s'] * 1000:.0f} ms, max {r['query_max_s'] * 1000:.0f} ms",
                    flush=True,
                )
                for sample in r["error_samples"]:
                    print(f"    e.g. {sample[:200]}")
        problems = server.log_problems()
    live_s = median([r["live_s"] for r in rounds])
    replay_s = median([r["replay_s"] for r in rounds])
    print(
        f"medians: (a) live {live_s:.1f} s  (b) replay {replay_s:.1f} s = {replay_s / live_s:.1f}x (a), "
        f"errors {median([r['errors'] for r in rounds]):.0f}  "
        f"(c) query max {median([r['query_max_s'] for r in rounds]) * 1000:.0f} ms, "
        f"failed {median([r['query_failed'] for r in rounds]):.0f}"
    )
    if problems:
        print(f"! tidings log: {len(problems)} warning/error lines, e.g.:")
        for line in problems[:5]:
            print(f"    {line[:200]}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--events", type=int, default=500, help="events per round (and how far back clients resume)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are quoted")
    parser.add_argument("--workers", type=int, default=2, help="load client processes")
    parser.add_argument("--query-interval", type=float, default=0.25, help="seconds between probe queries")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each phase's deliveries")
    parser.add_argument("--tidings-args", default="", help="more `tidings serve` flags")
    parser.add_argument("--max-seconds", type=float, default=1200, help="the whole run stops after this long")
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke run")
    args = parser.parse_args()
    apply_quick(parser, args, {"clients": 200, "repeat": 1})
    async with asyncio.timeout(args.max_seconds):
        await main_run(args)


if __name__ == "__main__":
    cli(main)
