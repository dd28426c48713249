"""Per-request context handed to every resolver as ``info.context``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from tidings.auth.permissions import Permissions
from tidings.auth.principal import ANONYMOUS, Principal
from tidings.errors import NotFound
from tidings.events import ChangeEvent
from tidings.hooks import HookRunner
from tidings.tracing import Tracing

if TYPE_CHECKING:
    from tidings.auth.rules import Authorizer
    from tidings.limits import Limits
    from tidings.store import Reader, Store


DIRECT = "tidings.direct"  # a field's metadata key: its resolver runs as graphql-core's, unwrapped


def transport_only() -> NotFound:
    """Raised by a subscription field's resolver: the transports' engine serves subscriptions, not execution."""
    return NotFound("Subscriptions are served over graphql-transport-ws, graphql-ws and graphql-sse")


class Publisher(Protocol):
    async def publish(self, event: ChangeEvent) -> None: ...

    async def publish_batch(self, events: Sequence[ChangeEvent]) -> None:
        """A commit's events (a transaction's), handed on together: one doorbell, one dispatch pass."""
        ...


class CredentialsHolder(Protocol):
    """A long-lived connection whose credentials a ``renewToken`` may replace."""

    async def renew(self, token: str) -> Principal: ...


@dataclasses.dataclass(slots=True)
class Services:
    """App-wide parts every request uses."""

    store: Store
    publisher: Publisher
    permissions: Permissions  # the one holder of the authorizer: a rules reload swaps it there
    max_limit: int = 1000
    limits: Limits | None = None
    channels: Any = None  # tidings.realtime.channels.Channels, when the app has them
    hooks: HookRunner = dataclasses.field(default_factory=HookRunner)  # the app's tidings.Hooks
    tracing: Tracing = dataclasses.field(default_factory=Tracing)  # OpenTelemetry spans, off by default

    @property
    def authorizer(self) -> Authorizer:
        """The rules in force now (read on each use: a reload may have replaced them)."""
        return self.permissions.current


@dataclasses.dataclass(slots=True)
class Context:
    services: Services
    principal: Principal = ANONYMOUS
    request: Any = None
    response: Any = None
    connection: CredentialsHolder | None = None
    client: Any = None  # who sent it, for rate limits: a WebSocket connection, or an SSE stream
    _reader_stack: contextlib.AsyncExitStack | None = None
    _reader: Reader | None = None
    # Root fields resolve concurrently: the first to ask opens the snapshot while the
    # others wait on this lock, so a request holds one connection and reads one snapshot.
    _reader_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    _closed: bool = False
    seq: int | None = None
    loaders: dict[Any, Any] = dataclasses.field(default_factory=dict)  # relation loaders (tidings.resolvers.relations)
    truncated: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # see snapshot_extensions

    async def reader(self) -> Reader:
        """One read snapshot per request, opened on first use."""
        if self._reader is not None:
            return self._reader
        async with self._reader_lock:
            if self._reader is None:
                if self._closed:
                    raise RuntimeError("The request's read snapshot was already closed")
                stack = contextlib.AsyncExitStack()
                try:
                    reader = await stack.enter_async_context(self.services.store.reader())
                except BaseException:
                    await stack.aclose()
                    raise
                self._reader, self._reader_stack = reader, stack
            return self._reader

    async def close(self) -> None:
        """Record the snapshot's ``seq`` and release its connection; idempotent."""
        # Under the lock: an open still under way finishes first and is closed here.
        async with self._reader_lock:
            self._closed = True
            stack, reader = self._reader_stack, self._reader
            self._reader_stack = self._reader = None
            if stack is None or reader is None:
                return
            try:
                self.seq = await reader.seq()
            finally:
                await stack.aclose()

    async def release(self) -> None:
        """Close the snapshot but let a later ``reader()`` open a new one (long-lived operations)."""
        await self.close()
        async with self._reader_lock:
            self._closed = False

    # Strawberry's views read these keys off a dict context; keep them reachable.
    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)
