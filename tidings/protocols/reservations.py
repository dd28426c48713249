"""graphql-sse single connection mode (docs/protocols.md, E8-E13): request classification and
the reservation registry, pure, with time passed in.

A request is handled in two steps, both without I/O::

    kind = classify_request(method, accept=..., has_token=..., has_operation_id=...)
    if isinstance(kind, StreamResult):             # refused before touching the registry
        status = STATUS_BY_OUTCOME[kind]           # 400 / 404 / 405 (+ Allow) / 406
    else:                                          # one registry call per kind
        RESERVE      -> reservations.reserve(owner, now)            token (201) | TOO_MANY
        OPEN_STREAM  -> reservations.open_stream(token, owner, now) OK (200) | NOT_FOUND | CONFLICT
        EXECUTE      -> reservations.add_operation(token, op_id, owner, now=now)
                                                                    OK (202) | NOT_FOUND | CONFLICT | TOO_MANY
        STOP         -> reservations.stop_operation(token, op_id, owner) OK (200) | NOT_FOUND
        status = status_for(kind, result)

| outcome                   | status | when |
|---------------------------|--------|------|
| RESERVE ok                | 201    | body = the token, ``text/plain`` (E8) |
| OPEN_STREAM ok            | 200    | the event stream (E10) |
| EXECUTE ok                | 202    | results go to the stream as ``next``/``complete`` with the id (E11) |
| STOP ok                   | 200    | also when the operation had already finished (E12) |
| BAD_REQUEST               | 400    | ``DELETE`` without ``operationId`` (E12) |
| NOT_FOUND                 | 404    | no token; an unknown, expired, closed or other owner's token (E9, E11) |
| METHOD_NOT_ALLOWED        | 405    | answer with ``Allow: GET, POST, PUT, DELETE`` (E13) |
| NOT_ACCEPTABLE            | 406    | ``PUT`` whose ``Accept`` admits no ``text/plain`` (E8) |
| CONFLICT                  | 409    | ``PUT`` with a live token; a second stream; a running operation id (E8, E10) |
| TOO_MANY                  | 429    | the owner's reservation cap, or the stream's operation cap |
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "ALLOW",
    "STATUS_BY_OUTCOME",
    "Reservations",
    "SingleConnectionRequest",
    "StreamResult",
    "classify_request",
    "status_for",
]

ALLOW: Final = "GET, POST, PUT, DELETE"
"""The ``Allow`` header of a 405 (E13)."""


class SingleConnectionRequest(enum.Enum):
    """What a request in single connection mode asks for."""

    RESERVE = "reserve"
    """``PUT``: make a reservation."""
    OPEN_STREAM = "open_stream"
    """``GET`` with ``Accept: text/event-stream`` and a token: open the reserved stream."""
    EXECUTE = "execute"
    """``POST`` or ``GET`` with a token: run an operation, results on the stream."""
    STOP = "stop"
    """``DELETE`` with a token and ``operationId``: stop that operation."""
    DISTINCT = "distinct"
    """``GET``/``POST`` event stream request without a token: distinct connections mode."""


class StreamResult(enum.Enum):
    """The outcome of a request or a registry call; every one but ``OK`` is a refusal."""

    OK = "ok"
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_ACCEPTABLE = "not_acceptable"
    CONFLICT = "conflict"
    TOO_MANY = "too_many"


STATUS_BY_OUTCOME: Final[dict[SingleConnectionRequest | StreamResult, int]] = {
    SingleConnectionRequest.RESERVE: 201,
    SingleConnectionRequest.OPEN_STREAM: 200,
    SingleConnectionRequest.EXECUTE: 202,
    SingleConnectionRequest.STOP: 200,
    StreamResult.BAD_REQUEST: 400,
    StreamResult.NOT_FOUND: 404,
    StreamResult.METHOD_NOT_ALLOWED: 405,
    StreamResult.NOT_ACCEPTABLE: 406,
    StreamResult.CONFLICT: 409,
    StreamResult.TOO_MANY: 429,
}
"""HTTP status of each outcome: a request kind's success status, or a refusal's status."""


def status_for(request: SingleConnectionRequest, result: StreamResult) -> int:
    """The HTTP status answering ``request`` when the registry said ``result``."""
    if request is SingleConnectionRequest.DISTINCT:
        raise ValueError("distinct connections mode requests have no single connection status")
    return STATUS_BY_OUTCOME[request if result is StreamResult.OK else result]


def _media_types(accept: str | None) -> set[str]:
    if accept is None:
        return set()
    return {part.split(";", 1)[0].strip().lower() for part in accept.split(",")} - {""}


def classify_request(
    method: str, *, accept: str | None, has_token: bool, has_operation_id: bool = False
) -> SingleConnectionRequest | StreamResult:
    """Sort a request on the graphql-sse endpoint by method, ``Accept`` and token presence."""
    method = method.upper()
    types = _media_types(accept)
    if method == "PUT":
        # The token comes back as text/plain (E8); no Accept at all means "anything".
        if types and not types & {"*/*", "text/*", "text/plain"}:
            return StreamResult.NOT_ACCEPTABLE
        return SingleConnectionRequest.RESERVE
    if method == "DELETE":
        if not has_token:
            return StreamResult.NOT_FOUND
        if not has_operation_id:
            return StreamResult.BAD_REQUEST
        return SingleConnectionRequest.STOP
    if method not in ("GET", "POST"):
        return StreamResult.METHOD_NOT_ALLOWED
    wants_stream = "text/event-stream" in types
    if not has_token:
        return SingleConnectionRequest.DISTINCT if wants_stream else StreamResult.NOT_FOUND
    if wants_stream and method == "GET":
        return SingleConnectionRequest.OPEN_STREAM
    return SingleConnectionRequest.EXECUTE


@dataclass(slots=True)
class _Reservation:
    owner: Hashable
    created: float
    stream_open: bool = False
    operations: set[str] = field(default_factory=set)


class Reservations:
    """Reservation tokens of single connection mode, bound to an owner, single-use, expiring.

    ``owner`` is whatever the transport passes, e.g. the ``(tenant, principal)`` tuple of
    the authenticated request; a token presented by another owner is ``NOT_FOUND``, so
    existence does not leak. A token is a 128-bit bearer capability. A reservation whose
    stream has not opened within ``ttl`` seconds is expired: refused at once, and dropped
    by the next ``expire(now)``, which the transport calls on a timer. Once its stream
    closes, the token is gone (single use). ``now`` is any monotonic clock, in seconds.
    """

    __slots__ = ("_by_owner", "_by_token", "max_operations", "max_per_owner", "ttl")

    def __init__(self, *, ttl: float = 60.0, max_per_owner: int = 10, max_operations: int = 100) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        if max_per_owner < 1:
            raise ValueError(f"max_per_owner must be at least 1, got {max_per_owner}")
        if max_operations < 1:
            raise ValueError(f"max_operations must be at least 1, got {max_operations}")
        self.ttl = ttl
        self.max_per_owner = max_per_owner
        self.max_operations = max_operations
        self._by_token: dict[str, _Reservation] = {}
        self._by_owner: dict[Hashable, set[str]] = {}

    def __len__(self) -> int:
        return len(self._by_token)

    def __contains__(self, token: object) -> bool:
        return token in self._by_token

    def _is_expired(self, reservation: _Reservation, now: float) -> bool:
        return not reservation.stream_open and now - reservation.created > self.ttl

    def _find(self, token: str, owner: Hashable, now: float | None) -> _Reservation | None:
        reservation = self._by_token.get(token)
        if reservation is None or reservation.owner != owner:
            return None
        if now is not None and self._is_expired(reservation, now):
            return None
        return reservation

    def _drop(self, token: str) -> _Reservation | None:
        reservation = self._by_token.pop(token, None)
        if reservation is not None:
            tokens = self._by_owner[reservation.owner]
            tokens.discard(token)
            if not tokens:
                del self._by_owner[reservation.owner]
        return reservation

    def reserve(self, owner: Hashable, now: float, *, presented_token: str | None = None) -> str | StreamResult:
        """Make a reservation and return its token, or ``CONFLICT`` / ``TOO_MANY``.

        ``presented_token`` is a token the ``PUT`` itself carried: one still registered
        is a ``CONFLICT`` (E8).
        """
        if presented_token is not None:
            held = self._by_token.get(presented_token)
            if held is not None and not self._is_expired(held, now):
                return StreamResult.CONFLICT
        held_tokens = self._by_owner.get(owner, set())
        live = sum(1 for t in held_tokens if not self._is_expired(self._by_token[t], now))
        if live >= self.max_per_owner:
            return StreamResult.TOO_MANY
        token = secrets.token_urlsafe(16)
        self._by_token[token] = _Reservation(owner, now)
        self._by_owner.setdefault(owner, set()).add(token)
        return token

    def open_stream(self, token: str, owner: Hashable, now: float) -> StreamResult:
        """Attach the event stream: ``OK``, ``NOT_FOUND``, or ``CONFLICT`` if one is open (E10)."""
        reservation = self._find(token, owner, now)
        if reservation is None:
            return StreamResult.NOT_FOUND
        if reservation.stream_open:
            return StreamResult.CONFLICT
        reservation.stream_open = True
        return StreamResult.OK

    def close_stream(self, token: str) -> frozenset[str]:
        """The stream ended: forget the token, and return the operation ids to cancel."""
        reservation = self._drop(token)
        return frozenset(reservation.operations) if reservation is not None else frozenset()

    def is_stream_open(self, token: str) -> bool:
        reservation = self._by_token.get(token)
        return reservation is not None and reservation.stream_open

    def add_operation(self, token: str, op_id: str, owner: Hashable, *, now: float | None = None) -> StreamResult:
        """Register operation ``op_id`` on the token's stream (E11).

        ``NOT_FOUND``, ``CONFLICT`` if ``op_id`` is running there, ``TOO_MANY`` at the
        stream's cap, else ``OK``. An operation may be added before the stream opens; the
        transport holds its results (bounded) until it does. Pass ``now`` to refuse a
        reservation whose TTL ran out before the next ``expire`` sweep.
        """
        reservation = self._find(token, owner, now)
        if reservation is None:
            return StreamResult.NOT_FOUND
        if op_id in reservation.operations:
            return StreamResult.CONFLICT
        if len(reservation.operations) >= self.max_operations:
            return StreamResult.TOO_MANY
        reservation.operations.add(op_id)
        return StreamResult.OK

    def remove_operation(self, token: str, op_id: str) -> bool:
        """Forget ``op_id`` (it completed); ``True`` if it was registered."""
        reservation = self._by_token.get(token)
        if reservation is None or op_id not in reservation.operations:
            return False
        reservation.operations.discard(op_id)
        return True

    def stop_operation(self, token: str, op_id: str, owner: Hashable) -> StreamResult:
        """The client's ``DELETE`` (E12): ``NOT_FOUND`` for a bad token, else ``OK``.

        ``OK`` also when ``op_id`` already finished: stopping is idempotent.
        """
        reservation = self._find(token, owner, None)
        if reservation is None:
            return StreamResult.NOT_FOUND
        reservation.operations.discard(op_id)
        return StreamResult.OK

    def operations(self, token: str) -> frozenset[str]:
        reservation = self._by_token.get(token)
        return frozenset(reservation.operations) if reservation is not None else frozenset()

    def expire(self, now: float) -> list[str]:
        """Drop the reservations whose stream never opened within ``ttl``; return their tokens."""
        stale = [t for t, r in self._by_token.items() if self._is_expired(r, now)]
        for token in stale:
            self._drop(token)
        return stale
