"""Fan-out benchmark: tidings, a naive Strawberry server and a raw broadcast, side by side.

    .venv/bin/python bench/fanout.py                  # fan-out run, then latency run (default sizes)
    .venv/bin/python bench/fanout.py --quick          # smoke run with small numbers
    .venv/bin/python bench/fanout.py --runs fanout --subscribers 2000 --events 30 --only tidings,raw

fanout   N subscribers (one connection and one subscription each, graphql-transport-ws) of one
         room; E events published back to back (each POST waits for the previous one).
latency  --latency-subscribers subscribers (default 1,000) and events leaving at a steady --rate
         for --seconds (default 50/s for 3 s), open loop: an event leaves on time even if the
         server has not answered the previous ones.

Each server is started fresh for each measurement, in its own process, and measured from
/proc: CPU time (utime + stime) during the publish phase, RSS before and after connecting.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import (
    KINDS,
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
    profiling,
    stamp_pad,
    start_server,
)

ROOM = "lobby"


async def warm_up(server: Server, publisher: Publisher, load: Load, subscriptions: int, timeout: float) -> None:
    """Publish warm-up events until every subscription saw one: then all of them are live."""
    deadline = time.monotonic() + timeout
    while True:
        await publisher.publish(ROOM, WARM)
        live = await load.live(1.0)
        if live == subscriptions:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{server.kind}: only {live} of {subscriptions} subscriptions live after {timeout:.0f} s"
            )


async def measure_once(
    kind: str,
    workdir: Path,
    *,
    subscribers: int,
    events: int,
    rate: float | None,
    workers: int,
    timeout: float,
    body_size: int,
    extra: list[str],
    profile: str | None = None,
) -> dict[str, Any]:
    with start_server(kind, workdir, *(extra if kind == "tidings" else [])) as server:
        async with Publisher(server) as publisher, load_workers(workers) as load:
            # One event before anything connects, so lazy start-up work is not counted per connection.
            await publisher.publish("nobody", WARM)
            await asyncio.sleep(0.3)
            rss_before = server.rss_kb()
            await load.connect(server.ws_url, SUBSCRIBE[kind], [[ROOM] for _ in range(subscribers)])
            await warm_up(server, publisher, load, subscribers, timeout=120)
            await asyncio.sleep(0.5)  # let the warm-up fan-out finish
            rss_after = server.rss_kb()
            await load.measure()
            pad = stamp_pad(body_size)
            with profiling(profile if kind == "tidings" else None, server.pid):
                cpu0, t0, client0 = server.cpu_seconds(), time.time(), load.cpu_seconds()
                if rate:  # open loop: each event leaves on time, whether or not the server keeps up
                    sent = []
                    for i in range(events):
                        await asyncio.sleep(max(0.0, t0 + i / rate - time.time()))
                        sent.append(asyncio.create_task(publisher.publish_timed(ROOM, pad)))
                    await asyncio.gather(*sent)
                else:
                    for _ in range(events):
                        await publisher.publish_timed(ROOM, pad)
                published = time.time()
                result = await load.wait(ROOM, events, timeout)
                cpu1, client1 = server.cpu_seconds(), load.cpu_seconds()
                waited = time.time() - published
        problems = server.log_problems()
    received = result["received"]
    span = max(result["last_at"] - t0, 1e-9)
    return {
        "timed_out": received < subscribers * events and waited >= timeout,
        "server": kind,
        "deliveries": received,
        "deliv_per_s": received / span,
        "span_s": span,
        "publish_s": published - t0,
        "p50_ms": pct(result["latencies"], 50) * 1000,
        "p99_ms": pct(result["latencies"], 99) * 1000,
        "max_ms": max(result["latencies"], default=float("nan")) * 1000,
        # per event, publish to its FIRST delivery: the server's pipeline before fan-out (median over events)
        "first_ms": median(list(result["first"].values())) * 1000,
        "cpu_us": (cpu1 - cpu0) / max(received, 1) * 1e6,
        "cpu_s": cpu1 - cpu0,
        # the busiest load worker's CPU use while the events were delivered: near 100% = the client limits
        "client_busy": max(b - a for a, b in zip(client0, client1, strict=True)) / span * 100,
        "kb_per_conn": (rss_after - rss_before) / subscribers,
        "losses": subscribers * events - received,
        "dups": result["duplicates"],
        "ooo": result["out_of_order"],
        "bytes_per_msg": result["bytes"] / max(result["frames"], 1),
        "closed": result["closed"],
        "client_errors": result["errors"],
        "server_log": problems,
    }


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    raw = next((r for r in rows if r["server"] == "raw"), None)
    print(f"\n{title}")
    head = (
        f"{'server':<8}{'deliv/s':>9}{'1st ms':>7}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'CPU us/d':>9}{'KB/conn':>8}"
        f"{'losses':>7}{'dup/ooo':>8}{'B/msg':>6}{'pub s':>6}{'last s':>7}{'CPU/raw':>8}{'rate/raw':>9}"
        f"{'client%':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        cpu_ratio = r["cpu_us"] / raw["cpu_us"] if raw else float("nan")
        rate_ratio = r["deliv_per_s"] / raw["deliv_per_s"] if raw else float("nan")
        dup_ooo = f"{r['dups']:.0f}/{r['ooo']:.0f}"
        print(
            f"{r['server']:<8}{r['deliv_per_s']:>9.0f}{r['first_ms']:>7.1f}{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['max_ms']:>8.1f}"
            f"{r['cpu_us']:>9.1f}{r['kb_per_conn']:>8.1f}{r['losses']:>7.0f}"
            f"{dup_ooo:>8}{r['bytes_per_msg']:>6.0f}{r['publish_s']:>6.2f}{r['span_s']:>7.2f}"
            f"{cpu_ratio:>8.2f}{rate_ratio:>9.2f}{r['client_busy']:>8.0f}"
        )
    for r in rows:
        if r["timed_out"]:
            print(f"  ! {r['server']}: not everything arrived within the timeout; what was missing counts as losses")
        for closed in r["closed"][:3]:
            print(f"  ! {r['server']}: a subscriber connection was closed: {closed} ({len(r['closed'])} in all)")
        for line in r["client_errors"]:
            print(f"  ! {r['server']}: client saw {line}")
        for line in r["server_log"][:8]:
            print(f"  ! {r['server']} log: {line[:300]}")
        if len(r["server_log"]) > 8:
            print(f"  ! {r['server']} log: ... {len(r['server_log']) - 8} more such lines")


async def run(args: argparse.Namespace, title: str, subscribers: int, events: int, rate: float | None) -> None:
    per_server: dict[str, list[dict[str, Any]]] = {kind: [] for kind in args.only}
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as tmp:
        for _ in range(args.repeat):
            for kind in args.only:  # interleaved, so drift in the machine's load hits all alike
                started = time.monotonic()
                row = await measure_once(
                    kind,
                    Path(tmp),
                    subscribers=subscribers,
                    events=events,
                    rate=rate,
                    workers=args.workers,
                    timeout=args.timeout,
                    body_size=args.body_size,
                    extra=args.tidings_args.split(),
                    profile=args.profile,
                )
                per_server[kind].append(row)
                print(
                    f"  {kind}: {row['deliveries']} deliveries, {row['cpu_s']:.2f} s server CPU "
                    f"({time.monotonic() - started:.0f} s with start-up)",
                    flush=True,
                )
    rows = []
    for kind, runs in per_server.items():
        numeric = {k: median([r[k] for r in runs]) for k, v in runs[0].items() if isinstance(v, (int, float))}
        lists = {k: [x for r in runs for x in r[k]] for k, v in runs[0].items() if isinstance(v, list)}
        rows.append({**numeric, **lists, "server": kind})
    suffix = f" (median of {args.repeat})" if args.repeat > 1 else ""
    print_table(title + suffix, rows)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="fanout,latency", help="comma list of: fanout, latency")
    parser.add_argument("--only", default=",".join(KINDS), help="comma list of servers: tidings, naive, raw")
    parser.add_argument("--subscribers", type=int, default=2000, help="fan-out run: subscribers (connections)")
    parser.add_argument("--events", type=int, default=30, help="fan-out run: events published back to back")
    parser.add_argument("--latency-subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="latency run: events per second")
    parser.add_argument("--seconds", type=float, default=3.0, help="latency run: how long events are published")
    parser.add_argument("--body-size", type=int, default=0, help="pad message bodies to about this many characters")
    parser.add_argument("--workers", type=int, default=2, help="load client processes")
    parser.add_argument(
        "--timeout", type=float, default=90.0, help="seconds to wait for all deliveries after the last publish"
    )
    parser.add_argument("--repeat", type=int, default=1, help="measurements per server; medians are printed")
    parser.add_argument("--tidings-args", default="", help="extra `tidings serve` flags, e.g. '--queue-messages 200'")
    parser.add_argument(
        "--profile",
        help="command run against the tidings server during the publish phase, {pid} filled in, stopped with "
        "SIGINT; e.g. 'py-spy record --pid {pid} --format raw -o prof.txt' (py-spy is not a dependency)",
    )
    parser.add_argument("--max-seconds", type=float, default=1800, help="the whole run stops after this long")
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke run")
    args = parser.parse_args()
    args.only = [s for s in args.only.split(",") if s]
    if unknown := set(args.only) - set(KINDS):
        parser.error(f"unknown servers {sorted(unknown)}")
    apply_quick(parser, args, {"subscribers": 200, "events": 10, "latency_subscribers": 100, "seconds": 1.0})
    runs = [r for r in args.runs.split(",") if r]
    print(
        f"fan-out benchmark: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
        f"python {sys.version.split()[0]}; load client: {args.workers} worker process(es); all on 127.0.0.1",
        flush=True,
    )
    started = time.monotonic()
    async with asyncio.timeout(args.max_seconds):
        await run_all(args, runs)
    print(f"\n(run took {time.monotonic() - started:.0f} s)")
    print(
        "deliv/s: deliveries / (last delivery - first publish); p50/p99/max: publish-to-receipt latency;\n"
        "1st ms: median over events of the latency of each event's first delivery (before the fan-out's spread);\n"
        "CPU us/d: server CPU during the publish phase / deliveries; KB/conn: server RSS growth / subscribers;\n"
        "losses: expected - received; dup/ooo: duplicate / out-of-order seqs; B/msg: frame size;\n"
        "pub s: time to publish all events; last s: first publish to last delivery;\n"
        "client%: CPU use of the busiest load worker over 'last s' (near 100 = the load client is the limit)."
    )


async def run_all(args: argparse.Namespace, runs: list[str]) -> None:
    if "fanout" in runs:
        title = f"Fan-out: {args.subscribers} subscribers of one room, {args.events} events back to back"
        print(f"\n{title} ...", flush=True)
        await run(args, title, args.subscribers, args.events, None)
    if "latency" in runs:
        events = round(args.rate * args.seconds)
        title = (
            f"Latency: {args.latency_subscribers} subscribers of one room, {events} events at "
            f"{args.rate:g}/s for {args.seconds:g} s"
        )
        print(f"\n{title} ...", flush=True)
        await run(args, title, args.latency_subscribers, events, args.rate)


if __name__ == "__main__":
    cli(main)
