"""The graphql-transport-ws protocol (enisdenjo/graphql-ws PROTOCOL.md) as a sans-I/O state machine.

Rules W1-W14 of docs/protocols.md; W1 (subprotocol negotiation) and W15 (WebSocket ping
frames) belong to the transport.
"""

from __future__ import annotations

from typing import Final, Literal, NotRequired, TypedDict

import orjson

from tidings.protocols.close_codes import CloseCode
from tidings.protocols.commands import Authenticate, Command, Stop, send
from tidings.protocols.state import Phase, WebSocketProtocolState
from tidings.protocols.wire import (
    InvalidMessageError,
    decode_object,
    operation_limit_errors,
    optional_object,
    parse_operation,
    require_id,
    require_type,
)
from tidings.types import JSONObject

__all__ = [
    "SUBPROTOCOL",
    "CompleteMessage",
    "ConnectionAckMessage",
    "ConnectionInitMessage",
    "ErrorMessage",
    "NextMessage",
    "PingMessage",
    "PongMessage",
    "SubscribeMessage",
    "SubscribePayload",
    "TransportWsProtocol",
]

SUBPROTOCOL: Final = "graphql-transport-ws"


class ConnectionInitMessage(TypedDict):
    """Direction: Client -> Server."""

    type: Literal["connection_init"]
    payload: NotRequired[JSONObject | None]


class ConnectionAckMessage(TypedDict):
    """Direction: Server -> Client."""

    type: Literal["connection_ack"]
    payload: NotRequired[JSONObject | None]


class PingMessage(TypedDict):
    """Direction: bidirectional."""

    type: Literal["ping"]
    payload: NotRequired[JSONObject | None]


class PongMessage(TypedDict):
    """Direction: bidirectional."""

    type: Literal["pong"]
    payload: NotRequired[JSONObject | None]


class SubscribePayload(TypedDict):
    """Direction: Client -> Server (the payload of ``subscribe``)."""

    query: str
    operationName: NotRequired[str | None]
    variables: NotRequired[JSONObject | None]
    extensions: NotRequired[JSONObject | None]


class SubscribeMessage(TypedDict):
    """Direction: Client -> Server."""

    id: str
    type: Literal["subscribe"]
    payload: SubscribePayload


class NextMessage(TypedDict):
    """Direction: Server -> Client."""

    id: str
    type: Literal["next"]
    payload: JSONObject


class ErrorMessage(TypedDict):
    """Direction: Server -> Client."""

    id: str
    type: Literal["error"]
    payload: list[JSONObject]


class CompleteMessage(TypedDict):
    """Direction: bidirectional."""

    id: str
    type: Literal["complete"]


_SERVER_ONLY_TYPES: Final = frozenset({"connection_ack", "next", "error"})


