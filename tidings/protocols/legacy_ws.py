"""The legacy graphql-ws protocol (apollographql/subscriptions-transport-ws PROTOCOL.md) as a sans-I/O state machine.

Rules L1-L7 of docs/protocols.md. The protocol is deprecated upstream; serve it behind
the same auth gate as graphql-transport-ws, or not at all.
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
    "ConnectionErrorMessage",
    "ConnectionInitMessage",
    "ConnectionTerminateMessage",
    "DataMessage",
    "ErrorMessage",
    "KeepAliveMessage",
    "LegacyWsProtocol",
    "StartMessage",
    "StartPayload",
    "StopMessage",
]

SUBPROTOCOL: Final = "graphql-ws"


class ConnectionInitMessage(TypedDict):
    """Direction: Client -> Server."""

    type: Literal["connection_init"]
    payload: NotRequired[JSONObject | None]


class StartPayload(TypedDict):
    """Direction: Client -> Server (the payload of ``start``)."""

    query: str
    variables: NotRequired[JSONObject | None]
    operationName: NotRequired[str | None]
    extensions: NotRequired[JSONObject | None]


class StartMessage(TypedDict):
    """Direction: Client -> Server."""

    id: str
    type: Literal["start"]
    payload: StartPayload


class StopMessage(TypedDict):
    """Direction: Client -> Server."""

    id: str
    type: Literal["stop"]


class ConnectionTerminateMessage(TypedDict):
    """Direction: Client -> Server."""

    type: Literal["connection_terminate"]


class ConnectionAckMessage(TypedDict):
    """Direction: Server -> Client."""

    type: Literal["connection_ack"]
    payload: NotRequired[JSONObject]


class ConnectionErrorMessage(TypedDict):
    """Direction: Server -> Client."""

    type: Literal["connection_error"]
    payload: JSONObject


class KeepAliveMessage(TypedDict):
    """Direction: Server -> Client."""

    type: Literal["ka"]


class DataMessage(TypedDict):
    """Direction: Server -> Client."""

    id: str
    type: Literal["data"]
    payload: JSONObject


class ErrorMessage(TypedDict):
    """Direction: Server -> Client."""

    type: Literal["error"]
    id: NotRequired[str]
    payload: list[JSONObject] | JSONObject


class CompleteMessage(TypedDict):
    """Direction: Server -> Client."""

    id: str
    type: Literal["complete"]


def _connection_error(message: str) -> list[Command]:
    error: ConnectionErrorMessage = {
        "type": "connection_error",
        "payload": {"message": message},
    }
    return [send(error)]


class LegacyWsProtocol(WebSocketProtocolState):
    """One legacy graphql-ws connection: feed it frames, carry out the commands it returns.

    Driven like ``TransportWsProtocol``, plus ``keepalive`` on the transport's ``ka``
    timer. Where the spec is silent or lax, tidings chooses:

    - ``start`` before the ack closes 4401 (GHSA-vpwc-v33q-mq89), like graphql-transport-ws.
    - ``start`` with the id of an active operation closes 4409. Strawberry and the
      reference server replace the old operation instead; a client that reuses a live id
      is broken, and closing leaves no task to leak.
    - a second ``connection_init`` closes 4429; binary frames close 4400.
    - a frame that is not JSON, not an object, has no string ``type``, or has a
      malformed ``connection_init`` or ``stop`` gets ``connection_error`` and is ignored,
      without disconnecting (the spec's "parsing errors").
    - a ``start`` whose id is fine but whose payload is malformed gets ``error`` for that
      id and does not start.
    - an unknown ``type`` gets ``{"type": "error", "id": <id if a string>, "payload":
      {"message": ...}}``, as the reference server sends; the connection stays open.
    - ``stop`` of an active operation returns ``Stop`` and then ``complete`` for it: the
      spec and the reference server send ``complete`` after a ``stop`` (L5). A ``stop``
      for an unknown id is ignored.
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
            message = decode_object(data)
            kind = require_type(message)
            if kind == "connection_init":
                return self._on_connection_init(optional_object(message, "payload"))
            if kind == "start":
                return self._on_start(message)
            if kind == "stop":
                return self._on_stop(require_id(message))
        except InvalidMessageError as exc:
            return _connection_error(exc.reason)
        if kind == "connection_terminate":
            return self._state.close(CloseCode.NORMAL_CLOSURE, "")
        unknown: ErrorMessage = {
            "type": "error",
            "payload": {"message": "Unknown message type"},
        }
        id_ = message.get("id")
        if isinstance(id_, str):
            unknown["id"] = id_
        return [send(unknown)]

    def _on_connection_init(self, payload: JSONObject | None) -> list[Command]:
        if self._state.phase is not Phase.AWAITING_INIT:
            return self._state.close(
                CloseCode.TOO_MANY_INITIALISATION_REQUESTS,
                "Too many initialisation requests",
            )
        self._state.phase = Phase.INITIALISING
        return [Authenticate(payload)]

    def _on_start(self, message: JSONObject) -> list[Command]:
        # The ack comes first: before it nothing about the message is looked at (L6).
        if self._state.phase is not Phase.ACKNOWLEDGED:
            return self._state.close(CloseCode.UNAUTHORIZED, "Unauthorized")
        id_ = require_id(message)
        if id_ in self._state.active:
            return self._state.close(
                CloseCode.SUBSCRIBER_ALREADY_EXISTS,
                f"Subscriber for {id_} already exists",
            )
        try:
            start = parse_operation(id_, message)
        except InvalidMessageError as exc:
            return [self._error_message(id_, [{"message": exc.reason}])]
        if self._state.is_full:
            # Refusing one operation must not disturb the others, so no close (GHSA-hv3w-m4g2-5x77).
            return [self._error_message(id_, operation_limit_errors(self._state.max_operations))]
        self._state.active.add(id_)
        return [start]

    def _on_stop(self, id_: str) -> list[Command]:
        if id_ not in self._state.active:
            return []
        self._state.active.discard(id_)
        done: CompleteMessage = {"id": id_, "type": "complete"}
        return [Stop(id_), send(done)]

    # Server -> Client

    def acknowledge(self, payload: JSONObject | None = None) -> list[Command]:
        """Accept the connection after ``Authenticate``: ``connection_ack``, then ``ka`` (L3)."""
        if self._state.phase is not Phase.INITIALISING:
            return []
        self._state.phase = Phase.ACKNOWLEDGED
        ack: ConnectionAckMessage = {"type": "connection_ack"}
        if payload is not None:
            ack["payload"] = payload
        ka: KeepAliveMessage = {"type": "ka"}
        return [send(ack), send(ka)]

    def reject(self, reason: str = "Forbidden") -> list[Command]:
        """Refuse the connection: ``connection_error`` with ``reason``, then close 4403."""
        if self._state.phase is Phase.CLOSED:
            return []
        return [
            *_connection_error(reason),
            *self._state.close(CloseCode.FORBIDDEN, reason),
        ]

    def close(self, code: CloseCode, reason: str = "") -> list[Command]:
        """Close for a reason of the server's own: 1012 restart, 4008 slow consumer, 4500."""
        return self._state.close(code, reason)

    def init_timeout(self) -> list[Command]:
        """The init timer fired: close 4408 unless the connection was acknowledged."""
        return self._state.init_timeout()

    def keepalive(self) -> list[Command]:
        """The periodic ``ka``; nothing before the ack, since clients watch from the first."""
        if self._state.phase is not Phase.ACKNOWLEDGED:
            return []
        ka: KeepAliveMessage = {"type": "ka"}
        return [send(ka)]

    def next(self, id: str, payload: JSONObject) -> list[Command]:  # noqa: A002 (the wire field's name)
        """Send one execution result of operation ``id`` as ``data``."""
        if id not in self._state.active:
            return []
        message: DataMessage = {"id": id, "type": "data", "payload": payload}
        return [send(message)]

    def error(self, id: str, errors: list[JSONObject]) -> list[Command]:  # noqa: A002 (the wire field's name)
        """Fail operation ``id`` before execution; no ``complete`` follows."""
        if id not in self._state.active:
            return []
        self._state.active.discard(id)
        return [self._error_message(id, errors)]

    def complete(self, id: str) -> list[Command]:  # noqa: A002 (the wire field's name)
        """Finish operation ``id``."""
        if id not in self._state.active:
            return []
        self._state.active.discard(id)
        message: CompleteMessage = {"id": id, "type": "complete"}
        return [send(message)]

    @staticmethod
    def _error_message(id_: str, errors: list[JSONObject]) -> Command:
        message: ErrorMessage = {"type": "error", "id": id_, "payload": errors}
        return send(message)

    @staticmethod
    def encode_next(id: str, payload_json: str) -> str:  # noqa: A002 (the wire field's name)
        """The text frame of a ``data`` message around an already serialised payload.

        The hot path of fan-out: one serialised payload is shared by every subscriber.
        The caller checks ``is_active(id)`` first, as ``next`` would.
        """
        return '{"id":' + orjson.dumps(id).decode() + ',"type":"data","payload":' + payload_json + "}"
