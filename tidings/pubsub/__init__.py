"""Brokers: the doorbell between server processes; the backend is picked by URL."""

from __future__ import annotations

from tidings.errors import ConfigurationError
from tidings.pubsub.base import Broker, BrokerUnavailable
from tidings.pubsub.memory import MemoryBroker

__all__ = ["Broker", "BrokerUnavailable", "MemoryBroker", "broker_from_url", "resolve_broker_url"]

_POSTGRES = ("postgresql://", "postgres://", "postgresql+asyncpg://")


def resolve_broker_url(broker: str, db: str) -> str:
    """The broker ``--broker`` names, given the database: ``auto`` is the database itself when
    it is PostgreSQL (LISTEN/NOTIFY) and ``memory://`` otherwise; ``postgres`` is the database."""
    if broker == "auto":
        return db if db.startswith(_POSTGRES) else "memory://"
    if broker in ("postgres", "postgresql"):
        if not db.startswith(_POSTGRES):
            raise ConfigurationError(
                f"--broker {broker} uses the database's LISTEN/NOTIFY: it needs a PostgreSQL --db, "
                "or give its URL (--broker postgresql://user:pass@host/db)"
            )
        return db
    return broker


def broker_from_url(url: str, *, db: str | None = None) -> Broker:
    """``memory://``, ``redis://host:port/db``, ``postgresql://...``; with ``db``, also ``auto`` and ``postgres``."""
    if db is not None:
        url = resolve_broker_url(url, db)
    if url in ("memory", "memory://"):
        return MemoryBroker()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from tidings.pubsub.redis import RedisBroker

        return RedisBroker(url)
    if url.startswith(_POSTGRES):
        from tidings.pubsub.postgres import PostgresBroker

        return PostgresBroker(url)
    raise ConfigurationError(f"Unknown broker URL {url!r}; expected memory://, redis://... or postgresql://...")
