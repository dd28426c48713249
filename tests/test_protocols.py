"""Pure tests of the protocol state machines, message by message: no sockets, no clock.

Rows W1-W15, L1-L7 and E1-E13 are those of docs/protocols.md.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tidings.protocols
from tidings.protocols import (
    STATUS_BY_OUTCOME,
    Authenticate,
    Close,
    CloseCode,
    LegacyWsProtocol,
    Phase,
    Reservations,
    Send,
    SingleConnectionRequest,
    SSEEvent,
    SSEParser,
    Start,
    Stop,
    StreamResult,
    TransportWsProtocol,
    classify_request,
    close_reason,
    encode_comment,
    encode_complete,
    encode_event,
    encode_next,
    encode_retry,
    legacy_ws,
    sse,
    status_for,
    transport_ws,
)

pytestmark = pytest.mark.timeout(30)

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


# close codes and commands


def test_close_codes_have_the_spec_numbers() -> None:
    assert {code.name: code.value for code in CloseCode} == {
        "NORMAL_CLOSURE": 1000,
        "GOING_AWAY": 1001,
        "INVALID_FRAME_PAYLOAD_DATA": 1007,
        "POLICY_VIOLATION": 1008,
        "MESSAGE_TOO_BIG": 1009,
        "SERVICE_RESTART": 1012,
        "TRY_AGAIN_LATER": 1013,
        "SLOW_CONSUMER": 4008,
        "BAD_REQUEST": 4400,
        "UNAUTHORIZED": 4401,
        "FORBIDDEN": 4403,
        "SUBPROTOCOL_NOT_ACCEPTABLE": 4406,
        "CONNECTION_INIT_TIMEOUT": 4408,
        "SUBSCRIBER_ALREADY_EXISTS": 4409,
        "TOO_MANY_INITIALISATION_REQUESTS": 4429,
        "INTERNAL_SERVER_ERROR": 4500,
    }


def test_client_side_close_codes_are_never_ours() -> None:
    # W14: 4499 Terminated, 4504 and 4004/4005 are synthesised by the graphql-ws client.
    assert {4499, 4504, 4004, 4005}.isdisjoint(CloseCode)


def test_short_close_reason_is_kept() -> None:
    assert close_reason("Unauthorized") == "Unauthorized"


def test_long_close_reason_is_cut_to_123_bytes() -> None:
    assert close_reason("x" * 500) == "x" * 123


def test_close_reason_never_splits_a_multibyte_character() -> None:
    assert close_reason("é" * 100) == "é" * 61
    assert close_reason("a" + "😀" * 40) == "a" + "😀" * 30


def test_close_reason_replaces_a_lone_surrogate() -> None:
    assert close_reason("bad \ud800 id") == "bad ? id"


@given(st.text())
def test_close_reason_is_a_utf8_prefix_of_at_most_123_bytes(text: str) -> None:
    reason = close_reason(text)
    assert len(reason.encode()) <= 123
    assert text.startswith(reason)
    if len(text.encode()) <= 123:
        assert reason == text


def test_commands_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Stop("1").id = "2"  # type: ignore[misc]


def test_protocols_public_api_is_pinned() -> None:
    assert sorted(tidings.protocols.__all__) == sorted(
        [
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
    )
    for name in tidings.protocols.__all__:
        assert getattr(tidings.protocols, name) is not None


# graphql-transport-ws: W1 subprotocol


def test_subprotocol_names_are_the_spec_names() -> None:
    assert transport_ws.SUBPROTOCOL == "graphql-transport-ws"
    assert legacy_ws.SUBPROTOCOL == "graphql-ws"


# W2 init timeout


def test_init_timeout_before_connection_init_closes_4408() -> None:
    protocol = TransportWsProtocol()
    assert protocol.init_timeout() == [Close(CloseCode.CONNECTION_INIT_TIMEOUT, "Connection initialisation timeout")]
    assert protocol.is_closed


def test_init_timeout_while_authenticating_closes_4408() -> None:
    protocol = TransportWsProtocol()
    protocol.receive(frame(type="connection_init"))
    assert close_code(protocol.init_timeout()) == CloseCode.CONNECTION_INIT_TIMEOUT
    assert protocol.acknowledge() == []


def test_init_timeout_after_ack_does_nothing() -> None:
    protocol = acked_transport_ws()
    assert protocol.init_timeout() == []
    assert protocol.is_acknowledged


# W3 one connection_init


def test_connection_init_asks_the_transport_to_authenticate() -> None:
    protocol = TransportWsProtocol()
    commands = protocol.receive(frame(type="connection_init", payload={"token": "t"}))
    assert commands == [Authenticate({"token": "t"})]
    assert protocol.phase is Phase.INITIALISING
    assert not protocol.is_acknowledged


def test_connection_init_with_null_payload_authenticates_with_none() -> None:
    protocol = TransportWsProtocol()
    assert protocol.receive(frame(type="connection_init", payload=None)) == [Authenticate(None)]


def test_second_connection_init_while_pending_closes_4429() -> None:
    protocol = TransportWsProtocol()
    protocol.receive(frame(type="connection_init"))
    assert protocol.receive(frame(type="connection_init")) == [
        Close(CloseCode.TOO_MANY_INITIALISATION_REQUESTS, "Too many initialisation requests")
    ]
    # The answer to the first init arrives after the close: it must send nothing.
    assert protocol.acknowledge() == []


def test_second_connection_init_after_ack_closes_4429() -> None:
    protocol = acked_transport_ws()
    commands = protocol.receive(frame(type="connection_init"))
    assert close_code(commands) == CloseCode.TOO_MANY_INITIALISATION_REQUESTS


# W4 reject


def test_reject_closes_4403_forbidden() -> None:
    protocol = TransportWsProtocol()
    protocol.receive(frame(type="connection_init"))
    assert protocol.reject() == [Close(CloseCode.FORBIDDEN, "Forbidden")]
    assert protocol.acknowledge() == []


def test_reject_after_ack_closes_4403_for_an_expired_token() -> None:
    protocol = acked_transport_ws()
    protocol.receive(subscribe("1"))
    assert protocol.reject("Token expired") == [Close(CloseCode.FORBIDDEN, "Token expired")]
    assert protocol.active_ids == set()
    assert protocol.next("1", {"data": {}}) == []


def test_reject_reason_is_truncated() -> None:
    protocol = TransportWsProtocol()
    [command] = protocol.reject("ü" * 200)
    assert isinstance(command, Close)
    assert len(command.reason.encode()) <= 123


# W5 ack


def test_acknowledge_sends_connection_ack() -> None:
    protocol = TransportWsProtocol()
    protocol.receive(frame(type="connection_init"))
    assert protocol.acknowledge() == [Send({"type": "connection_ack"})]
    assert protocol.is_acknowledged
    assert protocol.phase is Phase.ACKNOWLEDGED


def test_acknowledge_carries_its_payload() -> None:
    protocol = TransportWsProtocol()
    protocol.receive(frame(type="connection_init"))
    assert protocol.acknowledge({"user": "u1"}) == [Send({"type": "connection_ack", "payload": {"user": "u1"}})]


def test_acknowledge_without_connection_init_sends_nothing() -> None:
    protocol = TransportWsProtocol()
    assert protocol.acknowledge() == []
    assert not protocol.is_acknowledged


def test_acknowledge_twice_sends_one_ack() -> None:
    protocol = acked_transport_ws()
    assert protocol.acknowledge() == []


# W6 subscribe before ack


def test_subscribe_before_connection_init_closes_4401() -> None:
    protocol = TransportWsProtocol()
    assert protocol.receive(subscribe("1")) == [Close(CloseCode.UNAUTHORIZED, "Unauthorized")]


def test_subscribe_before_ack_closes_4401() -> None:
    protocol = TransportWsProtocol()
    protocol.receive(frame(type="connection_init"))
    assert close_code(protocol.receive(subscribe("1"))) == CloseCode.UNAUTHORIZED
    assert protocol.acknowledge() == []


# W7 one subscriber per id


def test_subscribe_after_ack_starts_the_operation() -> None:
    protocol = acked_transport_ws()
    commands = protocol.receive(
        subscribe(
            "1",
            variables={"room": 7},
            operationName="Messages",
            extensions={"persistedQuery": {"version": 1}},
        )
    )
    assert commands == [
        Start(
            id="1",
            query=QUERY,
            variables={"room": 7},
            operation_name="Messages",
            extensions={"persistedQuery": {"version": 1}},
        )
    ]
    assert protocol.is_active("1")
    assert set(protocol.active_ids) == {"1"}


def test_subscribe_with_null_optional_fields_starts() -> None:
    protocol = acked_transport_ws()
    commands = protocol.receive(subscribe("1", variables=None, operationName=None, extensions=None))
    assert commands == [started("1")]


def test_subscribe_with_an_active_id_closes_4409() -> None:
    protocol = acked_transport_ws()
    protocol.receive(subscribe("abc"))
    assert protocol.receive(subscribe("abc", "query { me { id } }")) == [
        Close(CloseCode.SUBSCRIBER_ALREADY_EXISTS, "Subscriber for abc already exists")
    ]


def test_subscribe_with_the_id_of_a_running_query_closes_4409() -> None:
    # "regardless of the operation type": a query still executing holds its id too.
    protocol = acked_transport_ws()
    protocol.receive(subscribe("q", "query { me { id } }"))
    assert close_code(protocol.receive(subscribe("q"))) == CloseCode.SUBSCRIBER_ALREADY_EXISTS


def test_4409_reason_with_a_huge_id_is_truncated() -> None:
    protocol = acked_transport_ws()
    protocol.receive(subscribe("i" * 1000))
    [command] = protocol.receive(subscribe("i" * 1000))
    assert isinstance(command, Close)
    assert command.code == CloseCode.SUBSCRIBER_ALREADY_EXISTS
    assert len(command.reason.encode()) == 123


@pytest.mark.parametrize("finish", ["server_complete", "client_complete", "error"])
def test_id_may_be_reused_after_its_operation_finished(finish: str) -> None:
    protocol = acked_transport_ws()
    protocol.receive(subscribe("1"))
    if finish == "server_complete":
        protocol.complete("1")
    elif finish == "client_complete":
        protocol.receive(frame(id="1", type="complete"))
    else:
        protocol.error("1", [{"message": "boom"}])
    assert protocol.receive(subscribe("1")) == [started("1")]


# operation cap (GHSA-hv3w-m4g2-5x77)


def test_subscribe_over_the_operation_cap_sends_error_and_keeps_the_socket() -> None:
    protocol = acked_transport_ws(max_operations=2)
    protocol.receive(subscribe("1"))
    protocol.receive(subscribe("2"))
    assert protocol.receive(subscribe("3")) == [
        Send(
            {
                "id": "3",
                "type": "error",
                "payload": [
                    {
                        "message": "Too many operations on this connection (limit 2)",
                        "extensions": {"code": "RATE_LIMITED"},
                    }
                ],
            }
        )
    ]
    assert not protocol.is_closed
    assert set(protocol.active_ids) == {"1", "2"}
    assert protocol.next("1", {"data": {"n": 1}}) == [Send({"id": "1", "type": "next", "payload": {"data": {"n": 1}}})]
    protocol.complete("2")
    assert protocol.receive(subscribe("3")) == [started("3")]


def test_operation_cap_defaults_to_100() -> None:
    protocol = acked_transport_ws()
    for n in range(100):
        assert protocol.receive(subscribe(str(n))) == [started(str(n))]
    [refusal] = protocol.receive(subscribe("100"))
    assert isinstance(refusal, Send)
    assert refusal.message["payload"][0]["message"] == ("Too many operations on this connection (limit 100)")


def test_operation_cap_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_operations must be at least 1, got 0"):
        TransportWsProtocol(max_operations=0)


# W8 results


def test_next_then_complete_streams_a_result() -> None:
    protocol = acked_transport_ws()
    protocol.receive(subscribe("1", "query { me { id } }"))
    assert protocol.next("1", {"data": {"me": {"id": "u1"}}}) == [
        Send({"id": "1", "type": "next", "payload": {"data": {"me": {"id": "u1"}}}})
    ]
    assert protocol.complete("1") == [Send({"id": "1", "type": "complete"})]
    assert not protocol.is_active("1")


def test_results_for_an_unknown_id_send_nothing() -> None:
    protocol = acked_transport_ws()
    assert protocol.next("nope", {"data": None}) == []
    assert protocol.error("nope", [{"message": "x"}]) == []
    assert protocol.complete("nope") == []


def test_encode_next_builds_the_same_frame_as_next() -> None:
    payload = {"data": {"messages": {"id": 1, "text": 'he said "hi" ✓'}}}
    text = TransportWsProtocol.encode_next('a"b\\c', orjson.dumps(payload).decode())
    assert text == '{"id":"a\\"b\\\\c","type":"next","payload":' + orjson.dumps(payload).decode() + "}"
    assert orjson.loads(text) == {"id": 'a"b\\c', "type": "next", "payload": payload}


_JSON_SCALARS = st.integers(-(2**53), 2**53) | st.text() | st.none()


@given(st.text(min_size=1), st.dictionaries(st.text(), _JSON_SCALARS))
def test_encode_next_decodes_to_the_next_message(op_id: str, data: dict[str, Any]) -> None:
    payload_json = orjson.dumps({"data": data}).decode()
    assert orjson.loads(TransportWsProtocol.encode_next(op_id, payload_json)) == {
        "id": op_id,
        "type": "next",
        "payload": {"data": data},
    }


# W9 error


def test_error_ends_the_operation_without_complete() -> None:
    protocol = acked_transport_ws()
    protocol.receive(subscribe("1", "query { nope }"))
    errors = [{"message": "Cannot query field 'nope' on type 'Query'."}]
    assert protocol.error("1", errors) == [Send({"id": "1", "type": "error", "payload": errors})]
    assert protocol.complete("1") == []
    assert protocol.next("1", {"data": None}) == []
    assert not protocol.is_closed


# W10 client complete


def test_client_complete_stops_the_operation_without_echo() -> None:
    protocol = acked_transport_ws()
    protocol.receive(subscribe("1"))
    assert protocol.receive(frame(id="1", type="complete")) == [Stop("1")]
    assert not protocol.is_active("1")
    # Results already in flight when the client completed are dropped, not sent.
    assert protocol.next("1", {"data": {}}) == []
    assert protocol.complete("1") == []


def test_client_complete_for_an_unknown_id_is_ignored() -> None:
    protocol = acked_transport_ws()
    assert protocol.receive(frame(id="ghost", type="complete")) == []
    assert not protocol.is_closed


def test_client_complete_racing_server_complete_is_ignored() -> None:
    protocol = acked_transport_ws()
    protocol.receive(subscribe("1"))
    protocol.complete("1")
    assert protocol.receive(frame(id="1", type="complete")) == []


# W11 ping and pong


def test_ping_is_answered_with_pong() -> None:
    protocol = acked_transport_ws()
    assert protocol.receive(frame(type="ping")) == [Send({"type": "pong"})]


def test_ping_payload_is_echoed_in_pong() -> None:
    protocol = acked_transport_ws()
    assert protocol.receive(frame(type="ping", payload={"t": 1})) == [Send({"type": "pong", "payload": {"t": 1}})]


def test_ping_before_connection_init_is_answered() -> None:
    protocol = TransportWsProtocol()
    assert protocol.receive(frame(type="ping")) == [Send({"type": "pong"})]
    assert protocol.phase is Phase.AWAITING_INIT


def test_unsolicited_pong_is_ignored() -> None:
    protocol = TransportWsProtocol()
    assert protocol.receive(frame(type="pong", payload={"beat": 1})) == []
    assert not protocol.is_closed


def test_keepalive_sends_a_ping() -> None:
    protocol = TransportWsProtocol()
    assert protocol.keepalive() == [Send({"type": "ping"})]
    assert TransportWsProtocol.ping_message() == {"type": "ping"}


# W12 invalid messages


def test_binary_frame_closes_4400() -> None:
    protocol = acked_transport_ws()
    assert protocol.receive(b'{"type":"ping"}') == [Close(CloseCode.BAD_REQUEST, "Binary frames are not supported")]


@pytest.mark.parametrize(
    "data",
    [
        "",
        "not json",
        '{"type":"ping"',
        "[1, 2]",
        '"ping"',
        "null",
        '{"payload":{}}',
        '{"type":5}',
        '{"type":"subscribe_all"}',
        '{"type":"connection_ack"}',
        '{"type":"next","id":"1","payload":{}}',
        '{"type":"error","id":"1","payload":[]}',
        '{"type":"ping","payload":[1]}',
        '{"type":"pong","payload":"x"}',
        '{"type":"connection_init","payload":"token"}',
        '{"type":"complete"}',
        '{"type":"complete","id":""}',
        '"\\ud800"',
    ],
)
def test_invalid_message_closes_4400(data: str) -> None:
    protocol = acked_transport_ws()
    commands = protocol.receive(data)
    assert close_code(commands) == CloseCode.BAD_REQUEST
    assert protocol.is_closed


@pytest.mark.parametrize(
    "message",
    [
        {"type": "subscribe", "payload": {"query": QUERY}},
        {"type": "subscribe", "id": "", "payload": {"query": QUERY}},
        {"type": "subscribe", "id": 1, "payload": {"query": QUERY}},
        {"type": "subscribe", "id": "1"},
        {"type": "subscribe", "id": "1", "payload": [QUERY]},
        {"type": "subscribe", "id": "1", "payload": {}},
        {"type": "subscribe", "id": "1", "payload": {"query": 5}},
        {"type": "subscribe", "id": "1", "payload": {"query": QUERY, "variables": []}},
        {"type": "subscribe", "id": "1", "payload": {"query": QUERY, "operationName": 1}},
        {"type": "subscribe", "id": "1", "payload": {"query": QUERY, "extensions": "x"}},
    ],
)
def test_malformed_subscribe_closes_4400(message: dict[str, Any]) -> None:
    protocol = acked_transport_ws()
    assert close_code(protocol.receive(orjson.dumps(message).decode())) == CloseCode.BAD_REQUEST


def test_malformed_subscribe_before_ack_closes_4400_like_the_reference() -> None:
    protocol = TransportWsProtocol()
    assert close_code(protocol.receive(frame(type="subscribe", id=""))) == CloseCode.BAD_REQUEST


def test_4400_reason_says_what_was_wrong() -> None:
    protocol = acked_transport_ws()
    [command] = protocol.receive(frame(type="subscribe", id="1", payload={"query": 5}))
    assert command == Close(CloseCode.BAD_REQUEST, 'Invalid message: "query" must be a string, got a number')


def test_unknown_fields_are_ignored() -> None:
    protocol = acked_transport_ws()
    assert protocol.receive(frame(type="ping", extra=True)) == [Send({"type": "pong"})]


# W13 server errors, and the closed state


def test_internal_error_closes_4500_with_a_generic_reason() -> None:
    protocol = acked_transport_ws()
    protocol.receive(subscribe("1"))
    assert protocol.close(CloseCode.INTERNAL_SERVER_ERROR, "Internal server error") == [
        Close(CloseCode.INTERNAL_SERVER_ERROR, "Internal server error")
    ]


def test_after_a_close_nothing_more_is_sent() -> None:
    protocol = acked_transport_ws()
    protocol.receive(subscribe("1"))
    protocol.close(CloseCode.SERVICE_RESTART, "Service restart")
    assert protocol.is_closed
    assert protocol.active_ids == set()
    assert protocol.receive(frame(type="ping")) == []
    assert protocol.receive(b"binary") == []
    assert protocol.next("1", {"data": {}}) == []
    assert protocol.complete("1") == []
    assert protocol.reject() == []
    assert protocol.close(CloseCode.INTERNAL_SERVER_ERROR) == []
    assert protocol.init_timeout() == []
    assert protocol.keepalive() == []


def test_active_ids_is_a_live_read_only_view() -> None:
    protocol = acked_transport_ws()
    view = protocol.active_ids
    protocol.receive(subscribe("1"))
    assert "1" in view
    assert len(view) == 1
    assert not hasattr(view, "add")
    assert not hasattr(view, "discard")


# legacy graphql-ws: L1 client messages


def test_legacy_connection_init_asks_the_transport_to_authenticate() -> None:
    protocol = LegacyWsProtocol()
    assert protocol.receive(frame(type="connection_init", payload={"authToken": "t"})) == [
        Authenticate({"authToken": "t"})
    ]


def test_legacy_start_after_ack_starts_the_operation() -> None:
    protocol = acked_legacy_ws()
    commands = protocol.receive(start("1", variables={"room": 7}, operationName="Messages"))
    assert commands == [
        Start(
            id="1",
            query=QUERY,
            variables={"room": 7},
            operation_name="Messages",
            extensions=None,
        )
    ]
    assert protocol.is_active("1")


def test_legacy_stop_stops_the_operation_and_completes_it() -> None:
    protocol = acked_legacy_ws()
    protocol.receive(start("1"))
    assert protocol.receive(frame(id="1", type="stop")) == [
        Stop("1"),
        Send({"id": "1", "type": "complete"}),
    ]
    assert not protocol.is_active("1")
    assert protocol.next("1", {"data": {}}) == []


def test_legacy_stop_for_an_unknown_id_is_ignored() -> None:
    protocol = acked_legacy_ws()
    assert protocol.receive(frame(id="ghost", type="stop")) == []


def test_legacy_connection_terminate_closes_1000() -> None:
    protocol = acked_legacy_ws()
    assert protocol.receive(frame(type="connection_terminate")) == [Close(CloseCode.NORMAL_CLOSURE, "")]


def test_legacy_second_connection_init_closes_4429() -> None:
    protocol = LegacyWsProtocol()
    protocol.receive(frame(type="connection_init"))
    assert close_code(protocol.receive(frame(type="connection_init"))) == (CloseCode.TOO_MANY_INITIALISATION_REQUESTS)


def test_legacy_init_timeout_closes_4408() -> None:
    protocol = LegacyWsProtocol()
    assert close_code(protocol.init_timeout()) == CloseCode.CONNECTION_INIT_TIMEOUT
    assert acked_legacy_ws().init_timeout() == []


# L2 server messages


def test_legacy_acknowledge_sends_ack_then_keepalive() -> None:
    protocol = LegacyWsProtocol()
    protocol.receive(frame(type="connection_init"))
    assert protocol.acknowledge() == [Send({"type": "connection_ack"}), Send({"type": "ka"})]
    assert protocol.is_acknowledged
    assert protocol.acknowledge() == []


def test_legacy_reject_sends_connection_error_then_closes_4403() -> None:
    protocol = LegacyWsProtocol()
    protocol.receive(frame(type="connection_init"))
    assert protocol.reject("Invalid token") == [
        Send({"type": "connection_error", "payload": {"message": "Invalid token"}}),
        Close(CloseCode.FORBIDDEN, "Invalid token"),
    ]
    assert protocol.reject() == []


def test_legacy_results_are_data_error_and_complete() -> None:
    protocol = acked_legacy_ws()
    protocol.receive(start("1"))
    protocol.receive(start("2", "query { nope }"))
    assert protocol.next("1", {"data": {"n": 1}}) == [Send({"id": "1", "type": "data", "payload": {"data": {"n": 1}}})]
    errors = [{"message": "Cannot query field 'nope' on type 'Query'."}]
    assert protocol.error("2", errors) == [Send({"type": "error", "id": "2", "payload": errors})]
    assert protocol.complete("2") == []
    assert protocol.complete("1") == [Send({"type": "complete", "id": "1"})]
    assert protocol.active_ids == set()


def test_legacy_encode_next_builds_a_data_frame() -> None:
    payload_json = orjson.dumps({"data": {"n": 1}}).decode()
    text = LegacyWsProtocol.encode_next("7", payload_json)
    assert text == '{"id":"7","type":"data","payload":{"data":{"n":1}}}'


# L3 keepalive


def test_legacy_keepalive_is_sent_only_after_ack() -> None:
    protocol = LegacyWsProtocol()
    assert protocol.keepalive() == []
    protocol.receive(frame(type="connection_init"))
    assert protocol.keepalive() == []
    protocol.acknowledge()
    assert protocol.keepalive() == [Send({"type": "ka"})]
    protocol.close(CloseCode.GOING_AWAY)
    assert protocol.keepalive() == []


# L4 parse errors answer connection_error without disconnecting


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not json", "Invalid message: not valid JSON"),
        ("[]", "Invalid message: expected a JSON object, got an array"),
        ('{"id":"1"}', 'Invalid message: "type" must be a string, got null'),
        (
            '{"type":"connection_init","payload":[]}',
            'Invalid message: "payload" must be an object or null, got an array',
        ),
        ('{"type":"stop","id":3}', 'Invalid message: "id" must be a non-empty string, got a number'),
        ('{"type":"start","payload":{"query":"{ a }"}}', 'Invalid message: "id" must be a non-empty string, got null'),
    ],
)
def test_legacy_parse_error_sends_connection_error_and_stays_open(data: str, message: str) -> None:
    protocol = acked_legacy_ws()
    assert protocol.receive(data) == [Send({"type": "connection_error", "payload": {"message": message}})]
    assert not protocol.is_closed
    assert protocol.receive(start("1")) == [started("1")]


def test_legacy_parse_error_before_init_keeps_the_handshake_possible() -> None:
    protocol = LegacyWsProtocol()
    [reply] = protocol.receive("{")
    assert isinstance(reply, Send)
    assert reply.message["type"] == "connection_error"
    assert protocol.receive(frame(type="connection_init")) == [Authenticate(None)]


def test_legacy_malformed_start_payload_errors_that_operation_only() -> None:
    protocol = acked_legacy_ws()
    assert protocol.receive(frame(id="1", type="start", payload={"query": 5})) == [
        Send(
            {
                "type": "error",
                "id": "1",
                "payload": [{"message": 'Invalid message: "query" must be a string, got a number'}],
            }
        )
    ]
    assert not protocol.is_active("1")
    assert not protocol.is_closed


def test_legacy_unknown_type_sends_error_with_its_id() -> None:
    protocol = acked_legacy_ws()
    assert protocol.receive(frame(id="9", type="subscribe")) == [
        Send({"type": "error", "id": "9", "payload": {"message": "Unknown message type"}})
    ]
    assert protocol.receive(frame(type="ka")) == [
        Send({"type": "error", "payload": {"message": "Unknown message type"}})
    ]
    assert not protocol.is_closed


# L5 query and subscription lifecycles


def test_legacy_query_gets_data_then_complete() -> None:
    protocol = acked_legacy_ws()
    protocol.receive(start("q", "query { me { id } }"))
    commands = protocol.next("q", {"data": {"me": None}}) + protocol.complete("q")
    assert [c.message["type"] for c in commands if isinstance(c, Send)] == ["data", "complete"]


def test_legacy_subscription_completes_only_after_stop() -> None:
    protocol = acked_legacy_ws()
    protocol.receive(start("s"))
    for n in range(3):
        assert protocol.next("s", {"data": {"n": n}})[0] == Send(
            {"id": "s", "type": "data", "payload": {"data": {"n": n}}}
        )
    assert protocol.receive(frame(id="s", type="stop"))[-1] == Send({"id": "s", "type": "complete"})


# L6 hardening


def test_legacy_start_before_connection_init_closes_4401() -> None:
    # GHSA-vpwc-v33q-mq89: start without connection_init must not bypass authentication.
    protocol = LegacyWsProtocol()
    assert protocol.receive(start("1")) == [Close(CloseCode.UNAUTHORIZED, "Unauthorized")]


def test_legacy_start_before_ack_closes_4401() -> None:
    protocol = LegacyWsProtocol()
    protocol.receive(frame(type="connection_init"))
    assert close_code(protocol.receive(start("1"))) == CloseCode.UNAUTHORIZED
    assert protocol.acknowledge() == []


def test_legacy_malformed_start_before_ack_still_closes_4401() -> None:
    protocol = LegacyWsProtocol()
    assert close_code(protocol.receive(frame(type="start"))) == CloseCode.UNAUTHORIZED


def test_legacy_start_over_the_operation_cap_sends_error_and_keeps_the_socket() -> None:
    protocol = acked_legacy_ws(max_operations=1)
    protocol.receive(start("1"))
    assert protocol.receive(start("2")) == [
        Send(
            {
                "type": "error",
                "id": "2",
                "payload": [
                    {
                        "message": "Too many operations on this connection (limit 1)",
                        "extensions": {"code": "RATE_LIMITED"},
                    }
                ],
            }
        )
    ]
    assert not protocol.is_closed
    assert set(protocol.active_ids) == {"1"}


def test_legacy_binary_frame_closes_4400() -> None:
    protocol = acked_legacy_ws()
    assert close_code(protocol.receive(b"\x00")) == CloseCode.BAD_REQUEST


# L7 duplicate start id


def test_legacy_start_with_an_active_id_closes_4409_and_starts_nothing() -> None:
    protocol = acked_legacy_ws()
    protocol.receive(start("1"))
    commands = protocol.receive(start("1", "subscription { other }"))
    assert commands == [Close(CloseCode.SUBSCRIBER_ALREADY_EXISTS, "Subscriber for 1 already exists")]
    assert not any(isinstance(c, Start) for c in commands)
    assert protocol.active_ids == set()


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


# graphql-sse single connection mode: reservations

ALICE = ("tenant-1", "alice")
MALLORY = ("tenant-2", "mallory")


def test_reservation_token_is_128_bit_urlsafe_and_unique() -> None:
    reservations = Reservations()
    tokens = {reservations.reserve(ALICE, 0.0) for _ in range(10)}
    assert len(tokens) == 10
    for token in tokens:
        assert isinstance(token, str)
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", token)


def test_reserved_token_opens_one_stream_only() -> None:
    reservations = Reservations()
    token = reservations.reserve(ALICE, 0.0)
    assert isinstance(token, str)
    assert reservations.open_stream(token, ALICE, 1.0) is StreamResult.OK
    assert reservations.is_stream_open(token)
    assert reservations.open_stream(token, ALICE, 2.0) is StreamResult.CONFLICT


def test_unknown_token_is_not_found() -> None:
    reservations = Reservations()
    assert reservations.open_stream("nope", ALICE, 0.0) is StreamResult.NOT_FOUND
    assert reservations.add_operation("nope", "1", ALICE) is StreamResult.NOT_FOUND
    assert reservations.stop_operation("nope", "1", ALICE) is StreamResult.NOT_FOUND
    assert reservations.operations("nope") == frozenset()


def test_token_of_another_owner_is_not_found() -> None:
    reservations = Reservations()
    token = reservations.reserve(ALICE, 0.0)
    assert isinstance(token, str)
    assert reservations.open_stream(token, MALLORY, 0.0) is StreamResult.NOT_FOUND
    assert reservations.add_operation(token, "1", MALLORY) is StreamResult.NOT_FOUND
    assert reservations.stop_operation(token, "1", MALLORY) is StreamResult.NOT_FOUND
    assert reservations.open_stream(token, ALICE, 0.0) is StreamResult.OK


def test_unused_reservation_expires_after_its_ttl() -> None:
    reservations = Reservations(ttl=60.0)
    token = reservations.reserve(ALICE, 100.0)
    assert isinstance(token, str)
    assert reservations.expire(160.0) == []
    assert reservations.open_stream(token, ALICE, 160.5) is StreamResult.NOT_FOUND
    assert reservations.add_operation(token, "1", ALICE, now=160.5) is StreamResult.NOT_FOUND
    assert reservations.expire(160.5) == [token]
    assert token not in reservations
    assert len(reservations) == 0


def test_reservation_opened_within_its_ttl_does_not_expire() -> None:
    reservations = Reservations(ttl=60.0)
    token = reservations.reserve(ALICE, 0.0)
    assert isinstance(token, str)
    assert reservations.open_stream(token, ALICE, 60.0) is StreamResult.OK
    assert reservations.expire(10_000.0) == []
    assert reservations.add_operation(token, "1", ALICE, now=10_000.0) is StreamResult.OK


def test_reservation_is_single_use() -> None:
    reservations = Reservations()
    token = reservations.reserve(ALICE, 0.0)
    assert isinstance(token, str)
    reservations.open_stream(token, ALICE, 0.0)
    reservations.add_operation(token, "1", ALICE)
    reservations.add_operation(token, "2", ALICE)
    assert reservations.close_stream(token) == frozenset({"1", "2"})
    assert reservations.open_stream(token, ALICE, 1.0) is StreamResult.NOT_FOUND
    assert reservations.add_operation(token, "3", ALICE) is StreamResult.NOT_FOUND
    assert reservations.close_stream(token) == frozenset()


def test_operation_ids_are_unique_per_stream() -> None:
    reservations = Reservations()
    token = reservations.reserve(ALICE, 0.0)
    assert isinstance(token, str)
    # Operations may be sent while only reserved (the protocol says "or reservation").
    assert reservations.add_operation(token, "1", ALICE) is StreamResult.OK
    assert reservations.add_operation(token, "1", ALICE) is StreamResult.CONFLICT
    assert reservations.operations(token) == frozenset({"1"})
    assert reservations.remove_operation(token, "1") is True
    assert reservations.remove_operation(token, "1") is False
    assert reservations.add_operation(token, "1", ALICE) is StreamResult.OK


def test_operations_per_stream_are_capped() -> None:
    reservations = Reservations(max_operations=2)
    token = reservations.reserve(ALICE, 0.0)
    assert isinstance(token, str)
    reservations.add_operation(token, "1", ALICE)
    reservations.add_operation(token, "2", ALICE)
    assert reservations.add_operation(token, "3", ALICE) is StreamResult.TOO_MANY


def test_stop_operation_is_idempotent() -> None:
    reservations = Reservations()
    token = reservations.reserve(ALICE, 0.0)
    assert isinstance(token, str)
    reservations.add_operation(token, "1", ALICE)
    assert reservations.stop_operation(token, "1", ALICE) is StreamResult.OK
    assert reservations.operations(token) == frozenset()
    assert reservations.stop_operation(token, "1", ALICE) is StreamResult.OK


def test_reservations_per_owner_are_capped() -> None:
    reservations = Reservations(ttl=60.0, max_per_owner=10)
    tokens = [reservations.reserve(ALICE, 0.0) for _ in range(10)]
    assert all(isinstance(t, str) for t in tokens)
    assert reservations.reserve(ALICE, 1.0) is StreamResult.TOO_MANY
    assert isinstance(reservations.reserve(MALLORY, 1.0), str)
    first = tokens[0]
    assert isinstance(first, str)
    reservations.close_stream(first)
    assert isinstance(reservations.reserve(ALICE, 2.0), str)
    assert reservations.reserve(ALICE, 2.0) is StreamResult.TOO_MANY
    # Expired reservations no longer count, even before the sweep drops them.
    assert isinstance(reservations.reserve(ALICE, 61.0), str)


def test_put_with_a_live_token_conflicts() -> None:
    reservations = Reservations()
    token = reservations.reserve(ALICE, 0.0)
    assert isinstance(token, str)
    assert reservations.reserve(ALICE, 1.0, presented_token=token) is StreamResult.CONFLICT
    assert isinstance(reservations.reserve(ALICE, 1.0, presented_token="stale"), str)


def test_reservations_validate_their_limits() -> None:
    with pytest.raises(ValueError, match="ttl must be positive"):
        Reservations(ttl=0)
    with pytest.raises(ValueError, match="max_per_owner"):
        Reservations(max_per_owner=0)
    with pytest.raises(ValueError, match="max_operations"):
        Reservations(max_operations=0)
