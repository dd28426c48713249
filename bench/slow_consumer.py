"""Slow consumer (tidings only): one client stops reading while the others keep up.

    .venv/bin/python bench/slow_consumer.py            # 200 readers + 1 stalled client, 2000 events of ~2 KB
    .venv/bin/python bench/slow_consumer.py --quick

tidings runs with a small send queue (--queue-messages, default here 200). The stalled
client reads its first event (so it is known to be subscribed) and then nothing: it has
a 4 KB receive buffer and websockets' max_queue=1, so the library soon stops reading its
socket, the kernel buffers fill and the server's queue for it grows until the bound.

While the events are published, the server-side TCP socket of the stalled connection is
watched in /proc/net/tcp (its state and kernel send queue) and the server's RSS sampled.
After the readers have everything, the stalled client keeps still for --stall seconds,
then reads what was left for it: the events still buffered, then (expected) a close
frame 4008 telling it to resume from its last seq.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import (
    SUBSCRIBE,
    WARM,
    Publisher,
    Server,
    apply_quick,
    cli,
    load_workers,
    pct,
    stamp_pad,
    start_server,
    tcp_socket,
)

ROOM = "lobby"


class Watch:
    """Samples the server's RSS and the server-side socket of the stalled connection."""

    def __init__(self, server: Server, client_port: int, t0: float) -> None:
        self.server = server
        self.client_port = client_port
        self.t0 = t0
        self.peak_rss_kb = server.rss_kb()
        self.changes: list[tuple[float, str]] = []  # (seconds since t0, state)
        self.max_send_q = 0
        self.state = ""

    def sample(self) -> None:
        self.peak_rss_kb = max(self.peak_rss_kb, self.server.rss_kb())
        if not self.client_port:
            return
        found = tcp_socket(self.server.port, self.client_port)
        state = found[0] if found else "gone"
        if found:
            self.max_send_q = max(self.max_send_q, found[1])
        if state != self.state:
            self.state = state
            self.changes.append((time.time() - self.t0, state))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.05)


@dataclass
class Outcome:
    result: dict[str, Any] = field(default_factory=dict)  # the readers' tallies
    drained: dict[str, Any] | None = None  # what the stalled client read when it resumed
    watch: Watch | None = None
    t0: float = 0.0
    publish_times: list[float] = field(default_factory=list)  # of each measured event, since t0
    rss: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


