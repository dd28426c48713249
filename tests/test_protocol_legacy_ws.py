"""Pure tests of legacy graphql-ws (tidings/protocols/legacy_ws.py), message by message.

Rows L1-L7 are those of docs/protocols.md. No sockets, no clock.
"""

from __future__ import annotations

import orjson
import pytest

from tests.support.protocols import (
    QUERY,
    acked_legacy_ws,
    close_code,
    frame,
    start,
    started,
)
from tidings.protocols import (
    Authenticate,
    Close,
    CloseCode,
    LegacyWsProtocol,
    Send,
    Start,
    Stop,
)

pytestmark = pytest.mark.timeout(30)


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
