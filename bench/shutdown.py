"""Graceful shutdown: time from SIGTERM to exit with WebSocket and SSE clients connected.

    .venv/bin/python bench/shutdown.py                 # 200 graphql-transport-ws + 200 SSE (distinct) clients
    .venv/bin/python bench/shutdown.py --ws 1000 --sse 0
    .venv/bin/python bench/shutdown.py --quick

Every client subscribes to taskEvents and reads one event (so it is known to be
subscribed); then the server gets SIGTERM. Printed: seconds from the signal until every
WebSocket saw its close (and the codes), until every SSE stream ended, and until the
process exited (and its exit status). A server that never lets go is killed after
--shutdown-timeout + 10 s and reported as such.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import websockets
from harness import apply_quick, cli, start_server
from websockets.asyncio.client import ClientConnection, connect

QUERY = "subscription { taskEvents { seq } }"
CREATE = 'mutation { createTask(input: {title: "t", status: "open"}) { id } }'


async def open_ws(url: str) -> ClientConnection:
    ws = await connect(url, subprotocols=["graphql-transport-ws"], open_timeout=60)  # type: ignore[list-item]
    await ws.send('{"type":"connection_init","payload":{}}')
    await asyncio.wait_for(ws.recv(), 30)
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": QUERY}}))
    return ws


async def first_event(ws: ClientConnection) -> None:
    while json.loads(await ws.recv()).get("type") != "next":
        pass


async def ws_until_closed(ws: ClientConnection) -> int | None:
    try:
        while True:
            await ws.recv()
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None


async def sse_until_first(lines: AsyncIterator[str]) -> None:
    async for line in lines:
        if line.startswith("event: next"):
            return


async def sse_until_ended(lines: AsyncIterator[str]) -> bool:
    try:
        async for _ in lines:
            pass
    except httpx.HTTPError:
        return False
    return True


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ws", type=int, default=200, help="graphql-transport-ws clients")
    parser.add_argument("--sse", type=int, default=200, help="graphql-sse distinct-mode clients")
    parser.add_argument("--shutdown-timeout", type=float, default=None, help="for tidings serve (default 10)")
    parser.add_argument("--quick", action="store_true", help="20 + 20 clients")
    args = parser.parse_args()
    apply_quick(parser, args, {"ws": 20, "sse": 20})

    extra = ["--shutdown-timeout", str(args.shutdown_timeout)] if args.shutdown_timeout is not None else []
    with tempfile.TemporaryDirectory() as tmp, start_server("tidings", Path(tmp), *extra, exits=True) as server:
        async with AsyncExitStack() as stack:
            limits = httpx.Limits(max_connections=args.sse + 10, max_keepalive_connections=args.sse + 10)
            http = await stack.enter_async_context(httpx.AsyncClient(timeout=60, limits=limits))
            sockets = []
            for _ in range(args.ws):
                sockets.append(await open_ws(server.ws_url))
            streams = []
            for _ in range(args.sse):
                streams.append(
                    await stack.enter_async_context(
                        http.stream(
                            "GET",
                            server.base_url + "/graphql",
                            params={"query": QUERY},
                            headers={"accept": "text/event-stream"},
                        )
                    )
                )
            lines = [s.aiter_lines() for s in streams]  # one iterator per stream, read in two steps
            await http.post(server.base_url + "/graphql", json={"query": CREATE})
            await asyncio.wait_for(
                asyncio.gather(*(first_event(ws) for ws in sockets), *(sse_until_first(s) for s in lines)), 60
            )
            print(f"{args.ws} WebSocket + {args.sse} SSE clients subscribed; SIGTERM", flush=True)

            t0 = time.perf_counter()
            server.proc.send_signal(signal.SIGTERM)

            async def timed_ws() -> float:
                codes = await asyncio.gather(*(ws_until_closed(ws) for ws in sockets))
                print(f"  WebSocket close codes: {dict(collections.Counter(codes))}")
                return time.perf_counter() - t0

            async def timed_sse() -> float:
                ended = await asyncio.gather(*(sse_until_ended(s) for s in lines))
                print(f"  SSE streams ended cleanly: {sum(ended)} of {len(ended)}")
                return time.perf_counter() - t0

            async def timed_exit() -> float:
                while server.proc.poll() is None:
                    await asyncio.sleep(0.005)
                return time.perf_counter() - t0

            bound = (args.shutdown_timeout or 10.0) + 10
            try:
                ws_s, sse_s, exit_s = await asyncio.wait_for(
                    asyncio.gather(timed_ws(), timed_sse(), timed_exit()), bound
                )
            except TimeoutError:
                print(f"  server still running {bound:.0f} s after SIGTERM (killed)")
                return
            print(f"  all WebSockets closed   {ws_s * 1000:8.1f} ms after SIGTERM")
            print(f"  all SSE streams ended   {sse_s * 1000:8.1f} ms after SIGTERM")
            print(f"  process exited          {exit_s * 1000:8.1f} ms after SIGTERM, status {server.proc.returncode}")


if __name__ == "__main__":
    cli(main)
