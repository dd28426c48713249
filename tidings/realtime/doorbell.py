"""Doorbell messages: a committed event, encoded for the broker in the event log's own form."""

from __future__ import annotations

from typing import Any

import orjson

from tidings.events import ChangeEvent
from tidings.model.collection import Collection
from tidings.store import decode_event, event_row

CHANNEL = "tidings:events"


def encode(event: ChangeEvent) -> bytes:
    row = event_row(
        event.collection,
        event.operation,
        event.record_id,
        event.account,
        event.record,
        event.previous,
        event.changed_fields,
        event.timestamp,
        event.actor,
    )
    return orjson.dumps({"seq": event.seq, **row})


def encode_schema(seq: int, schema: int) -> bytes:
    """A schema doorbell: a process now serves the schema with this fingerprint (it migrated).

    It carries the log's head as its seq, so a version that cannot tell it from an event's
    reads it as "catch up to here", which is harmless.
    """
    return orjson.dumps({"seq": seq, "schema": schema})


def announced_schema(message: bytes) -> int | None:
    """The fingerprint a schema doorbell announces; None for an event's."""
    if b'"schema"' not in message:  # the cheap test first: events' doorbells rarely hold the word
        return None
    data = orjson.loads(message)
    schema = data.get("schema") if "collection" not in data else None
    return schema if isinstance(schema, int) else None


def decode(message: bytes, collections: dict[str, Collection]) -> tuple[int, ChangeEvent | None]:
    """The sequence, and the event when it is fully readable (else None: read the log).

    A doorbell this version cannot read (one from another version, during a rolling deploy)
    still carries its seq: the event is read from the log instead.
    """
    data: dict[str, Any] = orjson.loads(message)
    seq = int(data["seq"])
    coll = collections.get(data.get("collection", ""))
    if coll is None:
        return seq, None
    try:
        return seq, decode_event(coll, data)
    except (KeyError, TypeError, ValueError):
        return seq, None
