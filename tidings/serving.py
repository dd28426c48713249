"""How tidings runs under uvicorn: the options ``tidings serve`` and the tests share,
and HTTP protocols that bound the time a client may take to send a request.

uvicorn waits for a request's headers and body as long as the client keeps the
connection open; a client sending a byte a second holds a connection (and its
memory) for ever. Each protocol here arms one timer per phase: the headers must
arrive within ``header_timeout`` of the connection (or of a keep-alive request's
first byte), the body within ``body_timeout`` of the headers; on expiry the
connection is closed. Connections that upgrade to WebSocket leave both behind.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tidings.config import Settings
from tidings.logs import uvicorn_logging
from tidings.server import WebSocketProtocol

logger = logging.getLogger("tidings.http")

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools is optional for uvicorn
    HttpToolsProtocol = None  # type: ignore[assignment,misc]


class _Deadline(asyncio.Protocol):
    """One timer per connection; the phase it bounds is named for the log line.

    A mixin before uvicorn's protocol: the headers' timer starts with the connection, and
    every timer stops when it is lost.
    """

    header_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0
    transport: asyncio.Transport
    client: tuple[str, int] | None

    _timer: asyncio.TimerHandle | None = None
    _phase: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: str) -> None:
        if self._phase == phase:
            return
        self._disarm()
        seconds = self.header_timeout if phase == "headers" else self.body_timeout
        if seconds > 0:
            self._phase = phase
            self._timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._phase = None, None

    def _expire(self) -> None:
        phase, self._timer, self._phase = self._phase, None, None
        if not self.transport.is_closing():
            # INFO, not WARNING: any client can cause this, once per connection.
            logger.info("Closed a connection from %s: request %s not received in time", _peer(self.client), phase)
            self.transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown"


if HttpToolsProtocol is not None:

    class HttpToolsDeadlineProtocol(_Deadline, HttpToolsProtocol):
        """uvicorn's httptools protocol with header and body read deadlines."""

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._phase is None:  # a keep-alive connection's next request
                self._arm("headers")

        def on_headers_complete(self) -> None:
            upgrading = self.parser.should_upgrade() and self._should_upgrade()
            self._disarm()
            super().on_headers_complete()
            if not upgrading:
                self._arm("body")  # disarmed at once by on_message_complete when there is none

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()


class H11DeadlineProtocol(_Deadline, H11Protocol):
    """uvicorn's h11 protocol with header and body read deadlines."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def _track(self) -> None:
        # h11 has no callbacks: read the phase off the peer's state after each step.
        state = self.conn.their_state
        if self.transport.is_closing():
            self._disarm()
        elif state is h11.SEND_BODY:
            self._arm("body")
        elif state is h11.IDLE:
            if self._phase != "headers" and self.conn.trailing_data[0]:
                self._arm("headers")  # the first bytes of a keep-alive connection's next request
        else:
            self._disarm()


def http_protocol(header_timeout: float, body_timeout: float) -> type[asyncio.Protocol]:
    """The HTTP protocol uvicorn's ``auto`` would pick, with these deadlines (0 = none)."""
    base: type[_Deadline] = H11DeadlineProtocol if HttpToolsProtocol is None else HttpToolsDeadlineProtocol
    return type(base.__name__, (base,), {"header_timeout": header_timeout, "body_timeout": body_timeout})


def uvicorn_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config``: one place for production and tests."""
    keepalive = settings.keepalive if settings.keepalive > 0 else None  # 0 = no pings
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        # Above info the access log prints nothing, but uvicorn would still format each line's address and path.
        "access_log": settings.log_level.lower() in ("trace", "debug", "info"),
        "http": http_protocol(settings.header_timeout, settings.body_timeout),
        "ws": WebSocketProtocol,
        "ws_max_size": settings.max_message_size,
        "ws_per_message_deflate": settings.ws_compression,
        "ws_ping_interval": keepalive,
        "ws_ping_timeout": keepalive,
        "timeout_graceful_shutdown": settings.shutdown_timeout,  # uvicorn says int; floats work
        "h11_max_incomplete_event_size": settings.max_message_size,
    }
    options.update(uvicorn_logging(settings))  # --log-format json: uvicorn's lines are JSON too
    options.update(overrides)
    return options


__all__ = ["H11DeadlineProtocol", "http_protocol", "uvicorn_options"]
