"""graphql-sse (enisdenjo/graphql-sse PROTOCOL.md): event stream encoding and a pure incremental parser.

The reservations of single connection mode live in ``tidings.protocols.reservations``
and are re-exported here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import orjson

from tidings.protocols.reservations import (
    ALLOW,
    STATUS_BY_OUTCOME,
    Reservations,
    SingleConnectionRequest,
    StreamResult,
    classify_request,
    status_for,
)

__all__ = [
    "ALLOW",
    "OPERATION_ID_PARAM",
    "RESPONSE_HEADERS",
    "STATUS_BY_OUTCOME",
    "TOKEN_HEADER",
    "TOKEN_QUERY_PARAM",
    "Reservations",
    "SSEEvent",
    "SSEParser",
    "SingleConnectionRequest",
    "StreamResult",
    "classify_request",
    "encode_comment",
    "encode_complete",
    "encode_event",
    "encode_next",
    "encode_retry",
    "status_for",
]

TOKEN_HEADER: Final = "x-graphql-event-stream-token"  # noqa: S105 (a header name)
"""Single connection mode: the request header carrying the reservation token (E9)."""
TOKEN_QUERY_PARAM: Final = "token"  # noqa: S105 (a parameter name)
"""Single connection mode: the query parameter carrying the token, for ``EventSource`` (E9)."""
OPERATION_ID_PARAM: Final = "operationId"
"""Single connection mode: the query parameter of ``DELETE`` naming the operation (E12)."""

RESPONSE_HEADERS: Final[tuple[tuple[str, str], ...]] = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache, no-transform"),
    ("content-encoding", "none"),
    ("x-accel-buffering", "no"),
)
"""Headers of an event stream response (E5). ``connection: keep-alive`` is left out: it
is hop-by-hop and forbidden in HTTP/2, and the server manages the connection itself."""

_LINE_BREAK: Final = re.compile(r"\r\n|\r|\n")
_RETRY_VALUE: Final = re.compile(r"[0-9]+")


def _check_field(name: str, value: str) -> None:
    # A line break would end the field early and let the rest inject fields of its own.
    if "\n" in value or "\r" in value:
        raise ValueError(f"SSE {name} must not contain a line break, got {value!r}")
    if "\0" in value:
        raise ValueError(f"SSE {name} must not contain NUL, got {value!r}")


def encode_event(event: str, data: str, id: str | None = None) -> str:  # noqa: A002 (the wire field's name)
    """One SSE event block: ``id:`` (if given), ``event:``, ``data:`` lines, a blank line.

    Multi-line ``data`` becomes one ``data:`` line per line. There is always at least one
    ``data:`` line, even for empty data: browsers drop an event without one (E3).
    """
    _check_field("event", event)
    head = "event: " + event + "\n"
    if id is not None:
        _check_field("id", id)
        head = "id: " + id + "\n" + head
    if "\n" not in data and "\r" not in data:
        return head + "data: " + data + "\n\n"
    return head + "".join("data: " + line + "\n" for line in _LINE_BREAK.split(data)) + "\n"


def encode_comment(text: str = "") -> str:
    """A comment block, ignored by clients: the keepalive of an event stream (E6)."""
    if not text:
        return ":\n\n"
    return "".join(": " + line + "\n" for line in _LINE_BREAK.split(text)) + "\n"


def encode_retry(ms: int) -> str:
    """A ``retry:`` block setting the client's reconnection delay in milliseconds."""
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
        raise ValueError(f"retry must be a non-negative integer of milliseconds, got {ms!r}")
    return "retry: " + str(ms) + "\n\n"


def encode_next(payload_json: str, *, operation_id: str | None = None, event_id: str | None = None) -> str:
    """A ``next`` event around an already serialised ExecutionResult.

    Distinct connections mode sends the result as the data; single connection mode
    (``operation_id`` given) wraps it as ``{"id": ..., "payload": ...}``. ``event_id``
    is our resume extension: the ``id:`` a browser echoes as ``Last-Event-ID``.
    """
    if operation_id is not None:
        payload_json = '{"id":' + orjson.dumps(operation_id).decode() + ',"payload":' + payload_json + "}"
    return encode_event("next", payload_json, event_id)


def encode_complete(*, operation_id: str | None = None, event_id: str | None = None) -> str:
    """A ``complete`` event: empty data, or ``{"id": ...}`` in single connection mode."""
    data = "" if operation_id is None else '{"id":' + orjson.dumps(operation_id).decode() + "}"
    return encode_event("complete", data, event_id)


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event; ``event`` is ``"message"`` when the block named none."""

    event: str
    data: str
    id: str | None = None


class SSEParser:
    """A pure incremental parser of an event stream, as the WHATWG HTML spec interprets one.

    ``feed`` takes text in chunks split anywhere (decode bytes with an incremental UTF-8
    decoder first) and returns the events completed so far. Lines end in CRLF, LF or CR;
    comments are skipped; a block without ``data:`` dispatches nothing, as in browsers.
    ``last_event_id`` and ``retry`` keep the latest values seen.
    """

    __slots__ = (
        "_at_start",
        "_buffer",
        "_data",
        "_event",
        "_id",
        "_skip_lf",
        "last_event_id",
        "retry",
    )

    def __init__(self) -> None:
        self._buffer = ""
        self._at_start = True
        self._skip_lf = False
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, chunk: str) -> list[SSEEvent]:
        """Parse ``chunk`` and return the events it completes, in order."""
        if not chunk:
            return []
        if self._skip_lf:
            # The previous chunk ended in CR: an LF opening this one ends the same line.
            self._skip_lf = False
            chunk = chunk[1:] if chunk[0] == "\n" else chunk
        text = self._buffer + chunk
        if self._at_start and text:
            self._at_start = False
            if text[0] == "\ufeff":
                text = text[1:]
        events: list[SSEEvent] = []
        start = 0
        for match in _LINE_BREAK.finditer(text):
            self._process_line(text[start : match.start()], events)
            start = match.end()
        if start == len(text) and text.endswith("\r"):
            self._skip_lf = True
        self._buffer = text[start:]
        return events

    def _process_line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line[0] == ":":
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self._id = value
                self.last_event_id = value
        elif field == "retry" and _RETRY_VALUE.fullmatch(value):
            self.retry = int(value)

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data:
            events.append(SSEEvent(self._event or "message", "\n".join(self._data), self._id))
        self._event = ""
        self._data = []
        self._id = None
