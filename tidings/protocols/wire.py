"""Decoding and shape checks of incoming WebSocket messages, shared by both WebSocket protocols.

``InvalidMessageError`` never leaves ``tidings.protocols``: each protocol turns it into its
own reply (a 4400 close, or a legacy ``connection_error``).
"""

from __future__ import annotations

import orjson

from tidings.errors import ErrorCode
from tidings.protocols.commands import Start
from tidings.types import JSONObject

__all__ = [
    "InvalidMessageError",
    "decode_object",
    "operation_limit_errors",
    "optional_object",
    "optional_string",
    "parse_operation",
    "require_id",
    "require_type",
]


class InvalidMessageError(Exception):
    """A message of a shape the protocol does not allow; ``reason`` is short and safe to send."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def json_type(value: object) -> str:
    """The JSON type of a decoded ``value``, as an error sentence names it ("got a number")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    return "an array" if isinstance(value, list) else "an object"


def decode_object(data: str) -> JSONObject:
    """Parse one text frame, which must hold a JSON object."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessageError("Invalid message: not valid JSON") from exc
    if not isinstance(value, dict):
        raise InvalidMessageError(f"Invalid message: expected a JSON object, got {json_type(value)}")
    return value


def require_type(message: JSONObject) -> str:
    """Return the message's ``type``, which must be a string."""
    kind = message.get("type")
    if not isinstance(kind, str):
        raise InvalidMessageError(f'Invalid message: "type" must be a string, got {json_type(kind)}')
    return kind


def require_id(message: JSONObject) -> str:
    """Return the message's ``id``, which must be a non-empty string."""
    id_ = message.get("id")
    if not isinstance(id_, str) or not id_:
        raise InvalidMessageError(f'Invalid message: "id" must be a non-empty string, got {json_type(id_)}')
    return id_


def optional_object(container: JSONObject, key: str) -> JSONObject | None:
    """Return ``container[key]``, which must be an object, null or absent (then ``None``)."""
    value = container.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise InvalidMessageError(f'Invalid message: "{key}" must be an object or null, got {json_type(value)}')


def optional_string(container: JSONObject, key: str) -> str | None:
    """Return ``container[key]``, which must be a string, null or absent (then ``None``)."""
    value = container.get(key)
    if value is None or isinstance(value, str):
        return value
    raise InvalidMessageError(f'Invalid message: "{key}" must be a string or null, got {json_type(value)}')


def parse_operation(id_: str, message: JSONObject) -> Start:
    """Read ``message["payload"]`` as a GraphQL request: ``query`` and its optional companions."""
    payload = message.get("payload")
    if not isinstance(payload, dict):
        raise InvalidMessageError(f'Invalid message: "payload" must be an object, got {json_type(payload)}')
    query = payload.get("query")
    if not isinstance(query, str):
        raise InvalidMessageError(f'Invalid message: "query" must be a string, got {json_type(query)}')
    return Start(
        id=id_,
        query=query,
        variables=optional_object(payload, "variables"),
        operation_name=optional_string(payload, "operationName"),
        extensions=optional_object(payload, "extensions"),
    )


def operation_limit_errors(limit: int) -> list[JSONObject]:
    """The GraphQL errors sent for an operation refused because the connection is at its limit."""
    return [
        {
            "message": f"Too many operations on this connection (limit {limit})",
            "extensions": {"code": ErrorCode.RATE_LIMITED.value},
        }
    ]
