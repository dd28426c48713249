"""Hooks: application code reacting to realtime activity (connections, operations, writes, publishes).

Before-hooks (``before_write``, ``on_publish``) run in the caller's request and may refuse
it: a ``TidingsError`` they raise is that caller's GraphQL error as is, any other exception
is logged at WARNING with its traceback and answered ``INTERNAL_SERVER_ERROR``. After-hooks
(``on_connect``, ``on_disconnect``, ``on_subscribe``, ``on_unsubscribe``, ``after_commit``)
run off the request path, in order, from one bounded queue drained by one task: a slow
hook never holds a response, and one that raises is logged at WARNING and forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from weakref import WeakSet

from tidings.auth.principal import ANONYMOUS, Principal
from tidings.errors import TidingsError
from tidings.events import ChangeEvent

__all__ = ["ConnectionInfo", "HookRunner", "Hooks", "OperationInfo", "PublishInfo", "WriteInfo"]

logger = logging.getLogger("tidings.hooks")

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """A WebSocket or an SSE stream, as a hook sees it."""

    id: str | None  # the id the logs and the admin API give it: ``<instance>-<n>``
    transport: str  # "ws" or "sse"
    principal: Principal


@dataclasses.dataclass(frozen=True, slots=True)
class OperationInfo:
    """A subscription (or live query) that started or ended on a connection."""

    connection: ConnectionInfo
    op_id: str
    query: str
    variables: Mapping[str, Any] | None
    operation_name: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class WriteInfo:
    """A mutation about to write: ``input`` holds the caller's values by column (a copy)."""

    collection: str
    action: str  # "create", "update", "delete" or "restore"
    input: Mapping[str, Any]
    principal: Principal
    id: str | None  # None for a create


@dataclasses.dataclass(frozen=True, slots=True)
class PublishInfo:
    """A client's ``publish``, after its channel rules passed; ``data`` as the previous hook left it."""

    channel: str
    type: str
    data: Any
    principal: Principal


class Hooks:
    """A registry of async callables; each decorator may be used many times (run in order).

    >>> hooks = Hooks()
    >>> @hooks.on_connect
    ... async def greet(conn: ConnectionInfo) -> None: ...
    """

    def __init__(self) -> None:
        self.connect: list[Callable[[ConnectionInfo], Awaitable[Any]]] = []
        self.disconnect: list[Callable[[ConnectionInfo], Awaitable[Any]]] = []
        self.subscribe: list[Callable[[OperationInfo], Awaitable[Any]]] = []
        self.unsubscribe: list[Callable[[OperationInfo], Awaitable[Any]]] = []
        self.write: list[Callable[[WriteInfo], Awaitable[Any]]] = []
        self.commit: list[Callable[[ChangeEvent], Awaitable[Any]]] = []
        self.publish: list[Callable[[PublishInfo], Awaitable[Any]]] = []

    def on_connect(self, fn: F) -> F:
        """``async fn(conn: ConnectionInfo)``: a connection was authenticated (WebSocket ack, SSE stream open)."""
        self.connect.append(fn)
        return fn

    def on_disconnect(self, fn: F) -> F:
        """``async fn(conn: ConnectionInfo)``: a connection that was announced ended, for whatever reason."""
        self.disconnect.append(fn)
        return fn

    def on_subscribe(self, fn: F) -> F:
        """``async fn(op: OperationInfo)``: a subscription or live query started streaming."""
        self.subscribe.append(fn)
        return fn

    def on_unsubscribe(self, fn: F) -> F:
        """``async fn(op: OperationInfo)``: it stopped (completed, failed, or its connection ended)."""
        self.unsubscribe.append(fn)
        return fn

    def before_write(self, fn: F) -> F:
        """``async fn(write: WriteInfo)``: raise a ``TidingsError`` to refuse the write with it."""
        self.write.append(fn)
        return fn

    def after_commit(self, fn: F) -> F:
        """``async fn(event: ChangeEvent)``: a write was committed (and handed to the subscribers)."""
        self.commit.append(fn)
        return fn

    def on_publish(self, fn: F) -> F:
        """``async fn(pub: PublishInfo)``: raise to refuse; return new data to publish it instead (None: keep)."""
        self.publish.append(fn)
        return fn


def connection_info(sink: Any) -> ConnectionInfo:
    """A transport connection (a ``Sink`` with ``stats`` and ``principal``) as hooks see it."""
    stats = getattr(sink, "stats", None)
    principal = getattr(sink, "principal", None)
    return ConnectionInfo(
        getattr(stats, "id", None), str(getattr(stats, "transport", "")), principal if principal else ANONYMOUS
    )


