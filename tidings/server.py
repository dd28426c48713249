"""How ``tidings serve`` runs uvicorn: a drain before uvicorn's shutdown, exit 0 on SIGTERM, 4008 on ping timeout,
1007 for a text message that is not UTF-8 logged at INFO at most once a minute.

uvicorn waits for open HTTP responses before it runs the lifespan shutdown, and an SSE
response never ends by itself: so the server ends tidings' streams first, itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State
from websockets.server import ServerProtocol

from tidings.protocols.close_codes import CloseCode, close_reason

if TYPE_CHECKING:
    from tidings.app import Tidings

logger = logging.getLogger("tidings.server")

MESSAGE_TOO_LARGE_REASON = "Message too large"

KEEPALIVE_TIMEOUT_REASON = "Keepalive ping timeout; reconnect and resume with your last seq"


class SampledLog:
    """INFO lines for what any client can repeat at will: at most one per ``interval`` seconds.

    The events between two lines are counted, and the next line says how many. No timer:
    a line only ever follows an event, so a flood that stops leaves its count untold.
    One per process; uvicorn runs every connection of a process on one event loop.
    """

    def __init__(self, logger: logging.Logger, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last = -math.inf
        self._left_out = 0

    def info(self, message: str, *args: object) -> None:
        now = self.clock()
        if now - self._last < self.interval:
            self._left_out += 1
            return
        if self._left_out:
            message += " (and %d more in the %g s before this line, not logged)"
            args = (*args, self._left_out, self.interval)
        self._last, self._left_out = now, 0
        self.logger.info(message, *args)


INVALID_TEXT_LOG = SampledLog(logger, 60.0)
"""Closes 1007: uvicorn logged each one at ERROR with a traceback, a flood a client could feed."""


class _ServerConnection(ServerProtocol):
    """websockets' server protocol, closing 1009 with our reason rather than the parser's text.

    websockets refuses an oversized frame from its header, before reading the payload:
    it stays the enforcer of ``max_message_size``; only what the client reads changes.
    """

    def fail(self, code: int, reason: str = "") -> None:
        if code == CloseCode.MESSAGE_TOO_BIG:
            logger.info("Closed a WebSocket 1009: %s", reason)
            reason = MESSAGE_TOO_LARGE_REASON
        super().fail(code, reason)


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, closing a peer that misses its pong with 4008 rather than 1011.

    A client that stops reading answers no ping. Its 4008 from the send queue waits for the
    socket to take writes, while uvicorn writes the ping timeout's close frame at once, so
    1011 used to arrive first, and the graphql-ws client does not retry 1011. A peer that
    misses a pong is one that is not reading (or is gone): 4008 tells it to resume.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.__class__ = _ServerConnection  # uvicorn builds the ServerProtocol itself

    def send_receive_event_to_app(self) -> None:
        # uvicorn's method, but for its answer to a text message that is not UTF-8: the same
        # close (1007), logged as the client's mistake it is, sampled, not as a server ERROR
        # with a traceback. One decode per message, as uvicorn's; the rest is uvicorn's code.
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent:
            return  # past the app's close: reads stay active until the peer's close reply
        if self.curr_msg_data_type == "text":
            try:
                self.queue.put_nowait({"type": "websocket.receive", "text": data.decode()})
            except UnicodeDecodeError:
                client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
                INVALID_TEXT_LOG.info("Closed a WebSocket 1007: a text message that is not UTF-8, from %s", client)
                self.conn.send_close(CloseCode.INVALID_FRAME_PAYLOAD_DATA)
                self.handle_parser_exception()
                return
        else:
            self.queue.put_nowait({"type": "websocket.receive", "bytes": data})
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def keepalive_timeout(self) -> None:
        self.pong_timer = None
        self.pending_ping_payload = None
        if self.close_sent or self.transport.is_closing() or self.conn.state is not State.OPEN:
            return
        code, reason = int(CloseCode.SLOW_CONSUMER), close_reason(KEEPALIVE_TIMEOUT_REASON)
        # uvicorn fails the connection and closes the socket at once; but a socket closed
        # on a backlog its peer has not read can be reset before the peer reads the close
        # frame. So this is uvicorn's path for an app's close instead: the app learns now,
        # the peer has close_timeout to read its backlog, then the frame (and to answer it).
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)


class Server(uvicorn.Server):
    """uvicorn's server, ending tidings' connections on SIGTERM or Ctrl-C before uvicorn waits for them.

    Order: stop accepting, drain (flush each queue, close WebSockets 1012, end SSE
    responses) within ``config.timeout_graceful_shutdown``, then uvicorn's own shutdown
    (whatever is left, then the lifespan). The signal is not raised again afterwards,
    so a graceful stop exits 0.
    """

    def __init__(self, config: uvicorn.Config, tidings: Tidings) -> None:
        super().__init__(config)
        self.tidings = tidings

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.tidings.settings.shutdown_timeout
        deadline = loop.time() + timeout
        for server in self.servers:
            server.close()  # refuse new connections while the open ones drain
        drain = asyncio.create_task(self.tidings.drain(timeout), name="tidings-drain")
        while not drain.done():
            await asyncio.wait({drain}, timeout=0.1)
            if self.force_exit:  # a second Ctrl-C: stop waiting for anyone
                drain.cancel()
                await asyncio.wait({drain})
        if not drain.cancelled() and drain.exception() is not None:
            logger.error("Draining connections failed", exc_info=drain.exception())
        # What remains (closing handshakes, plain requests in flight) gets what is left of the deadline.
        self.config.timeout_graceful_shutdown = max(math.ceil(deadline - loop.time()), 1)
        await super().shutdown(sockets)


def run(app: Any, config: uvicorn.Config) -> bool:
    """Serve until SIGTERM or Ctrl-C; False if the server did not start."""
    server = Server(config, app.state.tidings)
    server.run()
    return server.started
