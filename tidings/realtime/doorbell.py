"""Doorbell messages: a committed event, encoded for the broker."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from tidings.events import ChangeEvent, Operation, to_jsonable
from tidings.model.collection import Collection
from tidings.store import decode_document

CHANNEL = "tidings:events"


def encode(event: ChangeEvent) -> bytes:
    return orjson.dumps(
        {
            "seq": event.seq,
            "collection": event.collection,
            "operation": event.operation.value,
            "id": event.record_id,
            "account": event.account,
            "record": {k: to_jsonable(v) for k, v in event.record.items()},
            "previous": {k: to_jsonable(v) for k, v in event.previous.items()},
            "changed": list(event.changed_fields),
            "timestamp": event.timestamp.isoformat(),
            "actor": event.actor,
        }
    )


def decode(message: bytes, collections: dict[str, Collection]) -> tuple[int, ChangeEvent | None]:
    """The sequence, and the event when it is fully readable (else None: read the log)."""
    data: dict[str, Any] = orjson.loads(message)
    seq = int(data["seq"])
    coll = collections.get(data.get("collection", ""))
    if coll is None:
        return seq, None
    return seq, ChangeEvent(
        seq=seq,
        collection=coll.name,
        operation=Operation(data["operation"]),
        record_id=data["id"],
        account=data["account"],
        record=decode_document(coll, data["record"]),
        previous=decode_document(coll, data["previous"]),
        changed_fields=tuple(data["changed"]),
        timestamp=dt.datetime.fromisoformat(data["timestamp"]),
        actor=data["actor"],
    )
