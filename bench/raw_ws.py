"""The floor: a bare ASGI broadcast on the same uvicorn and WebSocket stack as the others.

It speaks just enough graphql-transport-ws (connection_init -> connection_ack,
subscribe -> remember the socket, ping -> pong). A POST (any path; the body is the
tidings mutation request, ``{"variables": {"i": {"room", "author", "body"}}}``) is
answered, then it serializes ONE ``next`` frame with orjson and sends the same text to every
subscriber of the room: no per-subscriber work beyond the send. Every subscriber
gets the operation id of the room's first subscription (the load client uses one
id, "1", per connection).

Run by the benchmarks with ``python -m uvicorn raw_ws:app --app-dir bench``.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

ROOMS: dict[str, dict[Send, str]] = {}  # room -> {socket's send: operation id}
_seq = itertools.count(1)
ACK = '{"type":"connection_ack"}'
PONG = '{"type":"pong"}'


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await _websocket(receive, send)
    elif scope["type"] == "http":
        await _publish(receive, send)
    elif scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _websocket(receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept", "subprotocol": "graphql-transport-ws"})
    joined: list[str] = []
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            data = orjson.loads(message.get("text") or message.get("bytes") or b"{}")
            kind = data.get("type")
            if kind == "connection_init":
                await send({"type": "websocket.send", "text": ACK})
            elif kind == "ping":
                await send({"type": "websocket.send", "text": PONG})
            elif kind == "subscribe":
                room = data["payload"]["variables"]["room"]
                ROOMS.setdefault(room, {})[send] = data["id"]
                joined.append(room)
    finally:
        for room in joined:
            ROOMS.get(room, {}).pop(send, None)


async def _publish(receive: Receive, send: Send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    values = orjson.loads(body)["variables"]["i"]
    seq = str(next(_seq))
    record = {"id": seq, "room": values["room"], "author": values["author"], "body": values["body"]}
    # Answer first, then fan out (as tidings and the naive server do: their mutations return before
    # the deliveries), so a publisher waiting for the answer does not wait for the fan-out too.
    out = orjson.dumps({"data": {"createMessage": {"id": seq}}})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})
    subscribers = ROOMS.get(values["room"])
    if subscribers:
        op_id = next(iter(subscribers.values()))
        event = {"operation": "CREATED", "seq": seq, "record": record}
        frame = orjson.dumps({"id": op_id, "type": "next", "payload": {"data": {"messageEvents": event}}}).decode()
        message = {"type": "websocket.send", "text": frame}
        for target in list(subscribers):
            try:
                await target(message)
            except Exception:  # a closed socket; its receive loop cleans up
                subscribers.pop(target, None)
