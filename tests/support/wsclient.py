"""A small raw WebSocket client for protocol-level tests (real sockets)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection


class WS:
    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    @classmethod
    async def open(cls, url: str, subprotocol: str = "graphql-transport-ws", **kw: Any) -> WS:
        conn = await websockets.connect(url, subprotocols=[subprotocol], **kw)  # type: ignore[list-item]
        return cls(conn)

    async def send(self, message: dict[str, Any]) -> None:
        await self.conn.send(json.dumps(message))

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            raw = await asyncio.wait_for(self.conn.recv(), timeout)
            message = json.loads(raw)
            if message.get("type") in ("ping", "ka"):
                continue
            return message  # type: ignore[no-any-return]

    async def init(self, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        await self.send({"type": "connection_init", "payload": payload or {}})
        return await self.recv()

    async def subscribe(self, op_id: str, query: str, variables: dict[str, Any] | None = None) -> None:
        kind = "subscribe" if self.conn.subprotocol == "graphql-transport-ws" else "start"
        await self.send({"id": op_id, "type": kind, "payload": {"query": query, "variables": variables or {}}})

    async def closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        try:
            while True:
                await asyncio.wait_for(self.conn.recv(), timeout)
        except websockets.ConnectionClosed as exc:
            rcvd = exc.rcvd
            return (rcvd.code, rcvd.reason) if rcvd else (None, "")

    async def no_message(self, within: float = 0.3) -> bool:
        try:
            message = await self.recv(timeout=within)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected message {message}")

    async def close(self) -> None:
        await self.conn.close()