class HookRunner:
    """Runs one ``Hooks``: before-hooks inline, after-hooks through a queue of ``max_pending``.

    Overflow: when ``max_pending`` after-hook calls already wait (the hooks are slower than
    the traffic), a new one is dropped and counted in ``dropped``, with a WARNING at most
    once a second; requests and deliveries never wait for hooks.
    """

    def __init__(self, hooks: Hooks | None = None, *, max_pending: int = 10_000) -> None:
        self.hooks = hooks or Hooks()
        self._queue: asyncio.Queue[tuple[str, Callable[[Any], Awaitable[Any]], Any]] = asyncio.Queue(max_pending)
        self._task: asyncio.Task[None] | None = None
        self._announced: WeakSet[Any] = WeakSet()  # connections whose on_connect was queued
        self.dropped = 0
        self._warned_at = 0.0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="tidings-hooks")

    async def close(self, timeout: float = 1.0) -> None:
        """Give queued after-hooks ``timeout`` seconds to run, then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # -- after-hooks ---------------------------------------------------------------

    def _notify(self, name: str, callbacks: list[Callable[[Any], Awaitable[Any]]], arg: Any) -> None:
        for fn in callbacks:
            try:
                self._queue.put_nowait((name, fn, arg))
            except asyncio.QueueFull:
                self.dropped += 1
                now = time.monotonic()
                if now - self._warned_at >= 1.0:
                    self._warned_at = now
                    logger.warning(
                        "Hook queue full (%d waiting): dropped %s hook calls so far; the hooks are too slow",
                        self._queue.maxsize,
                        self.dropped,
                    )

    async def _drain(self) -> None:
        while True:
            name, fn, arg = await self._queue.get()
            try:
                await fn(arg)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("The %s hook %s raised", name, getattr(fn, "__qualname__", fn), exc_info=True)
            finally:
                self._queue.task_done()

    def connected(self, sink: Any) -> None:
        if not (self.hooks.connect or self.hooks.disconnect):
            return
        self._announced.add(sink)
        if self.hooks.connect:
            self._notify("on_connect", self.hooks.connect, connection_info(sink))

    def disconnected(self, sink: Any) -> None:
        if sink not in self._announced:
            return  # never connected (refused at connection_init): no on_connect, so no on_disconnect
        self._announced.discard(sink)
        if self.hooks.disconnect:
            self._notify("on_disconnect", self.hooks.disconnect, connection_info(sink))

    def subscribed(self, sink: Any, op_id: str, request: Any) -> None:
        if self.hooks.subscribe:
            self._notify("on_subscribe", self.hooks.subscribe, _operation(sink, op_id, request))

    def unsubscribed(self, sink: Any, op_id: str, request: Any) -> None:
        if self.hooks.unsubscribe:
            self._notify("on_unsubscribe", self.hooks.unsubscribe, _operation(sink, op_id, request))

    def committed(self, event: ChangeEvent) -> None:
        if self.hooks.commit:
            self._notify("after_commit", self.hooks.commit, event)

    # -- before-hooks ----------------------------------------------------------------

    async def before_write(self, write: WriteInfo) -> None:
        for fn in self.hooks.write:
            await _guarded("before_write", fn, write)

    async def publishing(self, principal: Principal, channel: str, type: str, data: Any) -> Any:  # noqa: A002
        """The data to publish, as the ``on_publish`` hooks leave it."""
        for fn in self.hooks.publish:
            changed = await _guarded("on_publish", fn, PublishInfo(channel, type, data, principal))
            if changed is not None:
                data = changed
        return data


class CommitNotifier:
    """The resolvers' publisher: hands each committed event on, then queues ``after_commit``."""

    def __init__(self, publisher: Any, runner: HookRunner) -> None:
        self.publisher = publisher
        self.runner = runner

    async def publish(self, event: ChangeEvent) -> None:
        await self.publisher.publish(event)
        self.runner.committed(event)

    async def publish_batch(self, events: Sequence[ChangeEvent]) -> None:
        await self.publisher.publish_batch(events)
        for event in events:
            self.runner.committed(event)


async def _guarded(name: str, fn: Callable[[Any], Awaitable[Any]], arg: Any) -> Any:
    try:
        return await fn(arg)
    except TidingsError:
        raise  # the hook's own answer to the caller
    except Exception as exc:
        logger.warning("The %s hook %s raised", name, getattr(fn, "__qualname__", fn), exc_info=True)
        raise TidingsError("Internal server error") from exc  # INTERNAL_SERVER_ERROR, never the hook's text


def _operation(sink: Any, op_id: str, request: Any) -> OperationInfo:
    return OperationInfo(
        connection_info(sink),
        op_id,
        str(getattr(request, "query", "")),
        getattr(request, "variables", None),
        getattr(request, "operation_name", None),
    )
