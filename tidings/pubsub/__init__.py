"""Brokers: the doorbell between server processes; the backend is picked by URL."""

from __future__ import annotations

from tidings.errors import ConfigurationError
from tidings.pubsub.base import Broker, BrokerUnavailable
from tidings.pubsub.memory import MemoryBroker

__all__ = ["Broker", "BrokerUnavailable", "MemoryBroker", "broker_from_url"]


def broker_from_url(url: str) -> Broker:
    """``memory://`` or ``redis://host:port/db``."""
    if url in ("memory", "memory://"):
        return MemoryBroker()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from tidings.pubsub.redis import RedisBroker

        return RedisBroker(url)
    raise ConfigurationError(f"Unknown broker URL {url!r}; expected memory:// or redis://...")
