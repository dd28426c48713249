"""Pure tests of graphql-sse single connection mode's stream reservations (tidings/protocols/reservations.py).

No sockets; time is passed in.
"""

from __future__ import annotations

import re

import pytest

from tidings.protocols import (
    Reservations,
    StreamResult,
)

pytestmark = pytest.mark.timeout(30)


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
