"""The floor: a bare ASGI broadcast on the same uvicorn and WebSocket stack.

It speaks just enough graphql-transport-ws (connection_init -> ack, subscribe,
ping -> pong), and per published message serializes one `next` frame once and
sends the same text to every subscriber of the room, with no per-subscriber work.

    python -m uvicorn bench.raw_ws:app --port 8002
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

Send = Callable[[dict[str, Any]], Awaitable[None]]
ROOMS: dict[str, dict[Send, str]] = {}
SEQ = itertools.count(1)
ACK = '{"type":"connection_ack"}'
PONG = '{"type":"pong"}'


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "websocket":
        await _websocket(receive, send)
    else:
        await _publish(receive, send)


async def _websocket(receive: Callable[[], Awaitable[dict[str, Any]]], send: Send) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept", "subprotocol": "graphql-transport-ws"})
    rooms: list[str] = []
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
                rooms.append(room)
    finally:
        for room in rooms:
            ROOMS.get(room, {}).pop(send, None)


async def _publish(receive: Callable[[], Awaitable[dict[str, Any]]], send: Send) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    values = orjson.loads(body)["variables"]["i"]
    seq = next(SEQ)
    record = {"id": str(seq), "room": values["room"], "author": values["author"], "body": values["body"]}
    subscribers = ROOMS.get(values["room"], {})
    if subscribers:
        # One serialization; every subscriber of this benchmark uses operation id "1".
        frame = orjson.dumps(
            {
                "id": "1",
                "type": "next",
                "payload": {"data": {"messageEvents": {"operation": "CREATED", "seq": str(seq), "record": record}}},
            }
        ).decode()
        for target in list(subscribers):
            try:
                await target({"type": "websocket.send", "text": frame})
            except Exception:  # a closed socket; its receive loop cleans up
                subscribers.pop(target, None)
    out = orjson.dumps({"data": {"createMessage": {"id": record["id"]}}})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})
