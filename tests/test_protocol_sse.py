"""Pure tests of graphql-sse (tidings/protocols/sse.py): encoding, parsing, request classification.

Rows E1-E13 are those of docs/protocols.md. No sockets, no clock.
"""

from __future__ import annotations

import re

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.protocols import (
    STATUS_BY_OUTCOME,
    SingleConnectionRequest,
    SSEEvent,
    SSEParser,
    StreamResult,
    classify_request,
    encode_comment,
    encode_complete,
    encode_event,
    encode_next,
    encode_retry,
    sse,
    status_for,
)

pytestmark = pytest.mark.timeout(30)


# graphql-sse: encoding


def test_encode_event_writes_event_and_data_lines() -> None:
    assert encode_event("next", '{"data":{}}') == 'event: next\ndata: {"data":{}}\n\n'


def test_encode_event_puts_the_id_first() -> None:
    assert encode_event("next", "{}", id="42") == "id: 42\nevent: next\ndata: {}\n\n"


def test_encode_event_always_writes_a_data_line() -> None:
    assert encode_event("complete", "") == "event: complete\ndata: \n\n"


@pytest.mark.parametrize("data", ["a\nb\nc", "a\r\nb\r\nc", "a\rb\rc"])
def test_encode_event_splits_multiline_data(data: str) -> None:
    assert encode_event("next", data) == "event: next\ndata: a\ndata: b\ndata: c\n\n"


@pytest.mark.parametrize(("event", "event_id"), [("ne\nxt", None), ("next", "1\r2"), ("next", "1\x002")])
def test_encode_event_refuses_a_field_that_would_break_the_stream(event: str, event_id: str | None) -> None:
    with pytest.raises(ValueError, match="must not contain"):
        encode_event(event, "{}", event_id)


def test_encode_comment_is_a_colon_line() -> None:
    assert encode_comment() == ":\n\n"
    assert encode_comment("keepalive") == ": keepalive\n\n"
    assert encode_comment("a\nb") == ": a\n: b\n\n"


def test_encode_retry_sets_the_reconnection_delay() -> None:
    assert encode_retry(3000) == "retry: 3000\n\n"
    parser = SSEParser()
    assert parser.feed(encode_retry(3000)) == []
    assert parser.retry == 3000
    with pytest.raises(ValueError, match="non-negative integer"):
        encode_retry(-1)


def test_encode_next_and_complete_in_distinct_connections_mode() -> None:
    assert encode_next('{"data":{"n":1}}') == 'event: next\ndata: {"data":{"n":1}}\n\n'
    assert encode_complete() == "event: complete\ndata: \n\n"


def test_encode_next_and_complete_in_single_connection_mode() -> None:
    text = encode_next('{"data":{"n":1}}', operation_id="op-1", event_id="17")
    assert text == 'id: 17\nevent: next\ndata: {"id":"op-1","payload":{"data":{"n":1}}}\n\n'
    assert encode_complete(operation_id="op-1") == 'event: complete\ndata: {"id":"op-1"}\n\n'
    [event] = SSEParser().feed(text)
    assert orjson.loads(event.data) == {"id": "op-1", "payload": {"data": {"n": 1}}}
    assert event.id == "17"


def test_response_headers_declare_an_uncached_event_stream() -> None:
    headers = dict(sse.RESPONSE_HEADERS)
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert "no-cache" in headers["cache-control"]
    assert headers["x-accel-buffering"] == "no"


# graphql-sse: parser


def test_parser_reads_encoded_events() -> None:
    parser = SSEParser()
    text = encode_event("next", '{"a":1}', id="1") + encode_comment() + encode_event("complete", "")
    assert parser.feed(text) == [
        SSEEvent("next", '{"a":1}', "1"),
        SSEEvent("complete", "", None),
    ]


def test_parser_accepts_crlf_and_cr_line_endings() -> None:
    parser = SSEParser()
    assert parser.feed("event: a\r\ndata: 1\r\n\r\nevent: b\rdata: 2\r\r") == [
        SSEEvent("a", "1"),
        SSEEvent("b", "2"),
    ]


def test_parser_joins_data_lines_with_newlines() -> None:
    assert SSEParser().feed("data: a\ndata:b\ndata:  c\ndata\n\n") == [SSEEvent("message", "a\nb\n c\n")]


def test_parser_skips_comments_and_unknown_fields() -> None:
    assert SSEParser().feed(": hello\nfoo: bar\nevent: x\n: mid\ndata: 1\n\n") == [SSEEvent("x", "1")]


def test_parser_drops_a_block_without_data_like_a_browser() -> None:
    parser = SSEParser()
    assert parser.feed("event: complete\n\n") == []
    assert parser.feed("data: next\n\n") == [SSEEvent("message", "next")]


def test_parser_keeps_the_last_event_id_and_ignores_ids_with_nul() -> None:
    parser = SSEParser()
    parser.feed("id: 5\ndata: a\n\n")
    assert parser.feed("id: 6\x00\ndata: b\n\n") == [SSEEvent("message", "b", None)]
    assert parser.last_event_id == "5"


def test_parser_strips_a_leading_bom_only() -> None:
    parser = SSEParser()
    assert parser.feed("\ufeff") == []
    assert parser.feed("data: x\n\n") == [SSEEvent("message", "x")]
    assert SSEParser().feed("\ufeffdata: y\n\n\ufeffdata: z\n\n") == [SSEEvent("message", "y")]


