"""The ASGI graphql-sse endpoint: distinct connections and single connection modes.

Distinct mode: one GET/POST with ``Accept: text/event-stream`` per operation.
Single connection mode: PUT reserves a stream, GET opens it, POST/GET with the
token run operations on it (202), DELETE stops one. Each ``next`` event carries
its seq as the SSE ``id:``; a reconnect sending ``Last-Event-ID`` resumes.
A ``token`` query parameter holding a JWT (it has dots) authenticates an
EventSource, which cannot set headers; one without dots is a reservation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from urllib.parse import parse_qs

import orjson
from graphql import OperationType

from tidings.auth.principal import Principal
from tidings.auth.tokens import bearer
from tidings.engine.runner import Finished, Rejected, Request, Streaming
from tidings.errors import BadUserInput, ErrorCode, TidingsError, Unauthenticated
from tidings.protocols import sse
from tidings.protocols.reservations import (
    Reservations,
    SingleConnectionRequest,
    StreamResult,
    classify_request,
    status_for,
)
from tidings.transports.body import MALFORMED_JSON, check_request
from tidings.transports.common import TransportContext, client_ip, declares_json, header, unsupported_media_type
from tidings.transports.queue import SendQueue
from tidings.transports.stats import ConnectionStats, log_opened, log_slow_consumer
from tidings.types import Receive, Scope, Send

logger = logging.getLogger("tidings.sse")

TOKEN_HEADER = b"x-graphql-event-stream-token"
STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
    (b"connection", b"keep-alive"),
    (b"content-encoding", b"none"),
]


# A reservation lives in the process that made it: behind a balancer over several processes
# (--workers), a request reaching another one finds none. Said in the 404, not only in docs.
UNKNOWN_RESERVATION = (
    b"Unknown or expired stream reservation. It lives in the server process that made it: with "
    b"several processes (--workers), single connection mode needs sticky sessions, or use distinct "
    b"connections mode"
)


class HTTPError(Exception):
    def __init__(self, status: int, body: Any, content_type: bytes = b"application/json") -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.content_type = content_type


def _graphql_error(message: str, code: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code}}]}


async def respond(
    send: Send,
    status: int,
    body: Any,
    content_type: bytes = b"application/json",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    data = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else orjson.dumps(body)
    headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class EventStream:
    """One open SSE response; the realtime ``Sink`` for its operations."""

    def __init__(self, ctx: TransportContext, send: Send, *, single: bool) -> None:
        self.ctx = ctx
        self._send = send
        self.single = single
        self.client_ip: str | None = None  # anonymous callers' rate limits are per IP on HTTP
        self.started = False
        self.done = asyncio.Event()
        self.pending: list[str] = []  # single mode: results before the stream opened (bounded)
        self.queue = SendQueue(
            self._write,
            self._overflow,
            max_messages=ctx.settings.queue_messages,
            max_bytes=ctx.settings.queue_bytes,
            write_timeout=ctx.settings.write_timeout,
        )
        self.streams: dict[str, Streaming] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.principal: Principal | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self.stats = ConnectionStats("sse")

    async def open(self) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
        self.started = True
        await self._send({"type": "http.response.body", "body": b": connected\n\n", "more_body": True})
        for frame in self.pending:
            self.queue.put(frame)
        self.pending.clear()
        self.stats.identify(self.principal)
        self.ctx.track(self)
        log_opened(self.stats)
        self.ctx.engine.services.hooks.connected(self)

    def _put(self, frame: str) -> None:
        if self.started:
            self.queue.put(frame)
        elif len(self.pending) < self.ctx.settings.queue_messages:
            self.pending.append(frame)
        else:
            self._overflow()

    async def _write(self, frame: str) -> None:
        self.stats.messages_out += 1
        await self._send({"type": "http.response.body", "body": frame.encode(), "more_body": True})

    def _overflow(self) -> None:
        self.ctx.metrics.slow_consumers["sse"] += 1
        log_slow_consumer(self.stats)
        self.stop_all()
        self.done.set()

    def watch_expiry(self, principal: Principal) -> None:
        self.principal = principal
        authenticator = self.ctx.authenticator
        remaining = authenticator.expires_in(principal)
        if remaining is not None:
            self._expiry = asyncio.get_running_loop().call_later(max(remaining, 0.0), self.token_expired)
        # TOKEN_EXPIRING, a lead before the token's exp
        self.ctx.engine.system.watch_token(self, authenticator.expires_in(principal, leeway=False))

    def token_expired(self) -> None:
        """End the stream as a WebSocket closes 4403 "Token expired", saying so: each operation
        gets a ``next`` carrying the error, then its ``complete``.

        The ``complete`` is on purpose: a graphql-sse client would retry a stream that just
        ended, with the same expired token, and learn nothing; the error tells the app to sign
        in again and resubscribe (resuming with its last event's cursor).
        """
        expired = Unauthenticated("Token expired")
        errors = [{"message": expired.message, "extensions": expired.extensions}]
        op_ids = list(dict.fromkeys([*self.tasks, *self.streams]))
        for op_id in op_ids:
            task = self.tasks.pop(op_id, None)
            if task is not None:
                task.cancel()
            self.finish(op_id, errors)
        if not op_ids:  # single connection mode with no operation: no id to say it with
            self._put(sse.encode_comment("closed: Token expired"))
        self.done.set()

    # Sink
    def push(self, op_id: str, seq: int, payload: str) -> None:
        self.stats.delivered += 1
        event_id = self.ctx.engine.cursor(seq)  # a reconnect's Last-Event-ID: checked against this log
        self._put(sse.encode_next(payload, operation_id=op_id if self.single else None, event_id=event_id))

    def finish(self, op_id: str, errors: list[dict[str, Any]] | None = None) -> None:
        outcome = self.streams.pop(op_id, None)
        if outcome is not None:
            self.ctx.engine.stop(outcome)
        if errors:
            self._put(
                sse.encode_next(orjson.dumps({"errors": errors}).decode(), operation_id=op_id if self.single else None)
            )
        self._put(sse.encode_complete(operation_id=op_id if self.single else None))
        if not self.single:
            self.done.set()

    def keepalive(self) -> None:
        if self.started and not self.done.is_set():
            self.queue.put(sse.encode_comment())

    async def run(self, request: Request, op_id: str, principal: Principal, after: str | None = None) -> None:
        try:
            outcome = await self.ctx.engine.run(request, principal=principal, sink=self, op_id=op_id, after=after)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("SSE operation failed to start")
            outcome = Rejected([{"message": "Internal server error", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}])
        finally:
            self.tasks.pop(op_id, None)
        if isinstance(outcome, Streaming):
            if self.done.is_set():
                self.ctx.engine.stop(outcome)
            else:
                self.streams[op_id] = outcome
        elif isinstance(outcome, Finished):
            self.push(op_id, 0, orjson.dumps(outcome.payload).decode()) if not self.single else self._put(
                sse.encode_next(orjson.dumps(outcome.payload).decode(), operation_id=op_id)
            )
            self.finish(op_id)
        else:
            # graphql-sse: validation errors travel through the accepted stream (E2).
            self.finish(op_id, outcome.errors)

    def start(self, request: Request, op_id: str, principal: Principal, after: str | None = None) -> None:
        self.stats.messages_in += 1
        self.tasks[op_id] = asyncio.get_running_loop().create_task(self.run(request, op_id, principal, after))

    def stop(self, op_id: str) -> bool:
        """Stop ``op_id`` without a word to the client; ``True`` if it was running."""
        task = self.tasks.pop(op_id, None)
        if task is not None:
            task.cancel()
        outcome = self.streams.pop(op_id, None)
        if outcome is not None:
            self.ctx.engine.stop(outcome)
        return task is not None or outcome is not None

    def cancel(self, op_id: str) -> None:
        """The client's DELETE: stop ``op_id`` and, if it was running, send its ``complete``
        (the reference handler ends the operation's iterator, which emits one)."""
        if self.stop(op_id):
            self._put(sse.encode_complete(operation_id=op_id))

    def disconnect(self, reason: str) -> None:
        """An admin's ``closeConnection``: say why in a comment, stop every operation, end the response."""
        self._put(sse.encode_comment(f"closed: {reason}"))
        self.stop_all()
        self.done.set()

    def stop_all(self) -> None:
        for op_id in list(self.tasks) + list(self.streams):
            self.stop(op_id)

    async def drain(self, timeout: float) -> None:
        """For a restart: let starting operations answer, flush the queue, end the response.

        No ``complete`` is sent: the graphql-sse client takes the stream's end as a
        network failure and retries the same request (it sends no ``Last-Event-ID``, so
        it resumes through the ``after:`` it re-sends: tidings/clients/resume.mjs keeps
        that current); a browser EventSource reconnects sending ``Last-Event-ID``.
        """
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=timeout)
        for op_id in list(self.streams):
            self.stop(op_id)
        await self.queue.flush(timeout)
        self.done.set()

    async def wait(self, receive: Receive) -> None:
        """Hold the response open until the client leaves or the stream ends."""
        disconnect = asyncio.ensure_future(_until_disconnect(receive))
        done = asyncio.ensure_future(self.done.wait())
        try:
            await asyncio.wait({disconnect, done}, return_when=asyncio.FIRST_COMPLETED)
            if done.done():
                await self.queue.flush(timeout=2.0)
        finally:
            disconnect.cancel()
            done.cancel()
            self.stop_all()
            self.queue.close()
            if self._expiry is not None:
                self._expiry.cancel()
            self.ctx.engine.system.forget(self)
            self.ctx.engine.services.hooks.disconnected(self)
            self.ctx.untrack(self, None)
            with contextlib.suppress(Exception):
                await self._send({"type": "http.response.body", "body": b"", "more_body": False})


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _read_body(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(400, _graphql_error("Client disconnected", "BAD_USER_INPUT"))
        body += message.get("body", b"")
        if len(body) > limit:
            raise HTTPError(413, _graphql_error(f"Body larger than {limit} bytes", "BAD_USER_INPUT"))
        if not message.get("more_body"):
            return bytes(body)


def _request_from(params: dict[str, str], body: bytes | None) -> Request:
    try:
        if body is not None:
            data = orjson.loads(body) if body else {}
        else:
            data = dict(params)
            for key in ("variables", "extensions"):
                if data.get(key):
                    data[key] = orjson.loads(data[key])
    except orjson.JSONDecodeError as exc:  # bytes that are not UTF-8 included
        # orjson's text names its parser's state, not what the client must fix.
        raise HTTPError(400, _graphql_error(MALFORMED_JSON, "BAD_USER_INPUT")) from exc
    try:
        request = check_request(data)
    except BadUserInput as exc:  # the same sentence as on the JSON path
        raise HTTPError(400, _graphql_error(exc.message, exc.code.value)) from exc
    return Request(request["query"], request.get("variables"), request.get("operationName"), request.get("extensions"))


class SSEEndpoint:
    """graphql-sse on /graphql, both modes."""

    def __init__(self, ctx: TransportContext) -> None:
        self.ctx = ctx
        self.reservations = Reservations(ttl=60.0)
        self.single_streams: dict[str, EventStream] = {}

    def principal(self, scope: Scope, params: dict[str, str]) -> Principal:
        try:
            return self._principal(scope, params)
        except TidingsError as exc:
            self.ctx.metrics.auth_failed("sse", exc)
            raise

    def _principal(self, scope: Scope, params: dict[str, str]) -> Principal:
        token = bearer(header(scope, b"authorization"))
        if token is None:
            for key in ("token", "access_token"):
                value = params.get(key)
                if value and value.count(".") == 2:
                    token = value
                    break
        principal = self.ctx.authenticator.optional(token)
        self.ctx.engine.services.authorizer.check_connect(principal)
        return principal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
        try:
            await self._handle(scope, receive, send, params)
        except HTTPError as exc:
            await respond(send, exc.status, exc.body, exc.content_type)
        except TidingsError as exc:
            status = 401 if exc.code is ErrorCode.UNAUTHENTICATED else 403 if exc.code is ErrorCode.FORBIDDEN else 400
            await respond(send, status, {"errors": [{"message": exc.message, "extensions": exc.extensions}]})

    async def _handle(self, scope: Scope, receive: Receive, send: Send, params: dict[str, str]) -> None:
        method = scope["method"]
        reservation = header(scope, TOKEN_HEADER)
        if reservation is None and params.get("token") and params["token"].count(".") != 2:
            reservation = params["token"]
        kind = classify_request(
            method,
            accept=header(scope, b"accept"),
            has_token=reservation is not None,
            has_operation_id="operationId" in params,
        )
        if isinstance(kind, StreamResult):
            extra = [(b"allow", b"GET, POST, PUT, DELETE")] if kind is StreamResult.METHOD_NOT_ALLOWED else None
            await respond(send, status_for(SingleConnectionRequest.RESERVE, kind), b"", b"text/plain", extra)
            return
        if method == "POST" and not declares_json(scope):
            raise HTTPError(415, unsupported_media_type(scope))
        principal = self.principal(scope, params)
        owner = (principal.sub, principal.account)
        now = time.monotonic()
        self.reservations.expire(now)
        if kind is SingleConnectionRequest.DISTINCT:
            await self._distinct(scope, receive, send, params, principal)
        elif kind is SingleConnectionRequest.RESERVE:
            result = self.reservations.reserve(owner, now, presented_token=reservation)
            if isinstance(result, StreamResult):
                await respond(send, status_for(kind, result), b"", b"text/plain")
                return
            stream = EventStream(self.ctx, send, single=True)
            stream.principal = principal
            stream.client_ip = client_ip(scope)
            self.single_streams[result] = stream
            await respond(send, 201, result.encode(), b"text/plain; charset=utf-8")
        elif kind is SingleConnectionRequest.OPEN_STREAM:
            assert reservation is not None
            result = self.reservations.open_stream(reservation, owner, now)
            stream_obj = self.single_streams.get(reservation)
            if result is not StreamResult.OK or stream_obj is None:
                refused = result if result is not StreamResult.OK else StreamResult.NOT_FOUND
                why = UNKNOWN_RESERVATION if refused is StreamResult.NOT_FOUND else b""
                await respond(send, status_for(kind, refused), why, b"text/plain; charset=utf-8")
                return
            stream_obj._send = send
            stream_obj.watch_expiry(principal)
            await stream_obj.open()
            try:
                await stream_obj.wait(receive)
            finally:
                self.reservations.close_stream(reservation)
                self.single_streams.pop(reservation, None)
        elif kind is SingleConnectionRequest.EXECUTE:
            assert reservation is not None
            body = await _read_body(receive, self.ctx.settings.max_message_size) if method == "POST" else None
            request = _request_from(params, body)
            op_id = str((request.extensions or {}).get("operationId") or params.get("operationId") or "")
            if not op_id:
                raise HTTPError(400, _graphql_error("extensions.operationId is required", "BAD_USER_INPUT"))
            stream_obj = self.single_streams.get(reservation)
            parsed_type = await self.ctx.engine.operation_type(request, principal)
            if parsed_type is None:
                outcome = await self.ctx.engine.validate(request, principal)
                raise HTTPError(400, {"errors": outcome})
            if method == "GET" and parsed_type is OperationType.MUTATION:
                # GraphQL over HTTP: a GET never changes anything, in either mode.
                await respond(
                    send, 405, _graphql_error("Mutations need POST", "BAD_USER_INPUT"), extra=[(b"allow", b"POST")]
                )
                return
            result = self.reservations.add_operation(reservation, op_id, owner, now=now)
            if result is not StreamResult.OK or stream_obj is None:
                refused = result if result is not StreamResult.OK else StreamResult.NOT_FOUND
                why = UNKNOWN_RESERVATION if refused is StreamResult.NOT_FOUND else b""
                await respond(send, status_for(kind, refused), why, b"text/plain; charset=utf-8")
                return
            stream_obj.start(request, op_id, principal)
            await respond(send, 202, b"", b"text/plain")
        elif kind is SingleConnectionRequest.STOP:
            assert reservation is not None
            op_id = params.get("operationId", "")
            result = self.reservations.stop_operation(reservation, op_id, owner)
            stream_obj = self.single_streams.get(reservation)
            if result is StreamResult.OK and stream_obj is not None:
                stream_obj.cancel(op_id)
            await respond(send, status_for(kind, result), b"", b"text/plain")

    async def _distinct(
        self, scope: Scope, receive: Receive, send: Send, params: dict[str, str], principal: Principal
    ) -> None:
        method = scope["method"]
        body = await _read_body(receive, self.ctx.settings.max_message_size) if method == "POST" else None
        request = _request_from(params, body)
        if method == "GET" and await self.ctx.engine.operation_type(request) is OperationType.MUTATION:
            await respond(
                send, 405, _graphql_error("Mutations need POST", "BAD_USER_INPUT"), extra=[(b"allow", b"POST")]
            )
            return
        # A cursor (epoch:seq) or, from before cursors, a plain seq; the engine checks either.
        after = header(scope, b"last-event-id") or None
        stream = EventStream(self.ctx, send, single=False)
        stream.client_ip = client_ip(scope)
        stream.watch_expiry(principal)
        await stream.open()
        stream.start(request, "", principal, after)
        await stream.wait(receive)
