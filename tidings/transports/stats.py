"""One connection's figures (messages in and out, deliveries) and its open and close log lines.

The transports bump the counters inline (an integer increment each); the app's
metrics, the admin listing and the close line read them.
"""

from __future__ import annotations

import logging
import time

from tidings.auth.principal import Principal

__all__ = ["ConnectionStats", "log_closed", "log_opened", "log_slow_consumer"]

logger = logging.getLogger("tidings.connections")


class ConnectionStats:
    """Counters and identity of one WebSocket connection or SSE stream."""

    __slots__ = (
        "account",
        "client_close_code",
        "delivered",
        "id",
        "messages_in",
        "messages_out",
        "opened_at",
        "started",
        "sub",
        "transport",
    )

    def __init__(self, transport: str) -> None:
        self.transport = transport  # "ws" or "sse"
        self.id = ""  # set when the app starts tracking the connection
        self.sub: str | None = None
        self.account: str | None = None
        self.opened_at = time.time()
        self.started = time.monotonic()
        self.messages_in = 0
        self.messages_out = 0
        self.delivered = 0  # events pushed to its subscriptions (a subset of messages_out)
        self.client_close_code: int | None = None

    def identify(self, principal: Principal | None) -> None:
        if principal is not None:
            self.sub, self.account = principal.sub, principal.account

    @property
    def duration(self) -> float:
        return time.monotonic() - self.started


def log_opened(stats: ConnectionStats) -> None:
    logger.info(
        "Connection opened: id=%s transport=%s sub=%s account=%s",
        stats.id,
        stats.transport,
        stats.sub,
        stats.account,
        extra={
            "event": "connection_opened",
            "connection_id": stats.id,
            "transport": stats.transport,
            "sub": stats.sub,
            "account": stats.account,
        },
    )


def log_closed(stats: ConnectionStats, close_code: int | None) -> None:
    duration = round(stats.duration, 3)
    logger.info(
        "Connection closed: id=%s transport=%s sub=%s account=%s duration=%.3fs code=%s in=%d out=%d deliveries=%d",
        stats.id,
        stats.transport,
        stats.sub,
        stats.account,
        duration,
        close_code,
        stats.messages_in,
        stats.messages_out,
        stats.delivered,
        extra={
            "event": "connection_closed",
            "connection_id": stats.id,
            "transport": stats.transport,
            "sub": stats.sub,
            "account": stats.account,
            "duration_s": duration,
            "close_code": close_code,
            "messages_in": stats.messages_in,
            "messages_out": stats.messages_out,
            "deliveries": stats.delivered,
        },
    )


def log_slow_consumer(stats: ConnectionStats) -> None:
    logger.warning(
        "Slow consumer dropped: id=%s transport=%s sub=%s account=%s",
        stats.id,
        stats.transport,
        stats.sub,
        stats.account,
        extra={
            "event": "slow_consumer_dropped",
            "connection_id": stats.id,
            "transport": stats.transport,
            "sub": stats.sub,
            "account": stats.account,
            "messages_out": stats.messages_out,
        },
    )
