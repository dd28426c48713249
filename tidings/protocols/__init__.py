"""The subscription protocols as sans-I/O state machines: no asyncio, no sockets, no clock.

``tidings.transports`` feeds them frames and requests and carries out what they return.
"""

from tidings.protocols.close_codes import CloseCode, close_reason
from tidings.protocols.commands import Authenticate, Close, Command, Send, Start, Stop
from tidings.protocols.legacy_ws import LegacyWsProtocol
from tidings.protocols.reservations import (
    STATUS_BY_OUTCOME,
    Reservations,
    SingleConnectionRequest,
    StreamResult,
    classify_request,
    status_for,
)
from tidings.protocols.sse import (
    SSEEvent,
    SSEParser,
    encode_comment,
    encode_complete,
    encode_event,
    encode_next,
    encode_retry,
)
from tidings.protocols.state import Phase
from tidings.protocols.transport_ws import TransportWsProtocol

__all__ = [
    "STATUS_BY_OUTCOME",
    "Authenticate",
    "Close",
    "CloseCode",
    "Command",
    "LegacyWsProtocol",
    "Phase",
    "Reservations",
    "SSEEvent",
    "SSEParser",
    "Send",
    "SingleConnectionRequest",
    "Start",
    "Stop",
    "StreamResult",
    "TransportWsProtocol",
    "classify_request",
    "close_reason",
    "encode_comment",
    "encode_complete",
    "encode_event",
    "encode_next",
    "encode_retry",
    "status_for",
]
