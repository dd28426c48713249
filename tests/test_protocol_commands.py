"""Pure tests of close codes, close reasons, the command types and the public API of tidings.protocols."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tidings.protocols
from tidings.protocols import (
    CloseCode,
    Stop,
    close_reason,
)

pytestmark = pytest.mark.timeout(30)


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
