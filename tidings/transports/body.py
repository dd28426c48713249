"""The request body limit on every HTTP path: refused with 413 before it is read past the limit.

A declared ``Content-Length`` over the limit is answered before any of the body is
read; a chunked (or understated) body is counted as it streams in, and the request
is answered the moment the count passes the limit. What the client still sends is
discarded as it arrives (uvicorn drops body bytes once the response is complete),
never buffered, and the body deadline of ``tidings.serving`` ends an upload that
does not stop. The connection is not closed at once on purpose: a client that
writes its whole body before reading (most do) would get a reset instead of the 413.
"""

from __future__ import annotations

from typing import Any

import orjson

from tidings.errors import ErrorCode
from tidings.transports.common import header


class BodyTooLarge(Exception):
    """Raised by a ``LimitedReceive`` when the body passes its limit."""


class LimitedReceive:
    """An ASGI ``receive`` that counts body bytes and raises past ``limit``."""

    __slots__ = ("_receive", "limit", "received")

    def __init__(self, receive: Any, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.received = 0

    async def __call__(self) -> dict[str, Any]:
        message: dict[str, Any] = await self._receive()
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


async def respond_too_large(send: Any, limit: int) -> None:
    body = too_large_body(limit)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def limit_body(app: Any, scope: dict[str, Any], receive: Any, send: Any, limit: int) -> None:
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
