"""The change event: one committed mutation, as the event log stores it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from typing import Any

from tidings.types import Record


class Operation(str, enum.Enum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    DELETED = "DELETED"
    RESTORED = "RESTORED"  # a soft-deleted record brought back (collections with soft_delete)


@dataclasses.dataclass(frozen=True, slots=True)
class ChangeEvent:
    """One row of the event log.

    ``record`` is the record after the change (for DELETED, its last state;
    for RESTORED, the state it comes back with); ``previous`` holds the values
    the changed fields had before it.
    """

    seq: int
    collection: str
    operation: Operation
    record_id: str
    account: str | None
    record: Record
    previous: Record
    changed_fields: tuple[str, ...]
    timestamp: dt.datetime
    actor: str | None

    def before(self) -> Record | None:
        """The record as it was before the change (None for CREATED and RESTORED).

        A RESTORED record was hidden, as if absent: for views it enters like a created one.
        """
        if self.operation is Operation.CREATED or self.operation is Operation.RESTORED:
            return None
        if not self.previous:
            return self.record
        return {**self.record, **self.previous}

    def after(self) -> Record | None:
        """The record after the change (None for DELETED)."""
        return None if self.operation is Operation.DELETED else self.record


@dataclasses.dataclass(frozen=True, slots=True)
class Doorbell:
    """What the broker carries: news that events up to ``seq`` exist.

    In one process the event itself rides along (``event``), saving a read of
    the log; across processes only the sequence number is authoritative.
    """

    seq: int
    event: ChangeEvent | None = None


def to_jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


class SystemEventKind(enum.Enum):
    """What a ``systemEvents`` event says (tidings.realtime.system sends them)."""

    SHUTTING_DOWN = "SHUTTING_DOWN"
    TOKEN_EXPIRING = "TOKEN_EXPIRING"  # noqa: S105 (a kind, not a password)
    PERMISSIONS_CHANGED = "PERMISSIONS_CHANGED"
    SCHEMA_UPDATED = "SCHEMA_UPDATED"


class PresenceKind(str, enum.Enum):
    """What a ``presence`` event says (tidings.realtime.presence makes them)."""

    SYNC = "SYNC"
    JOIN = "JOIN"
    UPDATE = "UPDATE"
    LEAVE = "LEAVE"
