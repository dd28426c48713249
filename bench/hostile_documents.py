"""Unique large GraphQL documents: what they cost the server and the other clients.

    .venv/bin/python bench/hostile_documents.py            # 20 at once, of each shape, ~250 KB each
    .venv/bin/python bench/hostile_documents.py --quick
    /other/checkout/.venv/bin/python bench/hostile_documents.py   # the same against another checkout's tidings

Each round sends --documents unique documents at once (POST /graphql, JSON) of one shape:
a field with ~83,000 repeated directives (`{ __typename @a @a ... }`), or a filter list
literal of ~40,000 `{}` items, while one client sends small queries. Printed per shape:
the answers' (status, extensions.code), the server's RSS before, at its peak and after,
its CPU seconds, and the small queries' p50/p99 meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from harness import apply_quick, cli, pct, start_server

SMALL = {"query": "{ tasks(limit: 1) { id } }"}


def directives(size: int) -> str:
    tag = uuid.uuid4().hex  # unique: no cache answers it
    return "{ __typename" + " @a" * ((size - 60) // 3) + " } # " + tag


def big_list(size: int) -> str:
    tag = uuid.uuid4().hex
    return "{ tasks(where: {title: {in: [" + ",".join(["{}"] * ((size - 80) // 3)) + "]}}) { id } } # " + tag


SHAPES = {"directives": directives, "list": big_list}


async def small_queries(url: str, stop: asyncio.Event) -> list[float]:
    """The small queries' latencies; one that fails or times out (30 s) counts as infinite."""
    times: list[float] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                (await client.post("/graphql", json=SMALL)).raise_for_status()
                times.append(time.perf_counter() - t0)
            except httpx.HTTPError:
                times.append(float("inf"))
            await asyncio.sleep(0.02)
    return times


def send_all(url: str, shape: str, count: int, size: int) -> list[tuple[int, str]]:
    async def one(client: httpx.AsyncClient) -> tuple[int, str]:
        try:
            response = await client.post("/graphql", json={"query": SHAPES[shape](size)})
        except httpx.HTTPError as exc:
            return 0, type(exc).__name__
        try:
            errors = response.json().get("errors") or [{}]
            code = str(errors[0].get("extensions", {}).get("code"))
        except ValueError:
            code = "(not JSON)"
        return response.status_code, code

    async def run() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(base_url=url, timeout=300) as client:
            return list(await asyncio.gather(*(one(client) for _ in range(count))))

    return asyncio.run(run())


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=20)
    parser.add_argument("--kb", type=int, default=250, help="size of each document")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    apply_quick(parser, args, {"documents": 4})
    with tempfile.TemporaryDirectory() as tmp, start_server("tidings", Path(tmp)) as server:
        url = server.base_url
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for _ in range(20):
                (await client.post("/graphql", json=SMALL)).raise_for_status()
        for shape in SHAPES:
            rss_before, cpu_before = server.rss_kb(), server.cpu_seconds()
            stop = asyncio.Event()
            prober = asyncio.create_task(small_queries(url, stop))
            peak = rss_before
            # The documents go from a process of their own, so building them does not slow the prober.
            with concurrent.futures.ProcessPoolExecutor(1) as pool:
                sent = asyncio.get_running_loop().run_in_executor(
                    pool, send_all, url, shape, args.documents, args.kb * 1000
                )
                while not sent.done():
                    peak = max(peak, server.rss_kb())
                    await asyncio.sleep(0.05)
                answers = await sent
            await asyncio.sleep(0.5)  # a last probe or two after the burst
            stop.set()
            times = await prober
            print(
                f"{shape}: {args.documents} x {args.kb} KB at once -> {sorted(set(answers))}; "
                f"RSS {rss_before // 1024} -> peak {peak // 1024} -> after {server.rss_kb() // 1024} MB "
                f"(+{(server.rss_kb() - rss_before) // 1024} MB); "
                f"server CPU {server.cpu_seconds() - cpu_before:.1f} s; "
                f"small queries meanwhile: {len(times)}, p50 {pct(times, 50) * 1000:.0f} ms, "
                f"p99 {pct(times, 99) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
            )
        for line in server.log_problems()[:5]:
            print("  server log:", line)


if __name__ == "__main__":
    cli(main, "the server")
