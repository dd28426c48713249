"""The ASGI WebSocket endpoint: drives graphql-transport-ws or legacy graphql-ws.

Per connection: one protocol state machine, one bounded send queue, one task
per operation while it starts (queries, mutations, replays), timers as loop
callbacks rather than tasks so an idle connection stays small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson

from tidings.auth.principal import ANONYMOUS, Principal
from tidings.auth.tokens import bearer, token_from_init
from tidings.engine.runner import Finished, Rejected, Request, Streaming
from tidings.errors import TidingsError, Unauthenticated
from tidings.protocols import legacy_ws, transport_ws
from tidings.protocols.close_codes import CloseCode, close_reason
from tidings.protocols.commands import Authenticate, Close, Command, Send, Start, Stop
from tidings.transports.common import TransportContext, header
from tidings.transports.queue import SendQueue
from tidings.transports.stats import ConnectionStats, log_opened, log_slow_consumer
from tidings.types import Receive, Scope
from tidings.types import Send as ASGISend

logger = logging.getLogger("tidings.ws")

Protocol = transport_ws.TransportWsProtocol | legacy_ws.LegacyWsProtocol


def choose_subprotocol(offered: list[str], legacy: bool) -> str | None:
    if transport_ws.SUBPROTOCOL in offered:
        return transport_ws.SUBPROTOCOL
    if legacy and legacy_ws.SUBPROTOCOL in offered:
        return legacy_ws.SUBPROTOCOL
    return None


class WebSocketConnection:
    """One client connection. Implements the realtime ``Sink``."""

    # Thousands live at once: slots keep each one small.
    __slots__ = (
        "__weakref__",  # the app's set of live connections holds them weakly
        "_close_task",
        "_closed",
        "_expiry",
        "_init_timer",
        "_receive",
        "_send",
        "close_code",
        "ctx",
        "encode_next",
        "principal",
        "protocol",
        "queue",
        "scope",
        "starting",
        "stats",
        "streams",
        "subprotocol",
    )

    def __init__(self, ctx: TransportContext, scope: Scope, receive: Receive, send: ASGISend) -> None:
        self.ctx = ctx
        self.scope = scope
        self._receive = receive
        self._send = send
        settings = ctx.settings
        self.subprotocol = choose_subprotocol(list(scope.get("subprotocols") or ()), settings.legacy_ws)
        self.protocol: Protocol = (
            legacy_ws.LegacyWsProtocol(max_operations=settings.max_subscriptions)
            if self.subprotocol == legacy_ws.SUBPROTOCOL
            else transport_ws.TransportWsProtocol(max_operations=settings.max_subscriptions)
        )
        self.encode_next = self.protocol.encode_next
        self.queue = SendQueue(
            self._write,
            self._overflow,
            max_messages=settings.queue_messages,
            max_bytes=settings.queue_bytes,
            write_timeout=settings.write_timeout,
        )
        self.principal: Principal = ANONYMOUS
        self.starting: dict[str, asyncio.Task[None]] = {}
        self.streams: dict[str, Streaming] = {}
        self._init_timer: asyncio.TimerHandle | None = None
        self._close_task: asyncio.Task[None] | None = None  # held so it is not collected mid-close
        self._expiry: asyncio.TimerHandle | None = None
        self._closed = False
        self.close_code: int | None = None
        self.stats = ConnectionStats("ws")

    # -- ASGI ----------------------------------------------------------------

    async def serve(self) -> None:
        message = await self._receive()
        if message["type"] != "websocket.connect":
            return
        origin = header(self.scope, b"origin")
        if not self.ctx.origin_allowed(origin, header(self.scope, b"host")):
            logger.warning("WebSocket from origin %r refused: add it to --allowed-origins to allow it", origin)
            code = int(CloseCode.POLICY_VIOLATION)
            await self._send({"type": "websocket.close", "code": code, "reason": "Origin not allowed"})
            return
        await self._send({"type": "websocket.accept", "subprotocol": self.subprotocol})
        if self.subprotocol is None:
            await self._close_now(CloseCode.SUBPROTOCOL_NOT_ACCEPTABLE, "Subprotocol not acceptable")
            return
        loop = asyncio.get_running_loop()
        self._init_timer = loop.call_later(self.ctx.settings.init_timeout, self._init_timeout)
        self.ctx.track(self)
        try:
            await self._receive_loop()
        finally:
            self._teardown()

    async def _receive_loop(self) -> None:
        receive = self._receive
        while not self._closed:
            # After a server-side close, the server delivers the disconnect here.
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.stats.client_close_code = message.get("code")
                return
            self.stats.messages_in += 1
            data = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            await self._run(self.protocol.receive(data))

    def _teardown(self) -> None:
        self._closed = True
        self.queue.close()
        if self._init_timer is not None:
            self._init_timer.cancel()
        if self._expiry is not None:
            self._expiry.cancel()
        for task in self.starting.values():
            task.cancel()
        self.starting.clear()
        for outcome in self.streams.values():
            self.ctx.engine.stop(outcome)
        self.streams.clear()
        self.ctx.engine.system.forget(self)
        self.ctx.engine.services.hooks.disconnected(self)
        self.ctx.untrack(self, self.close_code or self.stats.client_close_code)

    # -- commands --------------------------------------------------------------

    async def _run(self, commands: list[Command]) -> None:
        for command in commands:
            if isinstance(command, Send):
                self.queue.put(orjson.dumps(command.message).decode())
            elif isinstance(command, Start):
                self._start(command)
            elif isinstance(command, Stop):
                self._stop(command.id)
            elif isinstance(command, Authenticate):
                await self._authenticate(command.payload)
            elif isinstance(command, Close):
                await self._close_after_queue(command.code, command.reason)

    async def _authenticate(self, payload: dict[str, Any] | None) -> None:
        try:
            principal = self.ctx.authenticator.optional(self._token(payload))
            self.ctx.engine.services.authorizer.check_connect(principal)
        except TidingsError as exc:
            self.ctx.metrics.auth_failed("ws", exc)
            await self._run(
                self.protocol.reject(close_reason(exc.message) if isinstance(exc, Unauthenticated) else "Forbidden")
            )
            return
        self._set_principal(principal)
        self.stats.identify(principal)
        log_opened(self.stats)
        if self._init_timer is not None:
            self._init_timer.cancel()
            self._init_timer = None
        await self._run(self.protocol.acknowledge())
        self.ctx.engine.services.hooks.connected(self)

    def _token(self, payload: dict[str, Any] | None) -> str | None:
        """The token of the ``connection_init`` payload, else the upgrade request's
        ``Authorization: Bearer`` (gql-cli -H, server-side clients; a browser cannot set it).

        Both given: the payload wins, and the header is not read at all. The payload is what
        every client can set, a browser's included, and what a graphql-ws reconnect renews
        (its ``connectionParams`` run again); the header is whatever the socket was opened
        with. Refusing a mismatch instead would refuse a client whose payload holds a fresh
        token and whose header still holds its first. A bearer header is never ambient (a
        browser sends no such header on its own), so the Origin check, made before the
        upgrade is accepted, guards this path as it does the payload's.
        """
        token = token_from_init(payload)
        if token is None:
            token = bearer(header(self.scope, b"authorization"))  # Unauthenticated if not Bearer
        return token

    def _set_principal(self, principal: Principal) -> None:
        self.principal = principal
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        remaining = self.ctx.authenticator.expires_in(principal)
        if remaining is not None:
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_later(max(remaining, 0.0), self._token_expired)
        # TOKEN_EXPIRING, a lead before the token's exp
        self.ctx.engine.system.watch_token(self, self.ctx.authenticator.expires_in(principal, leeway=False))

    async def renew(self, token: str) -> Principal:
        """``renewToken``: new credentials for the same user and account."""
        principal = self.ctx.authenticator.verify(token)
        if (principal.sub, principal.account) != (self.principal.sub, self.principal.account):
            from tidings.errors import Forbidden

            raise Forbidden("A renewed token must name the same user and account")
        self._set_principal(principal)
        return principal

    def _token_expired(self) -> None:
        self._spawn_close(CloseCode.FORBIDDEN, "Token expired")

    def _init_timeout(self) -> None:
        for command in self.protocol.init_timeout():
            if isinstance(command, Close):
                self._spawn_close(command.code, command.reason)

    def _spawn_close(self, code: CloseCode, reason: str) -> None:
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._close_now(code, reason))

    def _start(self, command: Start) -> None:
        request = Request(command.query, command.variables, command.operation_name, command.extensions)
        task = asyncio.get_running_loop().create_task(self._start_operation(command.id, request))
        self.starting[command.id] = task

    async def _start_operation(self, op_id: str, request: Request) -> None:
        try:
            outcome = await self.ctx.engine.run(
                request, principal=self.principal, sink=self, op_id=op_id, connection=self
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("Operation %r failed to start", op_id)
            outcome = Rejected([{"message": "Internal server error", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}])
        finally:
            self.starting.pop(op_id, None)
        if self._closed:
            if isinstance(outcome, Streaming):
                self.ctx.engine.stop(outcome)
            return
        if isinstance(outcome, Streaming):
            if not self.protocol.is_active(op_id):
                self.ctx.engine.stop(outcome)  # stopped while starting
            else:
                self.streams[op_id] = outcome
        elif isinstance(outcome, Finished):
            await self._run(self.protocol.next(op_id, outcome.payload))
            await self._run(self.protocol.complete(op_id))
        else:
            await self._run(self.protocol.error(op_id, outcome.errors))

    def _stop(self, op_id: str) -> None:
        task = self.starting.pop(op_id, None)
        if task is not None:
            task.cancel()
        outcome = self.streams.pop(op_id, None)
        if outcome is not None:
            self.ctx.engine.stop(outcome)

    # -- Sink --------------------------------------------------------------------

    def push(self, op_id: str, seq: int, payload: str) -> None:
        self.stats.delivered += 1
        self.queue.put(self.encode_next(op_id, payload))

    def finish(self, op_id: str, errors: list[dict[str, Any]] | None = None) -> None:
        outcome = self.streams.pop(op_id, None)
        if outcome is not None:
            self.ctx.engine.stop(outcome)
        commands = self.protocol.error(op_id, errors) if errors else self.protocol.complete(op_id)
        for command in commands:
            if isinstance(command, Send):
                self.queue.put(orjson.dumps(command.message).decode())

    # -- writing and closing -------------------------------------------------------

    async def _write(self, frame: str) -> None:
        self.stats.messages_out += 1
        await self._send({"type": "websocket.send", "text": frame})

    def _overflow(self) -> None:
        self.ctx.metrics.slow_consumers["ws"] += 1
        log_slow_consumer(self.stats)
        # Unsubscribe at once: nothing more is rendered or queued for this client.
        for outcome in self.streams.values():
            self.ctx.engine.stop(outcome)
        self.streams.clear()
        self._spawn_close(CloseCode.SLOW_CONSUMER, "Send queue overflow; reconnect and resume with your last seq")

    async def _close_after_queue(self, code: CloseCode, reason: str) -> None:
        await self.queue.flush(timeout=1.0)
        await self._close_now(code, reason)

    async def _close_now(self, code: CloseCode, reason: str) -> None:
        if self.close_code is not None:
            return
        self.close_code = int(code)
        self.queue.close()
        self._closed = True
        # The close frame goes out once the socket takes writes again: for a client that
        # stopped reading, after what its buffers already hold, so it reads its events and
        # then learns why (4008, resume from your last seq). If it never reads again, the
        # WebSocket ping timeout drops the connection and this send ends with it; the bound
        # below is a last resort.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._send({"type": "websocket.close", "code": int(code), "reason": close_reason(reason)}),
                max(60.0, 4 * self.ctx.settings.keepalive),
            )

    async def drain(self, timeout: float) -> None:
        """For a restart: let starting operations answer, flush the queue, close 1012.

        Subscriptions stop first, so the queue only shrinks; the client resumes on the
        next process with its last seq (1012 is retryable). ``timeout`` bounds each wait;
        the app cancels this as a whole at its deadline.
        """
        if self._closed:
            return
        if self.starting:
            await asyncio.wait(list(self.starting.values()), timeout=timeout)
        for outcome in self.streams.values():
            self.ctx.engine.stop(outcome)
        self.streams.clear()
        await self.queue.flush(timeout)
        await self._close_now(CloseCode.SERVICE_RESTART, "Server restarting; reconnect and resume with your last seq")

    def disconnect(self, reason: str) -> None:
        """An admin's ``closeConnection``: close 1008 with ``reason`` (the graphql-ws client does not retry)."""
        self._spawn_close(CloseCode.POLICY_VIOLATION, reason)

    def keepalive(self) -> None:
        """Called by the app's keepalive ticker."""
        if self._closed:
            return
        if isinstance(self.protocol, legacy_ws.LegacyWsProtocol):
            commands = self.protocol.keepalive()
        else:
            commands = self.protocol.keepalive() if self.protocol.is_acknowledged else []
        for command in commands:
            if isinstance(command, Send):
                self.queue.put(orjson.dumps(command.message).decode())


async def serve_websocket(ctx: TransportContext, scope: Scope, receive: Receive, send: ASGISend) -> None:
    await WebSocketConnection(ctx, scope, receive, send).serve()