async def main_run(args: argparse.Namespace) -> Outcome:
    flags = ["--queue-messages", str(args.queue_messages), *args.tidings_args.split()]
    who = "no stalled client (baseline)" if args.no_stalled else "1 stalled client"
    print(
        f"slow consumer: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
        f"python {sys.version.split()[0]}\n"
        f"  tidings serve {' '.join(flags)}; {args.readers} readers + {who}; {args.events} events with "
        f"~{args.body_size} B bodies, published back to back; the stalled client resumes reading {args.stall:g} s "
        "after the readers got everything",
        flush=True,
    )
    out = Outcome()
    with (
        tempfile.TemporaryDirectory(prefix="tidings-slow-") as tmp,
        start_server("tidings", Path(tmp), *flags) as server,
    ):
        async with AsyncExitStack() as stack:
            publisher = await stack.enter_async_context(Publisher(server))
            readers = await stack.enter_async_context(load_workers(args.workers))
            stalled = None if args.no_stalled else await stack.enter_async_context(load_workers(1))
            await publisher.publish("nobody", WARM)
            out.rss["start"] = server.rss_kb()
            await readers.connect(server.ws_url, SUBSCRIBE["tidings"], [[ROOM] for _ in range(args.readers)])
            slow_connect = (
                asyncio.create_task(stalled.connect(server.ws_url, SUBSCRIBE["tidings"], [[ROOM]], slow=True))
                if stalled
                else None
            )
            deadline = time.monotonic() + 60
            live = 0
            while live < args.readers or (slow_connect and not slow_connect.done()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {live} of {args.readers} readers live after 60 s")
                await publisher.publish(ROOM, WARM)
                live = await readers.live(0.5)
            slow_port = (await slow_connect)[0] if slow_connect else 0
            await asyncio.sleep(0.5)
            out.rss["subscribed"] = server.rss_kb()
            await readers.measure()
            pad = stamp_pad(args.body_size)
            out.t0 = t0 = time.time()
            out.watch = watch = Watch(server, slow_port, t0)
            watcher = asyncio.create_task(watch.run())
            try:
                for _ in range(args.events):
                    out.publish_times.append(time.time() - t0)
                    await publisher.publish_timed(ROOM, pad)
                out.result = await readers.wait(ROOM, args.events, timeout=args.timeout)
                out.rss["delivered"] = server.rss_kb()
                if stalled:
                    await asyncio.sleep(args.stall)
                    answers = await stalled.call(
                        "drain_slow", [{"timeout": args.drain_timeout}], args.drain_timeout + 60
                    )
                    out.drained = answers[0][0]
                    await asyncio.sleep(1.0)
                watch.sample()
            finally:
                watcher.cancel()
            out.rss["end"] = server.rss_kb()
            out.rss["peak"] = watch.peak_rss_kb
        out.problems = server.log_problems()
    return out


def report(args: argparse.Namespace, out: Outcome) -> None:
    result, t0, times = out.result, out.t0, out.publish_times
    expected = args.readers * args.events
    lat = result["latencies"]
    print(f"\nReaders ({args.readers}):")
    print(
        f"  delivered {result['received']}/{expected} (losses {expected - result['received']}), "
        f"dup/ooo {result['duplicates']}/{result['out_of_order']}, connections closed {len(result['closed'])}"
        + (f": {result['closed'][:3]}" if result["closed"] else "")
    )
    print(
        f"  latency p50 {pct(lat, 50) * 1000:.1f} ms, p99 {pct(lat, 99) * 1000:.1f} ms, "
        f"max {max(lat, default=float('nan')) * 1000:.1f} ms; all {args.events} events published in "
        f"{times[-1]:.2f} s, last delivery at +{result['last_at'] - t0:.2f} s"
    )
    watch, drained = out.watch, out.drained
    if drained is not None and watch is not None:
        print("Stalled client:")
        got, first = drained["measured"], result["first_seq"]
        if got:
            index = drained["last_seq"] - first + 1 if first else got
            print(
                f"  {got} of the {args.events} events reached it (+{drained['warm']} warm-up); the last was event "
                f"#{index}, published at +{times[min(index, len(times)) - 1]:.2f} s. With {args.queue_messages} more "
                f"queued, the server's bound is passed at about event #{index + args.queue_messages + 1}"
                + (
                    f" (published at +{times[index + args.queue_messages]:.2f} s)"
                    if index + args.queue_messages < len(times)
                    else " (not reached: no overflow expected)"
                )
            )
        else:
            print(f"  none of the {args.events} events reached it (+{drained['warm']} warm-up)")
        if drained["close"] is None:
            print(f"  NOT closed: it read for {args.drain_timeout:g} s after resuming and the connection stayed open")
        else:
            code, reason = drained["close"]
            verdict = "as expected" if code == 4008 else "NOT the expected 4008"
            seen = drained["close_at"] - drained["started"]
            print(
                f"  closed with code {code} ({verdict}), reason {reason!r}; seen {seen:.2f} s "
                f"after it resumed reading at +{drained['started'] - t0:.2f} s"
            )
        changes = ", ".join(f"+{t:.2f} s {state}" for t, state in watch.changes)
        print(f"  server-side TCP socket: {changes}; its kernel send queue peaked at {watch.max_send_q / 1024:.0f} KiB")
    rss = {k: v / 1024 for k, v in out.rss.items()}
    print(
        f"Server RSS (MiB): {rss['start']:.1f} at start, {rss['subscribed']:.1f} with everyone subscribed, "
        f"{rss['delivered']:.1f} when the readers had everything, peak {rss['peak']:.1f} (sampled every 50 ms), "
        f"{rss['end']:.1f} at the end"
    )
    for line in out.problems[:10]:
        print(f"  ! server log: {line[:300]}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=int, default=200, help="subscribers that read normally")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--body-size", type=int, default=2048, help="message body size, characters")
    parser.add_argument("--queue-messages", type=int, default=200, help="tidings' send queue bound, in messages")
    parser.add_argument("--tidings-args", default="", help="more `tidings serve` flags")
    parser.add_argument("--stall", type=float, default=5.0, help="seconds the stalled client keeps still afterwards")
    parser.add_argument("--drain-timeout", type=float, default=10.0, help="how long it then reads, at most")
    parser.add_argument("--no-stalled", action="store_true", help="readers only: a baseline for RSS and latency")
    parser.add_argument("--workers", type=int, default=1, help="load client processes for the readers")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the readers' deliveries")
    parser.add_argument("--max-seconds", type=float, default=600, help="the whole run stops after this long")
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke run")
    args = parser.parse_args()
    apply_quick(parser, args, {"readers": 20})
    started = time.monotonic()
    async with asyncio.timeout(args.max_seconds):
        report(args, await main_run(args))
    print(f"\n(run took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    cli(main, "server and load workers")
