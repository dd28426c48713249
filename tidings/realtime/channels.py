"""Channels: ephemeral events and presence on one broker topic (``<channel setting>:channels``),
which every process consumes and hands to its own subscribers by channel key; numbers,
history and presence entries live in the channel store the broker hands back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from tidings.auth.channel_rules import ChannelRules
from tidings.auth.principal import Principal
from tidings.limits import Limits
from tidings.pubsub import Broker
from tidings.pubsub.channel_store import ChannelStore, split
from tidings.pubsub.consumer import consume
from tidings.realtime.channel_access import ChannelAccess
from tidings.realtime.channel_events import ChannelEvents
from tidings.realtime.channel_presence import ChannelPresence

logger = logging.getLogger("tidings.realtime")


class Channels:
    """This process's channel subscribers and presence, fed from the broker.

    Server code publishes with ``await app.state.tidings.channels.publish(...)``.
    """

    def __init__(
        self,
        broker: Broker,
        rules: ChannelRules,
        *,
        topic: str,
        access: ChannelAccess,
        limits: Limits | None = None,
        max_payload: int = 16_384,
        presence_ttl: float = 15.0,
        before_publish: Callable[[Principal, str, str, Any], Awaitable[Any]] | None = None,
    ) -> None:
        self.broker = broker
        self.rules = rules
        self.topic = topic
        self.process = f"{os.getpid():x}{random.getrandbits(32):08x}"
        # The backend says where numbers, history and presence live (shared or this process's).
        self.store: ChannelStore = broker.channel_store(topic, self.process, presence_ttl)
        self.access = access  # namespaces whose rules read a record (read:<Collection>)
        self.events = ChannelEvents(
            self.store,
            rules,
            self.connection_id,
            access=access,
            limits=limits,
            max_payload=max_payload,
            before_publish=before_publish,
        )
        self.presence = ChannelPresence(
            self.store, rules, self.connection_id, access=access, max_payload=max_payload, ttl=presence_ttl
        )
        self._connection_ids: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._numbers = itertools.count(1)
        self._consumer: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        if self.store.is_shared:
            self._heartbeat = asyncio.create_task(self.presence.beat(), name="tidings-presence-heartbeat")
        ready = asyncio.Event()
        self._consumer = asyncio.create_task(self._consume(ready), name="tidings-channels")
        await ready.wait()

    async def close(self) -> None:
        tasks = [t for t in (self._consumer, self._heartbeat) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.access.close()
        await self.presence.settle(timeout=1.0)
        await self.store.close()

    def connection_id(self, client: Any) -> str:
        """``<process>.<n>``: a connection's key in presence and for ``echo: false``."""
        try:
            found = self._connection_ids.get(client)
            if found is None:
                found = self._connection_ids[client] = f"{self.process}.{next(self._numbers)}"
        except TypeError:  # not weakly referenceable (no connection): a key of its own
            return f"{self.process}.{next(self._numbers)}"
        return found

    # -- the operations ------------------------------------------------------------

    @property
    def before_publish(self) -> Callable[[Principal, str, str, Any], Awaitable[Any]] | None:
        """The app's on_publish hooks (principal, channel, type, data) -> data: may refuse or rewrite."""
        return self.events.before_publish

    async def publish(
        self,
        channel: str,
        type: str,  # noqa: A002
        data: Any = None,
        *,
        sender: str | None = None,
        account: str | None = None,
    ) -> int:
        """Publish from server code (no rule or rate is checked): the event's seq.

        ``account`` is the tenant whose ``channel`` it is (ignored for global namespaces).
        """
        return await self.events.publish(channel, type, data, sender=sender, account=account)

    # -- the broker ------------------------------------------------------------------

    async def _consume(self, ready: asyncio.Event) -> None:
        def lost(exc: Exception) -> None:
            # Channel events are ephemeral: what the broker lost meanwhile is gone.
            logger.warning("Channel events: broker subscription lost (%s); resubscribing", exc)
            ready.set()  # start() does not wait for a broker that is down

        await consume(self.broker, self.topic, self._receive, on_ready=ready.set, on_lost=lost, close_timeout=0.25)

    async def _receive(self, message: bytes) -> None:
        try:
            head, body = split(message)
            if head == b"p":
                self.presence.receive(orjson.loads(body))
            else:
                self.events.receive(head, body)
        except Exception:
            logger.warning("A channel message could not be handled", exc_info=True)

    @property
    def subscriber_count(self) -> int:
        """Live channelEvents subscriptions and presence operations of this process."""
        return self.events.subscriber_count + self.presence.joined_count

    @property
    def member_count(self) -> int:
        return self.presence.member_count

    @property
    def delivered(self) -> int:
        """Channel events rendered and pushed to this process's subscribers."""
        return self.events.delivered
