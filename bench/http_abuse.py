"""Oversized bodies and slowloris against plain HTTP: what they cost the server and the other clients.

    .venv/bin/python bench/http_abuse.py                   # 20 x 5 MB bodies, then 200 slowloris connections
    .venv/bin/python bench/http_abuse.py --quick
    .venv/bin/python bench/http_abuse.py --server-args="--max-message-size 50000000 --header-timeout 0 --body-timeout 0"

Phase 1 sends --bodies parallel POSTs of --body-mb MB each (valid JSON, a padded
variable) while one client sends small queries; printed: the status codes, the server's
RSS before, at its peak and after, and the small queries' p50/p99. Phase 2 opens
--slow connections that send one header byte a second; printed: how many the server
still holds after --header-timeout + 2 s, and the small queries' p50/p99 meanwhile.
The last example turns the limits off, which is how the server behaved before them.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import shlex
import tempfile
import time
from pathlib import Path

import httpx
from harness import apply_quick, cli, pct, start_server

SMALL = {"query": "{ tasks(limit: 1) { id } }"}


async def small_queries(url: str, stop: asyncio.Event) -> list[float]:
    times: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            response = await client.post("/graphql", json=SMALL)
            response.raise_for_status()
            times.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)
    return times


async def big_post(url: str, size: int) -> str:
    prefix, suffix = b'{"query": "{ tasks(limit: 1) { id } }", "variables": {"pad": "', b'"}}'
    body = prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            response = await client.post("/graphql", content=body, headers={"content-type": "application/json"})
            return str(response.status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


def upload_all(url: str, count: int, size: int) -> list[str]:
    async def run() -> list[str]:
        return list(await asyncio.gather(*(big_post(url, size) for _ in range(count))))

    return asyncio.run(run())


async def slow_client(port: int, seconds: float) -> bool:
    """Send a request's headers a byte a second for ``seconds``; True if the server still holds it then."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        line = b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
        deadline = time.monotonic() + seconds
        for byte in line:
            if time.monotonic() > deadline:
                break
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                    return False
        return not reader.at_eof()
    except ConnectionError:
        return False
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bodies", type=int, default=20)
    parser.add_argument("--body-mb", type=float, default=5.0)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--header-timeout", type=float, default=10.0, help="the server's --header-timeout")
    parser.add_argument("--server-args", default="", help="more `tidings serve` arguments")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    apply_quick(parser, args, {"bodies": 5, "slow": 50, "header_timeout": 2.0})
    extra = ["--header-timeout", str(args.header_timeout), *shlex.split(args.server_args)]
    with tempfile.TemporaryDirectory() as tmp, start_server("tidings", Path(tmp), *extra) as server:
        url = server.base_url
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for _ in range(20):
                (await client.post("/graphql", json=SMALL)).raise_for_status()
        rss_before = server.rss_kb()
        stop = asyncio.Event()
        prober = asyncio.create_task(small_queries(url, stop))
        peak = rss_before
        # The uploads run in a process of their own, so they do not slow the prober's client side.
        with concurrent.futures.ProcessPoolExecutor(1) as pool:
            posts = asyncio.get_running_loop().run_in_executor(
                pool, upload_all, url, args.bodies, int(args.body_mb * 1e6)
            )
            while not posts.done():
                peak = max(peak, server.rss_kb())
                await asyncio.sleep(0.05)
            statuses = await posts
        stop.set()
        times = await prober
        print(
            f"bodies: {args.bodies} x {args.body_mb:g} MB -> {sorted(set(statuses))}; "
            f"RSS {rss_before // 1024} -> peak {peak // 1024} -> after {server.rss_kb() // 1024} MB; "
            f"small queries meanwhile: {len(times)}, p50 {pct(times, 50) * 1000:.0f} ms, "
            f"p99 {pct(times, 99) * 1000:.0f} ms"
        )
        stop = asyncio.Event()
        prober = asyncio.create_task(small_queries(url, stop))
        held = await asyncio.gather(*(slow_client(server.port, args.header_timeout + 2) for _ in range(args.slow)))
        stop.set()
        times = await prober
        print(
            f"slowloris: {args.slow} connections sending a header byte a second; "
            f"held after {args.header_timeout + 2:g} s: {sum(held)}; small queries meanwhile: {len(times)}, "
            f"p50 {pct(times, 50) * 1000:.0f} ms, p99 {pct(times, 99) * 1000:.0f} ms"
        )
        for line in server.log_problems()[:5]:
            print("  server log:", line)


if __name__ == "__main__":
    cli(main, "the server")
