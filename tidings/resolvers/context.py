"""Per-request context handed to every resolver as ``info.context``."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any, Protocol

from tidings.auth.principal import ANONYMOUS, Principal
from tidings.events import ChangeEvent

if TYPE_CHECKING:
    from tidings.auth.rules import Authorizer
    from tidings.store import Reader, Store


class Publisher(Protocol):
    async def publish(self, event: ChangeEvent) -> None: ...


class CredentialsHolder(Protocol):
    """A long-lived connection whose credentials a ``renewToken`` may replace."""

    async def renew(self, token: str) -> Principal: ...


@dataclasses.dataclass(slots=True)
class Services:
    """App-wide parts every request uses."""

    store: Store
    publisher: Publisher
    authorizer: Authorizer
    max_limit: int = 1000


@dataclasses.dataclass(slots=True)
class Context:
    services: Services
    principal: Principal = ANONYMOUS
    request: Any = None
    response: Any = None
    connection: CredentialsHolder | None = None
    _reader_stack: contextlib.AsyncExitStack | None = None
    _reader: Reader | None = None
    seq: int | None = None

    async def reader(self) -> Reader:
        """One read snapshot per request, opened on first use."""
        if self._reader is None:
            stack = contextlib.AsyncExitStack()
            self._reader = await stack.enter_async_context(self.services.store.reader())
            self._reader_stack = stack
        return self._reader

    async def close(self) -> None:
        if self._reader is not None:
            self.seq = await self._reader.seq()
        if self._reader_stack is not None:
            stack, self._reader_stack, self._reader = self._reader_stack, None, None
            await stack.aclose()

    # Strawberry's views read these keys off a dict context; keep them reachable.
    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)
