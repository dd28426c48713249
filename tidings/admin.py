"""Admin operations on live connections, across every server process: list them, close one.

With the memory broker there is one process and its connections are the answer.
With a shared broker (Redis, PostgreSQL) every process listens on ``<--channel>:admin``:
a listing is broadcast, each other process answers with its connections (in chunks that
fit a PostgreSQL NOTIFY), and the caller collects the answers until every process it
knows of has answered or ``timeout`` passes. A close is broadcast; the process named in
the connection's id closes it and acknowledges. Processes greet each other when they
start and say goodbye when they stop; one that vanished is forgotten when it misses an
answer.
"""

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import strawberry
from strawberry.types import Info

from tidings.errors import Forbidden, NotFound
from tidings.pubsub import Broker, MemoryBroker
from tidings.resolvers.context import Context
from tidings.transports.common import TransportContext

__all__ = ["Admin", "AdminConnection", "admin_fields"]

logger = logging.getLogger("tidings.admin")

_CHUNK_BYTES = 6000  # rows per answer: well inside a PostgreSQL NOTIFY's 8000-byte payload


class Admin:
    """This process's side of the admin channel, and the listing and closing it serves."""

    def __init__(self, transport: TransportContext, broker: Broker, channel: str, *, timeout: float = 1.0) -> None:
        self.transport = transport
        self.broker = broker
        self.channel = f"{channel}:admin"
        self.timeout = timeout
        self.shared = not isinstance(broker, MemoryBroker)
        self.instance = transport.instance
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self.peers: set[str] = set()  # other processes' instances, as last heard of
        self._listings: dict[str, _Listing] = {}
        self._closes: dict[str, asyncio.Future[bool]] = {}
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        if not self.shared:
            return
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._consume(ready), name="tidings-admin")
        # Bounded: an unreachable broker must not hold the start; the consumer keeps trying.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), self.timeout)
        await self._publish({"op": "hello", "from": self.instance})

    async def close(self) -> None:
        if self._task is None:
            return
        # Best effort, briefly: a broker that is down must not hold the shutdown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.1):
                await self._publish({"op": "bye", "from": self.instance})
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _consume(self, ready: asyncio.Event) -> None:
        failures = 0
        while True:
            messages = self.broker.subscribe(self.channel, on_ready=ready.set)
            try:
                async for message in messages:
                    failures = 0
                    try:
                        await self._handle(orjson.loads(message))
                    except Exception:
                        logger.warning("An admin message could not be handled", exc_info=True)
                return  # the broker closed
            except Exception as exc:
                logger.warning("Admin channel lost (%s); subscribing again", exc)
            finally:
                aclose = getattr(messages, "aclose", None)
                if aclose is not None:
                    # Bounded: a stalled broker must not hold a shutdown (the broker's close drops it).
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(0.25):
                            await aclose()
            failures += 1
            await asyncio.sleep(min(1.0, 0.05 * 2 ** min(failures, 5)) * random.uniform(0.5, 1.0))

    async def _publish(self, message: dict[str, Any]) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                await self.broker.publish(self.channel, orjson.dumps(message))
        except Exception as exc:
            logger.warning("Admin channel: cannot publish (%s)", exc)
            return False
        return True

    async def _handle(self, message: dict[str, Any]) -> None:
        op, sender = message.get("op"), str(message.get("from"))
        if sender == self.instance:
            return  # our own broadcast
        if op == "hello":
            self.peers.add(sender)
            await self._publish({"op": "here", "from": self.instance})
        elif op == "here":
            self.peers.add(sender)
        elif op == "bye":
            self.peers.discard(sender)
        elif op == "list":
            chunks = _chunks(self.local())
            for n, rows in enumerate(chunks, 1):
                reply = {"op": "listed", "from": self.instance, "request": message["request"], "last": n == len(chunks)}
                await self._publish({**reply, "rows": rows})
        elif op == "listed":
            self.peers.add(sender)
            listing = self._listings.get(message["request"])
            if listing is not None:
                listing.rows += message["rows"]
                if message["last"]:
                    listing.answered.add(sender)
                    if self.peers <= listing.answered:
                        listing.complete.set()
        elif op == "close":
            if str(message["id"]).startswith(f"{self.instance}-"):
                found = self.close_local(str(message["id"]), str(message["reason"]))
                await self._publish(
                    {"op": "closed", "from": self.instance, "request": message["request"], "found": found}
                )
        elif op == "closed":
            future = self._closes.get(message["request"])
            if future is not None and not future.done():
                future.set_result(bool(message["found"]))

    # -- operations --------------------------------------------------------------

    def local(self) -> list[dict[str, Any]]:
        """This process's open connections, as rows."""
        return [
            {
                "id": conn.stats.id,
                "transport": conn.stats.transport,
                "sub": conn.stats.sub,
                "account": conn.stats.account,
                "subscriptions": len(conn.streams),
                "openedAt": conn.stats.opened_at,
                "queueDepth": conn.queue.pending,
                "process": self.process,
            }
            for conn in list(self.transport.connections)
        ]

    def close_local(self, connection_id: str, reason: str) -> bool:
        for conn in list(self.transport.connections):
            if conn.stats.id == connection_id:
                logger.info(
                    "Admin closed connection %s: %s",
                    connection_id,
                    reason,
                    extra={"event": "connection_closed_by_admin", "connection_id": connection_id, "reason": reason},
                )
                conn.disconnect(reason)
                return True
        return False

    async def connections(self) -> list[dict[str, Any]]:
        """Every process's open connections (those that answer within ``timeout``)."""
        rows = self.local()
        if not self.shared:
            return rows
        request = uuid.uuid4().hex
        listing = self._listings[request] = _Listing()
        try:
            expected = set(self.peers)
            if not expected:
                listing.complete.set()
            if await self._publish({"op": "list", "from": self.instance, "request": request}):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listing.complete.wait(), self.timeout)
            missing = expected - listing.answered
            if missing:
                logger.warning("Admin listing: no answer from %d process(es) within %.1f s", len(missing), self.timeout)
                self.peers -= missing
        finally:
            del self._listings[request]
        return rows + listing.rows

    async def close_connection(self, connection_id: str, reason: str) -> bool:
        """Close the connection ``connection_id``, in whichever process holds it; False if none does."""
        if connection_id.startswith(f"{self.instance}-") or not self.shared:
            return self.close_local(connection_id, reason)
        request = uuid.uuid4().hex
        future = self._closes[request] = asyncio.get_running_loop().create_future()
        try:
            message = {"op": "close", "from": self.instance, "request": request, "id": connection_id, "reason": reason}
            if not await self._publish(message):
                return False
            try:
                return await asyncio.wait_for(future, self.timeout)
            except TimeoutError:
                return False
        finally:
            del self._closes[request]


