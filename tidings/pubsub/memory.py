"""In-process broker: one bounded queue per subscriber."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

from tidings.pubsub.base import BrokerUnavailable
from tidings.pubsub.memory_channels import MemoryChannelStore

_CLOSED = object()


class MemoryBroker:
    """The embedded default.

    Each subscriber has a bounded queue (``max_backlog``). On overflow the
    message is dropped for that subscriber: brokers are doorbells, and a
    dispatcher recovers dropped news from the event log. ``drop`` is a test
    hook deciding, per message, to lose it on purpose.
    """

    def __init__(self, *, max_backlog: int = 10_000, drop: Callable[[bytes], bool] | None = None) -> None:
        self.max_backlog = max_backlog
        self.drop = drop
        self.dropped = 0
        self._queues: dict[str, set[asyncio.Queue[object]]] = defaultdict(set)
        self._closed = False

    async def start(self) -> None:
        self._closed = False

    async def publish(self, channel: str, message: bytes) -> None:
        if self.drop is not None and self.drop(message):
            self.dropped += 1
            return
        for queue in self._queues.get(channel, ()):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                self.dropped += 1

    async def ping(self) -> None:
        if self._closed:
            raise BrokerUnavailable("The memory broker is closed")

    async def subscribe(self, channel: str, *, on_ready: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[object] = asyncio.Queue(self.max_backlog)
        self._queues[channel].add(queue)
        if on_ready is not None:
            on_ready()
        try:
            while not self._closed:
                item = await queue.get()
                if item is _CLOSED:
                    return
                assert isinstance(item, bytes)
                yield item
        finally:
            self._queues[channel].discard(queue)

    def channel_store(self, topic: str, process: str, ttl: float) -> MemoryChannelStore:
        return MemoryChannelStore(self, topic)

    async def close(self) -> None:
        self._closed = True
        for queues in self._queues.values():
            for queue in queues:
                # Make room so the sentinel always lands: a closing broker may drop news.
                while queue.full():
                    queue.get_nowait()
                queue.put_nowait(_CLOSED)
