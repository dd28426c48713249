"""PostgreSQL LISTEN/NOTIFY broker: several server processes on one database, no Redis.

Each subscription holds a dedicated connection that LISTENs; publishing is a
``pg_notify`` on a small pool. PostgreSQL delivers a NOTIFY only to connections
listening when it commits, so a listener that was down missed its doorbells: as
with Redis, the subscription raises ``BrokerUnavailable`` and the dispatcher
subscribes again, then reads the gap from the event log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import orjson

from tidings.pubsub.base import BrokerUnavailable
from tidings.pubsub.postgres_channels import MAX_PAYLOAD, PostgresChannelStore

_LOST = object()
_CLOSED = object()
_FAULTS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)


def asyncpg_url(url: str) -> str:
    """``postgresql+asyncpg://`` (SQLAlchemy's spelling) as asyncpg takes it."""
    for prefix in ("postgresql+asyncpg://", "postgres+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url.removeprefix(prefix)
    return url


def fit(message: bytes, limit: int = MAX_PAYLOAD) -> bytes:
    """``message``; for a doorbell over ``limit`` bytes only its ``seq``: the dispatcher reads the rest from the log."""
    if len(message) <= limit:
        return message
    try:
        seq = orjson.loads(message)["seq"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"A {len(message)}-byte message exceeds NOTIFY's limit and is not a doorbell") from exc
    return orjson.dumps({"seq": seq})


class PostgresBroker:
    """Doorbells over PostgreSQL NOTIFY.

    ``health_interval``: an idle listener checks its connection this often
    (a query bounded by ``connect_timeout``), so a stalled or silently dropped
    server is noticed and the dispatcher reconnects. Each subscription buffers
    at most ``max_backlog`` messages; beyond, it drops (the log fills the gap).
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 2.0,
        health_interval: float = 5.0,
        max_backlog: int = 10_000,
        pool_size: int = 4,
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.health_interval = health_interval
        self.max_backlog = max_backlog
        self.pool_size = pool_size
        self.dropped = 0
        self._pool: asyncpg.Pool | None = None
        self._listeners: set[tuple[asyncpg.Connection, asyncio.Queue[object]]] = set()

    async def start(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                asyncpg_url(self.url),
                min_size=1,
                max_size=self.pool_size,
                timeout=self.connect_timeout,
                command_timeout=self.connect_timeout,
                server_settings={"application_name": "tidings broker notify"},
            )
        except _FAULTS as exc:
            raise BrokerUnavailable(f"PostgreSQL broker cannot connect: {exc}") from exc

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("PostgresBroker.start() was not called")
        return self._pool

    async def publish(self, channel: str, message: bytes) -> None:
        payload = fit(message).decode()
        try:
            try:
                await self._notify(channel, payload)
            except _FAULTS:
                # Pooled connections from before a server restart (or a terminated backend)
                # fail once: replace them all, and one more try takes a fresh connection
                # (or fails fast if the server is down). The caller bounds the time.
                await self.pool.expire_connections()
                await self._notify(channel, payload)
        except _FAULTS as exc:
            raise BrokerUnavailable(f"PostgreSQL NOTIFY failed: {exc}") from exc

    async def _notify(self, channel: str, payload: str) -> None:
        async with self.pool.acquire(timeout=self.connect_timeout) as conn:
            await conn.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def ping(self) -> None:
        try:
            async with self.pool.acquire(timeout=self.connect_timeout) as conn:
                await conn.fetchval("SELECT 1", timeout=self.connect_timeout)
        except _FAULTS as exc:
            raise BrokerUnavailable(f"PostgreSQL broker unreachable: {exc}") from exc

    async def subscribe(self, channel: str, *, on_ready: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[object] = asyncio.Queue(self.max_backlog + 1)  # + 1: room for _LOST or _CLOSED

        def notified(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            if queue.qsize() >= self.max_backlog:
                self.dropped += 1
            else:
                queue.put_nowait(payload.encode())

        def lost(_conn: Any) -> None:
            _put_last(queue, _LOST)

        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                asyncpg_url(self.url),
                timeout=self.connect_timeout,
                server_settings={"application_name": "tidings broker listen"},
            )
        except _FAULTS as exc:
            raise BrokerUnavailable(f"PostgreSQL LISTEN cannot connect: {exc}") from exc
        entry = (conn, queue)
        self._listeners.add(entry)
        try:
            try:
                conn.add_termination_listener(lost)
                await conn.add_listener(channel, notified)
            except _FAULTS as exc:
                raise BrokerUnavailable(f"PostgreSQL LISTEN failed: {exc}") from exc
            if on_ready is not None:
                on_ready()  # LISTEN has returned: every NOTIFY committed from now on reaches us
            while True:
                try:
                    # Not wait_for: on Python 3.11 it swallows a cancellation that lands as a
                    # message arrives, and the listener then outlives its cancelled task.
                    async with asyncio.timeout(self.health_interval):
                        item = await queue.get()
                except TimeoutError:
                    try:
                        await conn.fetchval("SELECT 1", timeout=self.connect_timeout)
                    except _FAULTS as exc:
                        raise BrokerUnavailable(f"PostgreSQL listener unresponsive: {exc}") from exc
                    continue
                if item is _CLOSED:
                    return
                if item is _LOST:
                    raise BrokerUnavailable("PostgreSQL listener connection lost")
                assert isinstance(item, bytes)
                yield item
        finally:
            self._listeners.discard(entry)
            # No UNLISTEN: the connection may be dead or stalled; dropping it ends the LISTEN.
            conn.terminate()

    def channel_store(self, topic: str, process: str, ttl: float) -> PostgresChannelStore:

        return PostgresChannelStore(self, topic, process, ttl)

    async def close(self) -> None:
        for conn, queue in list(self._listeners):
            _put_last(queue, _CLOSED)
            conn.terminate()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.terminate()  # never waits on an unreachable server


def _put_last(queue: asyncio.Queue[object], item: object) -> None:
    with contextlib.suppress(asyncio.QueueFull):
        queue.put_nowait(item)