class TransportWsProtocol(WebSocketProtocolState):
    """One graphql-transport-ws connection: feed it frames, carry out the commands it returns.

    The transport calls ``receive`` for every frame, ``acknowledge`` or ``reject`` after
    an ``Authenticate``, ``init_timeout`` when its init timer fires, and ``next``,
    ``error``, ``complete`` as operations produce results. An operation id is active from
    the ``Start`` until ``error``, ``complete`` or the client's own ``complete``; results
    for an inactive id produce no command, so a result racing a client ``complete`` is
    dropped here (W10). After a ``Close`` every method returns ``[]``.
    """

    __slots__ = ()

    # Client -> Server

    def receive(self, data: str | bytes) -> list[Command]:
        """Handle one frame from the client."""
        if self._state.phase is Phase.CLOSED:
            return []
        if not isinstance(data, str):
            return self._state.close(CloseCode.BAD_REQUEST, "Binary frames are not supported")
        try:
            return self._dispatch(decode_object(data))
        except InvalidMessageError as exc:
            return self._state.close(CloseCode.BAD_REQUEST, exc.reason)

    def _dispatch(self, message: JSONObject) -> list[Command]:
        kind = require_type(message)
        if kind == "connection_init":
            return self._on_connection_init(optional_object(message, "payload"))
        if kind == "ping":
            payload = optional_object(message, "payload")
            pong: PongMessage = {"type": "pong"}
            if payload is not None:
                pong["payload"] = payload
            return [send(pong)]
        if kind == "pong":
            optional_object(message, "payload")
            return []
        if kind == "subscribe":
            return self._on_subscribe(message)
        if kind == "complete":
            return self._on_complete(require_id(message))
        if kind in _SERVER_ONLY_TYPES:
            raise InvalidMessageError(f'Invalid message: "{kind}" is sent by the server only')
        raise InvalidMessageError("Invalid message: unknown type")

    def _on_connection_init(self, payload: JSONObject | None) -> list[Command]:
        # W3: a second init closes even while the first is still being decided.
        if self._state.phase is not Phase.AWAITING_INIT:
            return self._state.close(
                CloseCode.TOO_MANY_INITIALISATION_REQUESTS,
                "Too many initialisation requests",
            )
        self._state.phase = Phase.INITIALISING
        return [Authenticate(payload)]

    def _on_subscribe(self, message: JSONObject) -> list[Command]:
        # Shape first (4400), then the ack (4401), then the id (4409), as the reference server.
        id_ = require_id(message)
        start = parse_operation(id_, message)
        if self._state.phase is not Phase.ACKNOWLEDGED:
            return self._state.close(CloseCode.UNAUTHORIZED, "Unauthorized")
        if id_ in self._state.active:
            return self._state.close(
                CloseCode.SUBSCRIBER_ALREADY_EXISTS,
                f"Subscriber for {id_} already exists",
            )
        if self._state.is_full:
            # Refusing one operation must not disturb the others, so no close (GHSA-hv3w-m4g2-5x77).
            refused: ErrorMessage = {
                "id": id_,
                "type": "error",
                "payload": operation_limit_errors(self._state.max_operations),
            }
            return [send(refused)]
        self._state.active.add(id_)
        return [start]

    def _on_complete(self, id_: str) -> list[Command]:
        # An unknown id is most often one the server completed while this was in flight.
        if id_ not in self._state.active:
            return []
        self._state.active.discard(id_)
        return [Stop(id_)]

    # Server -> Client

    def acknowledge(self, payload: JSONObject | None = None) -> list[Command]:
        """Accept the connection after ``Authenticate``; ``[]`` unless it is initialising."""
        if self._state.phase is not Phase.INITIALISING:
            return []
        self._state.phase = Phase.ACKNOWLEDGED
        ack: ConnectionAckMessage = {"type": "connection_ack"}
        if payload is not None:
            ack["payload"] = payload
        return [send(ack)]

    def reject(self, reason: str = "Forbidden") -> list[Command]:
        """Refuse the connection with 4403, which the client retries (also for an expired token)."""
        return self._state.close(CloseCode.FORBIDDEN, reason)

    def close(self, code: CloseCode, reason: str = "") -> list[Command]:
        """Close for a reason of the server's own: 1012 restart, 4008 slow consumer, 4500."""
        return self._state.close(code, reason)

    def init_timeout(self) -> list[Command]:
        """The init timer fired: close 4408 unless the connection was acknowledged."""
        return self._state.init_timeout()

    def next(self, id: str, payload: JSONObject) -> list[Command]:  # noqa: A002 (the wire field's name)
        """Send one execution result of operation ``id``."""
        if id not in self._state.active:
            return []
        message: NextMessage = {"id": id, "type": "next", "payload": payload}
        return [send(message)]

    def error(self, id: str, errors: list[JSONObject]) -> list[Command]:  # noqa: A002 (the wire field's name)
        """Fail operation ``id`` before or during execution; no ``complete`` follows."""
        if id not in self._state.active:
            return []
        self._state.active.discard(id)
        message: ErrorMessage = {"id": id, "type": "error", "payload": errors}
        return [send(message)]

    def complete(self, id: str) -> list[Command]:  # noqa: A002 (the wire field's name)
        """Finish operation ``id``."""
        if id not in self._state.active:
            return []
        self._state.active.discard(id)
        message: CompleteMessage = {"id": id, "type": "complete"}
        return [send(message)]

    @staticmethod
    def encode_next(id: str, payload_json: str) -> str:  # noqa: A002 (the wire field's name)
        """The text frame of a ``next`` message around an already serialised payload.

        The hot path of fan-out: one serialised payload is shared by every subscriber.
        The caller checks ``is_active(id)`` first, as ``next`` would.
        """
        return '{"id":' + orjson.dumps(id).decode() + ',"type":"next","payload":' + payload_json + "}"

    def keepalive(self) -> list[Command]:
        """A server-initiated ``ping``, allowed at any time before the close (W11)."""
        if self._state.phase is Phase.CLOSED:
            return []
        return [send(self.ping_message())]

    @staticmethod
    def ping_message() -> JSONObject:
        """The ``ping`` message the server sends for protocol-level keepalive."""
        ping: PingMessage = {"type": "ping"}
        return dict(ping)
