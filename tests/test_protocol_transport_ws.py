"""Pure tests of graphql-transport-ws (tidings/protocols/transport_ws.py), message by message.

Rows W1-W15 are those of docs/protocols.md. No sockets, no clock.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.protocols import (
    QUERY,
    acked_transport_ws,
    close_code,
    frame,
    started,
    subscribe,
)
from tidings.protocols import (
    Authenticate,
    Close,
    CloseCode,
    Phase,
    Send,
    Start,
    Stop,
    TransportWsProtocol,
    legacy_ws,
    transport_ws,
)

pytestmark = pytest.mark.timeout(30)


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
