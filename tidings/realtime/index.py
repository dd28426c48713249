"""The index of the groups of one (collection, account), for event subscriptions
and live queries alike: an event reaches only the groups whose view it may touch.

A group watching one record is found by that record's id; a group whose filter
(read guard included) holds ``column eq value`` at its top, by that value, before
or after the change: a record that had another value and still has one was never
in the view and is not now. Anything else is scanned. Candidates are only that:
each group still decides with its own predicate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from typing import Any

from tidings.events import ChangeEvent

__all__ = ["UNINDEXED_COLUMNS", "Bucket", "IndexKey"]

IndexKey = tuple[Any, ...]
"""("id", record_id), ("eq", column, value) or ("scan",)."""

UNINDEXED_COLUMNS = frozenset({"updated_at", "version"})
"""Columns whose value before an update the event does not hold exactly."""


def hashable(value: Any) -> Hashable:
    # bool is an int in Python (True == 1): keep them apart as filter values are.
    if isinstance(value, bool):
        return ("bool", value)
    try:
        hash(value)
    except TypeError:
        return ("unhashable", id(value))
    return value  # type: ignore[no-any-return]


class Bucket:
    """The groups of one (collection, account), each under one index key."""

    __slots__ = ("by_eq", "by_id", "scan")

    def __init__(self) -> None:
        self.by_id: dict[str, set[Any]] = defaultdict(set)
        self.by_eq: dict[str, dict[Hashable, set[Any]]] = defaultdict(lambda: defaultdict(set))
        self.scan: set[Any] = set()

    def add(self, key: IndexKey, group: Any) -> None:
        if key[0] == "id":
            self.by_id[key[1]].add(group)
        elif key[0] == "eq":
            self.by_eq[key[1]][hashable(key[2])].add(group)
        else:
            self.scan.add(group)

    def remove(self, key: IndexKey, group: Any) -> None:
        if key[0] == "id":
            _discard(self.by_id, key[1], group)
        elif key[0] == "eq":
            values = self.by_eq.get(key[1])
            if values is not None:
                _discard(values, hashable(key[2]), group)
                if not values:
                    del self.by_eq[key[1]]
        else:
            self.scan.discard(group)

    def candidates(self, event: ChangeEvent, out: set[Any]) -> None:
        found = self.by_id.get(event.record_id)
        if found:
            out |= found
        if self.by_eq:
            before = event.before()
            for column, values in self.by_eq.items():
                found = values.get(hashable(event.record.get(column)))
                if found:
                    out |= found
                if before is not None:
                    found = values.get(hashable(before.get(column)))
                    if found:
                        out |= found
        out |= self.scan

    def is_empty(self) -> bool:
        return not (self.by_id or self.by_eq or self.scan)


def _discard(index: dict[Any, set[Any]], key: Any, group: Any) -> None:
    groups = index.get(key)
    if groups is not None:
        groups.discard(group)
        if not groups:
            del index[key]
