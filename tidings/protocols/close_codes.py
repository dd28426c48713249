"""The WebSocket close codes tidings sends, named in one enum, and close reason truncation."""

from __future__ import annotations

import enum

__all__ = ["MAX_CLOSE_REASON_BYTES", "CloseCode", "close_reason"]

MAX_CLOSE_REASON_BYTES = 123
"""RFC 6455 5.5: a control frame payload is at most 125 bytes, 2 of them the code."""


class CloseCode(enum.IntEnum):
    """Close codes of RFC 6455, graphql-ws (``src/common.ts``) and our own.

    Whether the graphql-ws client retries matters when picking one: it gives up after
    4400, 4401, 4406, 4409, 4429, 4500 and 1xxx codes other than 1000/1001/1012/1013,
    and retries after 4403, 4408 and any other 4xxx code (docs/protocols.md).
    """

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    INVALID_FRAME_PAYLOAD_DATA = 1007
    """A text message that is not UTF-8 (RFC 6455 8.1)."""
    POLICY_VIOLATION = 1008
    """An admin closed the connection (``closeConnection``), or its Origin is not allowed."""
    MESSAGE_TOO_BIG = 1009
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    SLOW_CONSUMER = 4008
    """Ours, retryable: the client fell behind and should resume with its last seq."""
    BAD_REQUEST = 4400
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    SUBPROTOCOL_NOT_ACCEPTABLE = 4406
    CONNECTION_INIT_TIMEOUT = 4408
    SUBSCRIBER_ALREADY_EXISTS = 4409
    TOO_MANY_INITIALISATION_REQUESTS = 4429
    INTERNAL_SERVER_ERROR = 4500


def close_reason(text: str) -> str:
    """Return ``text`` cut to at most 123 UTF-8 bytes, never splitting a character."""
    # A lone surrogate cannot go on the wire: it becomes "?" rather than an exception.
    encoded = text.encode("utf-8", errors="replace")
    # Decoding with "ignore" drops only the bytes of a character cut at the end.
    return encoded[:MAX_CLOSE_REASON_BYTES].decode("utf-8", errors="ignore")
