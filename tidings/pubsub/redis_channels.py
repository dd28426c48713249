"""Channel numbers, history and presence entries in Redis (the Redis broker), shared by every
process; a Lua script numbers, keeps and publishes an event in one step, so history order is
publish order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import orjson

from tidings.pubsub.base import BrokerUnavailable
from tidings.pubsub.channel_store import Entry, living, split

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from redis.commands.core import AsyncScript


class _Broker(Protocol):
    """What the store needs of its Redis broker (tidings.pubsub.redis.RedisBroker)."""

    @property
    def client(self) -> aioredis.Redis: ...

    async def publish(self, channel: str, message: bytes) -> None: ...


# KEYS[1] the seq counter, KEYS[2] the history list; ARGV body, keep, keep ms, topic, counter ttl ms.
_PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
local message = seq .. '|' .. ARGV[1]
local keep = tonumber(ARGV[2])
if keep > 0 then
  redis.call('RPUSH', KEYS[2], message)
  redis.call('LTRIM', KEYS[2], -keep, -1)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
redis.call('PUBLISH', ARGV[4], message)
return seq
"""

_COUNTER_TTL_MS = 86_400_000  # a channel idle for a day starts its numbers again


class RedisChannelStore:
    """Several processes: numbers, history and presence entries in Redis.

    Each process refreshes ``<topic>:alive:<process>`` every ``ttl / 3`` seconds;
    an entry whose process key expired belongs to a process that died without
    leaving, and is removed by whichever process sweeps first.
    """

    is_shared = True

    def __init__(self, broker: _Broker, topic: str, process: str, ttl: float) -> None:
        self.broker = broker
        self.topic = topic
        self.process = process
        self.ttl_ms = max(int(ttl * 1000), 1)
        self._script: AsyncScript | None = None

    @property
    def client(self) -> aioredis.Redis:
        return self.broker.client

    async def start(self) -> None:
        await self.heartbeat(())

    def _hash(self, key: str) -> str:
        return f"{self.topic}:presence:{key}"

    def _alive(self, process: str) -> str:
        return f"{self.topic}:alive:{process}"

    async def publish_event(self, key: str, body: bytes, keep: int, keep_seconds: float) -> int:
        counter = f"{self.topic}:seq:{key}"
        if self._script is None:
            self._script = self.client.register_script(_PUBLISH)
        try:
            seq = await self._script(
                keys=[counter, f"{self.topic}:history:{key}"],
                args=[body, keep, max(int(keep_seconds * 1000), 1), self.topic, _COUNTER_TTL_MS],
            )
        except Exception as exc:
            raise BrokerUnavailable(f"Redis publish failed: {exc}") from exc
        return int(seq)

    async def history(self, key: str, after: int, keep_seconds: float) -> tuple[list[bytes], bool]:
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.get(f"{self.topic}:seq:{key}")
            pipe.lrange(f"{self.topic}:history:{key}", 0, -1)
            pipe.time()
            head_raw, items, (secs, micros) = await pipe.execute()
        head = int(head_raw or 0)
        oldest_ms = (secs + micros / 1e6 - keep_seconds) * 1000
        kept: list[tuple[int, bytes]] = []
        for message in items:
            seq_raw, body = split(message)
            seq = int(seq_raw)
            if seq > after and orjson.loads(body)["m"] >= oldest_ms:
                kept.append((seq, message))
        complete = after >= head or (bool(kept) and kept[0][0] == after + 1)
        return [m for _, m in kept], complete

    async def publish_presence(self, body: bytes) -> None:
        await self.broker.publish(self.topic, b"p|" + body)

    async def put_entry(self, key: str, entry: Entry) -> None:
        value = orjson.dumps({"u": entry.sub, "m": entry.meta})
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(self._hash(key), entry.connection, value)
            pipe.pexpire(self._hash(key), self.ttl_ms * 4)
            await pipe.execute()

    async def remove_entries(self, key: str, connections: Iterable[str]) -> None:
        names = list(connections)
        if names:
            await self.client.hdel(self._hash(key), *names)

    async def load(self, key: str) -> list[Entry]:
        raw = await self.client.hgetall(self._hash(key))
        entries = []
        for connection, value in raw.items():
            data = orjson.loads(value)
            name = connection.decode() if isinstance(connection, bytes) else connection
            entries.append(Entry(name, data.get("u"), data.get("m")))
        return await living(self, key, entries)

    async def heartbeat(self, keys: Iterable[str]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self._alive(self.process), b"1", px=self.ttl_ms)
            for key in keys:
                pipe.pexpire(self._hash(key), self.ttl_ms * 4)
            await pipe.execute()

    async def dead(self, processes: Iterable[str]) -> set[str]:
        names = sorted(p for p in processes if p != self.process)
        if not names:
            return set()
        values = await self.client.mget([self._alive(p) for p in names])
        return {p for p, v in zip(names, values, strict=True) if v is None}

    async def close(self) -> None:
        # A graceful stop: the others need not wait for the TTL. Briefly: a stalled Redis
        # must not hold the shutdown (the TTL ends this process's entries anyway).
        with contextlib.suppress(Exception):
            async with asyncio.timeout(0.25):
                await self.client.delete(self._alive(self.process))
