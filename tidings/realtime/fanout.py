"""The app's publisher: rings the dispatcher's doorbell for a commit, then publishes the
change to the channels its collection declares (``"room:{room}"``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tidings.events import ChangeEvent
from tidings.realtime.channels import Channels
from tidings.resolvers.context import Publisher

logger = logging.getLogger("tidings.realtime")

FAN_OUT_TIMEOUT = 0.25  # a write's response never waits longer for its channel fan-out


class _Filled(dict[str, Any]):
    """A record for ``str.format_map``: a missing or null field leaves the template unfilled."""

    def __missing__(self, key: str) -> Any:
        raise KeyError(key)

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if value is None:
            raise KeyError(key)
        return value


class FanOut:
    """The app's publisher: rings the dispatcher's doorbell, then fans declared collections out to channels."""

    def __init__(self, publisher: Publisher, channels: Channels, templates: Mapping[str, tuple[str, ...]]) -> None:
        self.publisher = publisher
        self.channels = channels
        self.templates = {name: t for name, t in templates.items() if t}

    async def publish(self, event: ChangeEvent) -> None:
        await self.publish_batch((event,))

    async def publish_batch(self, events: Sequence[ChangeEvent]) -> None:
        await self.publisher.publish_batch(events)
        for event in events:
            templates = self.templates.get(event.collection)
            if templates:
                await self.fan_out(event, templates)

    async def fan_out(self, event: ChangeEvent, templates: tuple[str, ...]) -> None:
        """Publish a committed change to each channel of ``templates`` the record fills.

        The commit stands whatever happens here: a template the record cannot fill is
        skipped, and a failed or slow publish is logged, never raised.
        """
        record = event.record
        kind = f"{event.collection[:1].lower()}{event.collection[1:]}.{event.operation.value.lower()}"
        data = {"id": event.record_id, "seq": str(event.seq), "operation": event.operation.value, "record": record}
        for template in templates:
            try:
                channel = template.format_map(_Filled(record))
            except (KeyError, ValueError, IndexError):
                continue
            try:
                async with asyncio.timeout(FAN_OUT_TIMEOUT):
                    await self.channels.publish(channel, kind, data, sender=event.actor, account=event.account)
            except Exception as exc:
                logger.warning("Publishing %s seq %s to channel %r failed (%s)", kind, event.seq, channel, exc)
