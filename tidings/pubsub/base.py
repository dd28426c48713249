"""The broker interface every backend implements.

A broker carries doorbells between server processes: bytes on a channel.
It is allowed to lose messages (the event log is the source of truth and the
dispatcher fills gaps from it), but not to reorder one publisher's messages.

Faults are the caller's to survive, not the broker's to hide: ``publish``
raises ``BrokerUnavailable`` when the broker is unreachable (the dispatcher bounds how long it may
take and drops the doorbell), and a subscription's iterator raises ``BrokerUnavailable``
when its connection is lost (the dispatcher subscribes again with backoff, then reads
what it missed from the log). A broker never retries or logs on its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tidings.pubsub.channel_store import ChannelStore


class BrokerUnavailable(ConnectionError):
    """The broker cannot be reached; a backend's own exceptions are mapped to this."""


class Broker(Protocol):
    async def start(self) -> None:
        """Connect; called once before use."""

    async def publish(self, channel: str, message: bytes) -> None:
        """Send ``message`` to every current subscriber of ``channel``.

        Raises ``BrokerUnavailable`` if the broker cannot take it; may be
        cancelled at any await, which must leave the broker usable.
        """

    async def ping(self) -> None:
        """Return once the broker answers a trivial request; raise ``BrokerUnavailable`` if it cannot.

        Callers bound the wait (readiness checks); it must be cheap.
        """

    def subscribe(self, channel: str, *, on_ready: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        """Messages published on ``channel`` from now on, until ``close``.

        ``on_ready`` is called once the subscription is in place on the broker:
        every message published after that call reaches this iterator. The
        iterator ends when the broker closes and raises ``BrokerUnavailable``
        when its connection is lost; the subscription is then gone and the caller subscribes again.
        """

    def channel_store(self, topic: str, process: str, ttl: float) -> ChannelStore:
        """Where channel numbers, history and presence entries live with this backend.

        Channel events and presence travel on ``topic``; ``process`` names this
        process in presence entries, and ``ttl`` is how long its entries outlive
        its last heartbeat. Usable once ``start`` has returned.
        """

    async def close(self) -> None:
        """Stop every subscription and release connections, without waiting on
        an unreachable broker."""
