"""Helpers for the pure protocol tests (tests/test_protocol_*.py): frames, and state machines past the handshake."""

from __future__ import annotations

from typing import Any

import orjson

from tidings.protocols import Authenticate, Close, CloseCode, LegacyWsProtocol, Send, Start, TransportWsProtocol

QUERY = "subscription { messages { id } }"


def frame(**message: Any) -> str:
    return orjson.dumps(message).decode()


def subscribe(op_id: str, query: str = QUERY, **payload: Any) -> str:
    return frame(id=op_id, type="subscribe", payload={"query": query, **payload})


def start(op_id: str, query: str = QUERY, **payload: Any) -> str:
    return frame(id=op_id, type="start", payload={"query": query, **payload})


def started(op_id: str, query: str = QUERY) -> Start:
    return Start(id=op_id, query=query, variables=None, operation_name=None, extensions=None)


def acked_transport_ws(max_operations: int = 100) -> TransportWsProtocol:
    protocol = TransportWsProtocol(max_operations=max_operations)
    assert protocol.receive(frame(type="connection_init")) == [Authenticate(None)]
    assert protocol.acknowledge() == [Send({"type": "connection_ack"})]
    return protocol


def acked_legacy_ws(max_operations: int = 100) -> LegacyWsProtocol:
    protocol = LegacyWsProtocol(max_operations=max_operations)
    assert protocol.receive(frame(type="connection_init")) == [Authenticate(None)]
    protocol.acknowledge()
    return protocol


def close_code(commands: list[Any]) -> CloseCode:
    assert len(commands) == 1, commands
    assert isinstance(commands[0], Close), commands
    return commands[0].code
