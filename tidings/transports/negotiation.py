"""Which transport answers a GraphQL request on /graphql, and in which media type.

GraphQL over HTTP: queries and mutations are answered ``application/json`` (the
default, also for ``*/*`` and no ``Accept``) or ``application/graphql-response+json``
(when the client prefers it; request errors are then 4xx with no ``data``). They go to
Server-Sent Events only when the client prefers ``text/event-stream`` over both. A
subscription goes to Server-Sent Events whenever ``Accept`` names ``text/event-stream``
with a non-zero quality, whatever it prefers: it has no other answer over HTTP. A bare
``*/*`` does not count: generic clients send it, and an endless stream would surprise them.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs

import orjson
from graphql import OperationType

from tidings.engine.runner import Engine, Request
from tidings.protocols.accept import negotiate, parse_accept, quality
from tidings.transports.common import declares_json, header
from tidings.types import Message, Receive, Scope

__all__ = ["EVENT_STREAM", "GRAPHQL_RESPONSE_JSON", "JSON", "Route", "buffer_body", "route"]

JSON: Final = "application/json"
GRAPHQL_RESPONSE_JSON: Final = "application/graphql-response+json"
EVENT_STREAM: Final = "text/event-stream"
# The server's order breaks ties: application/json first, as the spec asks for */*.
_OFFERED: Final = (JSON, GRAPHQL_RESPONSE_JSON, EVENT_STREAM)
_TOKEN_HEADER: Final = b"x-graphql-event-stream-token"


class Route:
    """Where ``route`` sends a request: SSE, or plain HTTP answered in ``media_type``."""

    __slots__ = ("media_type", "receive", "sse")

    def __init__(self, *, sse: bool, media_type: str, receive: Receive) -> None:
        self.sse = sse
        self.media_type = media_type
        self.receive = receive
        """The request's ``receive``: a replay of the body when routing had to read it."""


def reservation_param(scope: Scope) -> str | None:
    """A graphql-sse reservation token given as the ``token`` query parameter.

    A ``token`` holding a JWT (it has dots) authenticates an EventSource instead.
    """
    if b"token=" not in scope.get("query_string", b""):
        return None
    value = parse_qs(scope["query_string"].decode("latin-1")).get("token", [""])[0]
    return value if value and value.count(".") != 2 else None


async def route(engine: Engine, scope: Scope, receive: Receive) -> Route:
    """Decide between SSE and plain HTTP, reading a POST body only when the operation type decides."""
    accept = header(scope, b"accept")
    method = scope["method"]
    media_type = negotiate(accept, _OFFERED) or JSON  # nothing acceptable: the spec's default
    if (
        method in ("PUT", "DELETE")
        or media_type == EVENT_STREAM
        or header(scope, _TOKEN_HEADER) is not None
        or reservation_param(scope) is not None
    ):
        return Route(sse=True, media_type=EVENT_STREAM, receive=receive)
    stream = quality(parse_accept(accept), EVENT_STREAM)
    if stream is None or stream.q <= 0 or stream.specificity < 2 or method not in ("GET", "POST"):
        return Route(sse=False, media_type=media_type, receive=receive)
    if method == "GET":
        params = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        query, name = params.get("query", [""])[0], params.get("operationName", [None])[0]
    elif declares_json(scope):
        body, receive = await buffer_body(receive)
        query, name = _operation(body)
    else:
        return Route(sse=False, media_type=media_type, receive=receive)
    # Cheap test first: the engine's parse is cached, but most requests are not subscriptions.
    if "subscription" in query and await engine.operation_type(Request(query, None, name, None)) is (
        OperationType.SUBSCRIPTION
    ):
        return Route(sse=True, media_type=EVENT_STREAM, receive=receive)
    return Route(sse=False, media_type=media_type, receive=receive)


def _operation(body: bytes) -> tuple[str, str | None]:
    """The query and operation name of a JSON body ("" if it has none: the handler says why)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", None
    if not isinstance(data, dict) or not isinstance(data.get("query"), str):
        return "", None
    name = data.get("operationName")
    return data["query"], name if isinstance(name, str) else None


async def buffer_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read the whole body (``receive`` enforces the size limit) and a ``receive`` replaying it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            # The client left: whoever reads next sees the disconnect.
            return b"", _replay([message], receive)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    return body, _replay([{"type": "http.request", "body": body, "more_body": False}], receive)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    async def replay() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return replay
