"""Where channel sequence numbers, history and presence entries live: the ``ChannelStore``
interface each broker backend hands back, and its records. On the broker topic a channel
event is ``<seq>|<json>``, a presence change ``p|<json>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One connection in a channel: ``connection`` is ``<process>.<number>``."""

    connection: str
    sub: str | None
    meta: Any  # JSON

    @property
    def member(self) -> str:
        return self.sub if self.sub is not None else "#" + self.connection

    @property
    def process(self) -> str:
        return self.connection.rpartition(".")[0]


def split(message: bytes) -> tuple[bytes, bytes]:
    """A topic message's head (its seq, or ``p``) and its JSON body."""
    head, _, body = message.partition(b"|")
    return head, body


class ChannelStore(Protocol):
    @property
    def is_shared(self) -> bool:
        """True when other processes share these numbers and entries: a heartbeat keeps this process's alive."""

    async def start(self) -> None:
        """Prepare (after the broker started) and, when shared, announce this process alive."""

    async def publish_event(self, key: str, body: bytes, keep: int, keep_seconds: float) -> int:
        """Number ``body`` in ``key``'s sequence, keep it (``keep`` > 0) and publish it; the seq."""

    async def history(self, key: str, after: int, keep_seconds: float) -> tuple[list[bytes], bool]:
        """Kept messages of ``key`` with seq > ``after``; and False if some were no longer kept."""

    async def publish_presence(self, body: bytes) -> None: ...

    async def put_entry(self, key: str, entry: Entry) -> None: ...

    async def remove_entries(self, key: str, connections: Iterable[str]) -> None: ...

    async def load(self, key: str) -> list[Entry]: ...

    async def heartbeat(self, keys: Iterable[str]) -> None: ...

    async def dead(self, processes: Iterable[str]) -> set[str]: ...

    async def close(self) -> None: ...


async def living(store: ChannelStore, key: str, entries: list[Entry]) -> list[Entry]:
    """``entries`` without those of dead processes, which are removed from ``key`` on the way."""
    dead = await store.dead({e.process for e in entries})
    if not dead:
        return entries
    await store.remove_entries(key, [e.connection for e in entries if e.process in dead])
    return [e for e in entries if e.process not in dead]