def test_parser_handles_crlf_split_across_chunks() -> None:
    parser = SSEParser()
    assert parser.feed("data: a\r") == []
    assert parser.feed("\n\r") == [SSEEvent("message", "a")]
    assert parser.feed("\ndata: b\r\n\r\n") == [SSEEvent("message", "b")]


def test_parser_waits_for_the_end_of_a_split_line() -> None:
    parser = SSEParser()
    assert parser.feed("eve") == []
    assert parser.feed("nt: next\nda") == []
    assert parser.feed("ta: {}\n") == []
    assert parser.feed("\n") == [SSEEvent("next", "{}")]


_FIELD = st.text(st.characters(exclude_characters="\r\n\x00"), min_size=1)
_EVENTS = st.lists(st.tuples(_FIELD, st.text(), st.none() | _FIELD, st.booleans()), max_size=8)


@given(_EVENTS, st.data())
def test_parser_gives_the_same_events_however_the_stream_is_split(
    events: list[tuple[str, str, str | None, bool]], data: st.DataObject
) -> None:
    text = "".join(
        (encode_comment("ping") if comment else "") + encode_event(event, body, event_id)
        for event, body, event_id, comment in events
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=12)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    parser = SSEParser()
    received = [event for piece in pieces for event in parser.feed(piece)]
    assert received == [
        SSEEvent(event, re.sub(r"\r\n|\r", "\n", body), event_id) for event, body, event_id, _ in events
    ]


# graphql-sse single connection mode: request classification (E8-E13)


@pytest.mark.parametrize(
    ("method", "accept", "has_token", "has_operation_id", "expected"),
    [
        ("PUT", None, False, False, SingleConnectionRequest.RESERVE),
        ("PUT", "*/*", False, False, SingleConnectionRequest.RESERVE),
        ("put", "text/plain; charset=utf-8", False, False, SingleConnectionRequest.RESERVE),
        ("PUT", "application/json", False, False, StreamResult.NOT_ACCEPTABLE),
        ("PUT", "text/event-stream", False, False, StreamResult.NOT_ACCEPTABLE),
        ("GET", "text/event-stream", True, False, SingleConnectionRequest.OPEN_STREAM),
        ("GET", "text/event-stream", False, False, SingleConnectionRequest.DISTINCT),
        ("POST", "text/event-stream", False, False, SingleConnectionRequest.DISTINCT),
        ("POST", "application/json", True, False, SingleConnectionRequest.EXECUTE),
        ("POST", "text/event-stream", True, False, SingleConnectionRequest.EXECUTE),
        ("GET", "application/json", True, False, SingleConnectionRequest.EXECUTE),
        ("POST", "application/json", False, False, StreamResult.NOT_FOUND),
        ("DELETE", None, True, True, SingleConnectionRequest.STOP),
        ("DELETE", None, True, False, StreamResult.BAD_REQUEST),
        ("DELETE", None, False, True, StreamResult.NOT_FOUND),
        ("PATCH", None, True, True, StreamResult.METHOD_NOT_ALLOWED),
        ("OPTIONS", None, False, False, StreamResult.METHOD_NOT_ALLOWED),
    ],
)
def test_classify_request(
    method: str,
    accept: str | None,
    has_token: bool,
    has_operation_id: bool,
    expected: SingleConnectionRequest | StreamResult,
) -> None:
    assert classify_request(method, accept=accept, has_token=has_token, has_operation_id=has_operation_id) is expected


@pytest.mark.parametrize(
    ("request_kind", "result", "status"),
    [
        (SingleConnectionRequest.RESERVE, StreamResult.OK, 201),
        (SingleConnectionRequest.RESERVE, StreamResult.CONFLICT, 409),
        (SingleConnectionRequest.RESERVE, StreamResult.TOO_MANY, 429),
        (SingleConnectionRequest.OPEN_STREAM, StreamResult.OK, 200),
        (SingleConnectionRequest.OPEN_STREAM, StreamResult.NOT_FOUND, 404),
        (SingleConnectionRequest.OPEN_STREAM, StreamResult.CONFLICT, 409),
        (SingleConnectionRequest.EXECUTE, StreamResult.OK, 202),
        (SingleConnectionRequest.EXECUTE, StreamResult.NOT_FOUND, 404),
        (SingleConnectionRequest.EXECUTE, StreamResult.CONFLICT, 409),
        (SingleConnectionRequest.STOP, StreamResult.OK, 200),
        (SingleConnectionRequest.STOP, StreamResult.NOT_FOUND, 404),
    ],
)
def test_status_for_maps_outcomes_to_http_statuses(
    request_kind: SingleConnectionRequest, result: StreamResult, status: int
) -> None:
    assert status_for(request_kind, result) == status


def test_refusals_before_the_registry_have_their_statuses() -> None:
    assert STATUS_BY_OUTCOME[StreamResult.BAD_REQUEST] == 400
    assert STATUS_BY_OUTCOME[StreamResult.METHOD_NOT_ALLOWED] == 405
    assert STATUS_BY_OUTCOME[StreamResult.NOT_ACCEPTABLE] == 406
    assert sse.ALLOW == "GET, POST, PUT, DELETE"
    with pytest.raises(ValueError, match="distinct connections mode"):
        status_for(SingleConnectionRequest.DISTINCT, StreamResult.OK)