def _chunks(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``rows`` cut into answers of at most ``_CHUNK_BYTES`` of JSON each (at least one, maybe empty)."""
    chunks: list[list[dict[str, Any]]] = [[]]
    size = 0
    for row in rows:
        length = len(orjson.dumps(row)) + 1
        if chunks[-1] and size + length > _CHUNK_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(row)
        size += length
    return chunks


@dataclasses.dataclass
class _Listing:
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    answered: set[str] = dataclasses.field(default_factory=set)
    complete: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


# -- GraphQL -----------------------------------------------------------------------


@strawberry.type(description="An open WebSocket connection or SSE stream, in one of the server's processes.")
class AdminConnection:
    id: strawberry.ID
    transport: str = strawberry.field(description="ws or sse")
    sub: str | None
    account: str | None
    subscriptions: int = strawberry.field(description="operations streaming on it")
    opened_at: dt.datetime
    queue_depth: int = strawberry.field(description="frames waiting in its send queue")
    process: str = strawberry.field(description="host:pid of the process holding it")


def _admin(info: Info) -> None:
    ctx: Context = info.context
    if not ctx.services.authorizer.is_admin(ctx.principal):
        raise Forbidden("Only the admin role may list or close connections")


def admin_fields(admin: Callable[[], Admin] | None) -> tuple[list[Any], list[Any]]:
    """The ``connections`` query and ``closeConnection`` mutation; ``admin`` gives the app's ``Admin``
    (built after the schema), None for the exported SDL only."""

    async def connections(info: Info) -> list[AdminConnection]:
        _admin(info)
        if admin is None:
            return []
        started = time.monotonic()
        rows = await admin().connections()
        logger.debug("Listed %d connections in %.3f s", len(rows), time.monotonic() - started)
        return [
            AdminConnection(
                id=strawberry.ID(row["id"]),
                transport=row["transport"],
                sub=row["sub"],
                account=row["account"],
                subscriptions=row["subscriptions"],
                opened_at=dt.datetime.fromtimestamp(row["openedAt"], dt.UTC),
                queue_depth=row["queueDepth"],
                process=row["process"],
            )
            for row in rows
        ]

    async def close_connection(info: Info, id: strawberry.ID, reason: str = "Closed by an administrator") -> bool:  # noqa: A002
        _admin(info)
        if admin is None or not await admin().close_connection(str(id), reason):
            raise NotFound(f"No open connection with id {id!r}", id=str(id))
        return True

    return (
        [strawberry.field(connections, description="Admin role: every open connection, in every process.")],
        [
            strawberry.mutation(
                close_connection,
                name="closeConnection",
                description=(
                    "Admin role: close a connection (WebSocket: code 1008 with the reason; SSE: the stream ends). "
                    "NOT_FOUND if no process holds it."
                ),
            )
        ],
    )
