"""Redis pub/sub broker, for several server processes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tidings.pubsub.base import BrokerUnavailable
from tidings.pubsub.redis_channels import RedisChannelStore


class RedisBroker:
    """Doorbells over Redis PUBLISH/SUBSCRIBE.

    Redis drops pub/sub messages for slow or disconnected subscribers; that
    is acceptable here because the dispatcher fills gaps from the event log.
    redis-py's own retries are off: a silent reconnect would resubscribe
    without the dispatcher knowing it missed messages, and a retried publish
    holds a mutation's response. The dispatcher owns reconnection.
    """

    def __init__(self, url: str, *, connect_timeout: float = 2.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._client: aioredis.Redis | None = None

    async def start(self) -> None:
        self._client = aioredis.from_url(
            self.url, retry=Retry(NoBackoff(), 0), socket_connect_timeout=self.connect_timeout
        )
        await self._client.ping()

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("RedisBroker.start() was not called")
        return self._client

    async def publish(self, channel: str, message: bytes) -> None:
        try:
            try:
                await self.client.publish(channel, message)
            except aioredis.ConnectionError:
                # A pooled connection from before a Redis restart fails once and is dropped;
                # one more try takes a fresh connection (or fails fast if Redis is down).
                await self.client.publish(channel, message)
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"Redis publish failed: {exc}") from exc

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"Redis ping failed: {exc}") from exc

    async def subscribe(self, channel: str, *, on_ready: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(channel)
            async for item in pubsub.listen():
                kind = item.get("type")
                if kind == "message":
                    yield item["data"]
                elif kind == "subscribe" and on_ready is not None:
                    # Redis confirmed SUBSCRIBE: from here on nothing published is missed.
                    on_ready()
        except (RedisError, OSError) as exc:
            raise BrokerUnavailable(f"Redis subscription lost: {exc}") from exc
        finally:
            # No UNSUBSCRIBE: the connection may be dead or stalled, and dropping it
            # ends the subscription anyway. Closing only tears down local state.
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def channel_store(self, topic: str, process: str, ttl: float) -> RedisChannelStore:
        return RedisChannelStore(self, topic, process, ttl)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.aclose()
