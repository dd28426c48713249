"""A real uvicorn server of ``create_app`` on a free loopback port, and waits on what it holds."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from tests.support.wsclient import WS
from tidings.app import create_app
from tidings.config import Settings
from tidings.redaction import install_redaction
from tidings.serving import uvicorn_options

_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
_BLOCK = 10_000 + (_WORKER % 8) * 2_500  # this worker's ports: [_BLOCK, _BLOCK + 2,500)
_PORTS = itertools.count(os.getpid() * 7919)  # a start per process, so two runs at once rarely meet


def free_port() -> int:
    """A loopback port no other test process will be given.

    Not from the kernel's ephemeral range: under pytest-xdist two workers asking the kernel
    at once could get the same port, and one test would talk to the other's server. Each
    worker walks its own block of 2,500 ports below that range, skipping ports in use.
    """
    for _ in range(2_500):
        port = _BLOCK + next(_PORTS) % 2_500
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"free_port: no free port in {_BLOCK}-{_BLOCK + 2_499}")


class Server:
    """A uvicorn server in a thread of its own, with its own event loop."""

    def __init__(self, app: Any, port: int, **uvicorn_kwargs: Any) -> None:
        self.app = app
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/graphql"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **uvicorn_kwargs)
        self.server = uvicorn.Server(config)
        install_redaction()
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def tidings(self) -> Any:
        return self.app.state.tidings

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def call(self, coro: Any, timeout: float = 10) -> Any:
        """Run a coroutine on the server's loop (to reach its objects safely)."""
        loop = self.server_loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    @property
    def server_loop(self) -> asyncio.AbstractEventLoop:
        return self.tidings._loop


def make_server(
    tmp_path: Path,
    collections: Any = None,
    broker: Any = None,
    uvicorn_overrides: Any = None,
    hooks: Any = None,
    middleware: Any = (),
    tracer_provider: Any = None,
    app: Any = None,
    **settings: Any,
) -> Server:
    """A real uvicorn server of ``create_app``; ``middleware`` classes are added with ``add_middleware``."""
    db = settings.pop("db", None) or f"sqlite:///{tmp_path / 'test.db'}"
    base = dict(db=db, keepalive=15.0, gap_check_interval=0.2, graphiql=True)
    base.update(settings)
    config = Settings(**base)
    asgi = create_app(collections, config, broker=broker, hooks=hooks, tracer_provider=tracer_provider, app=app)
    for cls in middleware:
        asgi.add_middleware(cls)
    # What `tidings serve` runs, bar where it listens and how much it logs.
    uv = uvicorn_options(config, **(uvicorn_overrides or {}))
    for own in ("host", "port", "log_level"):
        del uv[own]
    server = Server(asgi, free_port(), **uv)
    _capture_loop(asgi)
    server.start()
    return server


def _capture_loop(app: Any) -> None:
    tidings = app.state.tidings
    original = tidings.start

    async def start() -> None:
        tidings._loop = asyncio.get_running_loop()
        await original()

    tidings.start = start


async def wait_subscribers(server: Server, n: int, *, exact: bool = False, timeout: float = 5.0) -> None:
    """Wait until the server holds ``n`` live subscriptions (at least ``n``, or exactly with ``exact``)."""
    deadline = time.monotonic() + timeout
    while True:
        count = server.tidings.dispatcher.subscriber_count
        if count == n or (count > n and not exact):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{count} subscriptions registered, waiting for {'exactly ' if exact else ''}{n}")
        await asyncio.sleep(0.01)


async def subscribed(
    server: Server, op_id: str, query: str, variables: dict[str, Any] | None = None, *, n: int = 1
) -> WS:
    """A graphql-transport-ws connection to ``server`` that subscribed ``query``, once the server holds ``n``."""
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe(op_id, query, variables)
    await wait_subscribers(server, n)
    return ws


async def wait_channel_subscribers(server: Server, n: int, timeout: float = 5.0) -> None:
    """Wait until the server holds at least ``n`` channelEvents subscriptions."""
    deadline = time.monotonic() + timeout
    while server.tidings.channels.subscriber_count < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{server.tidings.channels.subscriber_count} channel subscriptions, waiting for {n}")
        await asyncio.sleep(0.01)


async def until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` is true, polling every 10 ms; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def gql_post(client: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None, **kw: Any) -> Any:
    response = await client.post("/graphql", json={"query": query, "variables": variables or {}}, **kw)
    return response.json()
