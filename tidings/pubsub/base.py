"""The broker interface every backend implements.

A broker carries doorbells between server processes: bytes on a channel.
It is allowed to lose messages (the event log is the source of truth and the
dispatcher fills gaps from it), but not to reorder one publisher's messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol


class Broker(Protocol):
    async def start(self) -> None:
        """Connect; called once before use."""

    async def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` to every current subscriber of ``channel``."""

    def subscribe(self, channel: str) -> AsyncIterator[bytes]:
        """Messages published on ``channel`` from now on, until ``close``."""

    async def close(self) -> None:
        """Stop every subscription and release connections."""
