"""Doorbell messages: a commit's events, encoded for the broker in the event log's own form.

A lone write rings with its event; a transaction of several writes rings once with all of
them (``{"seq": last, "events": [...]}``), so every process dispatches them in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from tidings.events import ChangeEvent
from tidings.model.collection import Collection
from tidings.store import decode_event, event_row

CHANNEL = "tidings:events"


def encode(event: ChangeEvent) -> bytes:
    return orjson.dumps(_row(event))


def encode_batch(events: Sequence[ChangeEvent]) -> bytes:
    """One doorbell for a transaction's events (consecutive seqs, in order); a lone event as ``encode``."""
    if len(events) == 1:
        return encode(events[0])
    return orjson.dumps({"seq": events[-1].seq, "events": [_row(e) for e in events]})


def _row(event: ChangeEvent) -> dict[str, Any]:
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
    return {"seq": event.seq, **row}


def decode_all(message: bytes, collections: dict[str, Collection]) -> tuple[int, list[ChangeEvent] | None]:
    """The last sequence, and the commit's events when all are readable (else None: read the log)."""
    data: dict[str, Any] = orjson.loads(message)
    rows = data.get("events")
    if rows is None:
        seq, event = _decode(data, collections)
        return seq, None if event is None else [event]
    events = [_decode(row, collections)[1] for row in rows] if isinstance(rows, list) else [None]
    if not events or any(e is None for e in events):
        return int(data["seq"]), None
    return int(data["seq"]), [e for e in events if e is not None]


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
    return _decode(orjson.loads(message), collections)


def _decode(data: dict[str, Any], collections: dict[str, Collection]) -> tuple[int, ChangeEvent | None]:
    seq = int(data["seq"])
    coll = collections.get(data.get("collection", ""))
    if coll is None:
        return seq, None
    try:
        return seq, decode_event(coll, data)
    except (KeyError, TypeError, ValueError):
        return seq, None
