"""The request body on every HTTP path: its limit (413), and what its JSON must be (400).

The limit: refused with 413 before the body is read past it.

A declared ``Content-Length`` over the limit is answered before any of the body is
read; a chunked (or understated) body is counted as it streams in, and the request
is answered the moment the count passes the limit. What the client still sends is
discarded as it arrives (uvicorn drops body bytes once the response is complete),
never buffered, and the body deadline of ``tidings.serving`` ends an upload that
does not stop. The connection is not closed at once on purpose: a client that
writes its whole body before reading (most do) would get a reset instead of the 413.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from tidings.errors import BadUserInput, ErrorCode
from tidings.protocols.wire import json_type
from tidings.transports.common import header
from tidings.types import Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """Raised by a ``LimitedReceive`` when the body passes its limit."""


class LimitedReceive:
    """An ASGI ``receive`` that counts body bytes and raises past ``limit``."""

    __slots__ = ("_receive", "limit", "received")

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.received = 0

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise BodyTooLarge(self.limit)
        return message


def too_large_body(limit: int) -> bytes:
    error = {
        "message": f"Request body larger than {limit} bytes",
        "extensions": {"code": ErrorCode.BAD_USER_INPUT.value, "maxBytes": limit},
    }
    return orjson.dumps({"errors": [error]})


async def respond_too_large(send: Send, limit: int) -> None:
    body = too_large_body(limit)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def limit_body(app: Any, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    """Run the ASGI ``app`` on an HTTP request whose body may hold at most ``limit`` bytes."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await respond_too_large(send, limit)
        return
    started = False

    async def tracked_send(message: dict[str, Any]) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    try:
        await app(scope, LimitedReceive(receive, limit), tracked_send)
    except BodyTooLarge:
        # Bodies are read whole before any response starts; if one had started, the
        # client gets a cut response, which is all that can be done.
        if not started:
            await respond_too_large(send, limit)


# -- the JSON of a GraphQL request ---------------------------------------------------
#
# Every path answers a body (or a GET's JSON parameter) that is not a GraphQL request
# with 400 BAD_USER_INPUT and one sentence, the same on each: not a 500 from whichever
# parser happened to meet it first (a client's bytes are never a server fault).

MALFORMED_JSON = "Malformed JSON"


def decode_json(data: str | bytes) -> Any:
    """JSON text as Python: orjson, and the standard library for what orjson refuses (ints
    beyond 64 bits, NaN). ``BadUserInput`` for text that neither reads, bytes not UTF-8 included."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data.decode() if isinstance(data, bytes) else data)
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        # Neither parser's text says what the client must fix.
        raise BadUserInput(MALFORMED_JSON) from exc


def check_request(data: object, *, needs_query: bool = True) -> dict[str, Any]:
    """``data`` if it is a GraphQL request: a JSON object with a ``query`` string (unless
    ``needs_query`` is false) and, where given, a string ``operationName`` and object
    ``variables`` and ``extensions``; else ``BadUserInput`` naming what was wrong."""
    if not isinstance(data, dict):
        batch = " (batches are not supported)" if isinstance(data, list) else ""
        raise BadUserInput(f"A GraphQL request is a JSON object, got {json_type(data)}{batch}")
    query = data.get("query")
    if not isinstance(query, str) and (needs_query or query is not None):
        got = f", got {json_type(query)}" if "query" in data else ""
        raise BadUserInput(f"A GraphQL request needs a 'query' string{got}")
    for key, expected in (("operationName", str), ("variables", dict), ("extensions", dict)):
        value = data.get(key)
        if value is not None and not isinstance(value, expected):
            name = "a string" if expected is str else "an object"
            raise BadUserInput(f"'{key}' must be {name}, got {json_type(value)}")
    return data


async def respond_bad_request(send: Send, error: BadUserInput, content_type: bytes = b"application/json") -> None:
    """Answer ``error`` with 400 and a GraphQL-shaped body carrying its ``extensions.code``."""
    body = orjson.dumps({"errors": [{"message": error.message, "extensions": error.extensions}]})
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})
