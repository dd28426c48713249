"""Channel numbers and history in this process's memory: one process, the memory broker."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from tidings.pubsub.base import Broker
from tidings.pubsub.channel_store import Entry


class MemoryChannelStore:
    """One process: numbers and history in memory; presence needs no shared copy."""

    is_shared = False

    def __init__(self, broker: Broker, topic: str, *, clock: Any = time.monotonic) -> None:
        self.broker = broker
        self.topic = topic
        self.clock = clock
        self._seq = 0  # channels without history share one increasing counter
        self._seqs: dict[str, int] = {}
        self._history: dict[str, deque[tuple[int, float, bytes]]] = {}

    async def start(self) -> None:
        return None

    async def publish_event(self, key: str, body: bytes, keep: int, keep_seconds: float) -> int:
        if keep:
            seq = self._seqs[key] = self._seqs.get(key, 0) + 1
            message = b"%d|%b" % (seq, body)
            kept = self._history.get(key)
            if kept is None or kept.maxlen != keep:
                kept = self._history[key] = deque(kept or (), maxlen=keep)
            now = self.clock()
            kept.append((seq, now, message))
            while kept and kept[0][1] < now - keep_seconds:
                kept.popleft()
        else:
            self._seq += 1
            seq = self._seq
            message = b"%d|%b" % (seq, body)
        await self.broker.publish(self.topic, message)
        return seq

    async def history(self, key: str, after: int, keep_seconds: float) -> tuple[list[bytes], bool]:
        head = self._seqs.get(key, 0)
        oldest = self.clock() - keep_seconds
        kept = [(seq, m) for seq, at, m in self._history.get(key, ()) if seq > after and at >= oldest]
        complete = after >= head or (bool(kept) and kept[0][0] == after + 1)
        return [m for _, m in kept], complete

    async def publish_presence(self, body: bytes) -> None:
        await self.broker.publish(self.topic, b"p|" + body)

    async def put_entry(self, key: str, entry: Entry) -> None:
        return None

    async def remove_entries(self, key: str, connections: Iterable[str]) -> None:
        return None

    async def load(self, key: str) -> list[Entry]:
        return []

    async def heartbeat(self, keys: Iterable[str]) -> None:
        return None

    async def dead(self, processes: Iterable[str]) -> set[str]:
        return set()

    async def close(self) -> None:
        return None
