"""Redis pub/sub broker, for several server processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aioredis


class RedisBroker:
    """Doorbells over Redis PUBLISH/SUBSCRIBE.

    Redis drops pub/sub messages for slow or disconnected subscribers; that
    is acceptable here because the dispatcher fills gaps from the event log.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: aioredis.Redis | None = None

    async def start(self) -> None:
        self._client = aioredis.from_url(self.url)
        await self._client.ping()

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise RuntimeError("RedisBroker.start() was not called")
        return self._client

    async def publish(self, channel: str, message: bytes) -> None:
        await self.client.publish(channel, message)

    async def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(channel)
        try:
            async for item in pubsub.listen():
                if item.get("type") == "message":
                    yield item["data"]
        finally:
            await pubsub.unsubscribe(channel)
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
