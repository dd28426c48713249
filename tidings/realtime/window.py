"""Kept live results, changed by events without reading the database: a sorted
window of one collection, a count, one record by id.

Pure state (no I/O): ``apply`` takes one committed event and says whether the
kept value changed; a window that an event leaves short of rows it must hold
(or whose position in the result moved) says what it ``needs`` read, and the
live group does that read. The order is ``Reader.list``'s: each key ascending
or descending with NULLs last, then ``id`` ascending.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from tidings.events import ChangeEvent, Operation
from tidings.filters import Predicate
from tidings.store.reads import CREATION_ORDER, sort_key
from tidings.types import Record

__all__ = ["Count", "Needs", "Single", "Window", "before_of"]


def before_of(event: ChangeEvent) -> Record | None:
    """The record before ``event``, with its version too (the event keeps only changed fields' old values)."""
    before = event.before()
    if before is not None and event.operation is Operation.UPDATED and "version" not in event.previous:
        version = event.record.get("version")
        if isinstance(version, int):
            before = {**before, "version": version - 1}
    return before


class Needs:
    """What a kept value needs read: nothing, a fill of missing rows, or everything."""

    NOTHING = 0
    FILL = 1
    RELOAD = 2


class Window:
    """The rows ``offset .. offset+limit`` of one collection's view, sorted."""

    def __init__(
        self,
        order: Sequence[tuple[str, bool]],
        offset: int,
        limit: int,
        in_view: Predicate,
        *,
        exact_before: bool = True,
        backward: bool = False,
    ) -> None:
        self.order = tuple(order) or CREATION_ORDER
        self.offset = offset
        self.limit = limit
        self.in_view = in_view
        # False when the order or filter reads updatedAt, whose value before an update no
        # event keeps: then a row outside the window cannot be placed before or after it.
        self.exact_before = exact_before
        self.backward = backward  # rows kept from the order's end (a connection's last rows)
        self.key = sort_key(self.order, backward=backward)
        self.rows: list[Record] = []
        self.keys: list[tuple[Any, ...]] = []
        self.exhausted = True  # no row of the view comes after the window's last
        self.stale = True  # the rows must be read again (the window's position moved)

    def needs(self) -> int:
        if self.stale:
            return Needs.RELOAD
        if not self.exhausted and len(self.rows) < self.limit:
            return Needs.FILL
        return Needs.NOTHING

    def load(self, rows: Sequence[Record]) -> None:
        """The window as read from the database (``limit`` rows from ``offset``)."""
        self.rows = list(rows)
        self.keys = [self.key(r) for r in self.rows]
        self.exhausted = len(self.rows) < self.limit
        self.stale = False

    def fill_request(self) -> tuple[int, int]:
        """(offset, limit) of the rows missing at the window's end."""
        return self.offset + len(self.rows), self.limit - len(self.rows)

    def fill(self, rows: Sequence[Record], asked: int) -> None:
        for row in rows:
            self.rows.append(row)
            self.keys.append(self.key(row))
        if len(rows) < asked:
            self.exhausted = True

    def _index(self, record_id: str) -> int | None:
        for i, row in enumerate(self.rows):
            if row["id"] == record_id:
                return i
        return None

    def apply(self, event: ChangeEvent) -> bool:
        """Apply one event; True if the rows changed (or must be read again)."""
        if self.stale:
            return True
        if self.limit == 0:
            return False
        after = event.after()
        now = after is not None and self.in_view(after)
        index = self._index(event.record_id)
        if self.offset and self.rows:
            # Rows before the window shift it: a record entering or leaving that prefix
            # moves every row by one, which only a read can tell.
            first = self.keys[0]
            before_in_prefix = False
            if index is None:
                before = before_of(event)
                if before is not None and self.in_view(before):
                    if not self.exact_before and event.operation is Operation.UPDATED:
                        self.stale = True
                        return True
                    before_in_prefix = self.key(before) < first
            after_in_prefix = now and after is not None and self.key(after) < first
            if before_in_prefix != after_in_prefix:
                self.stale = True
                return True
            if before_in_prefix:
                return False  # left and came back before the window: the window is as it was
        elif self.offset and now:
            # An empty window past the view's end: a new row may or may not reach it.
            self.stale = True
            return True
        changed = False
        # Every row of the view up to the window's last key is in the window.
        last = self.keys[-1] if self.keys else None
        if index is not None:
            del self.rows[index]
            del self.keys[index]
            changed = True
        if now and after is not None:
            key = self.key(after)
            position = bisect.bisect_left(self.keys, key)
            if (
                position < len(self.rows)
                or (last is not None and not last < key)
                or (self.exhausted and len(self.rows) < self.limit)
            ):
                self.rows.insert(position, after)
                self.keys.insert(position, key)
                changed = True
                if len(self.rows) > self.limit:
                    self.rows.pop()
                    self.keys.pop()
                    self.exhausted = False
            else:
                self.exhausted = False  # a row of the view past the window's end
        return changed

    def value(self) -> list[Record]:
        return self.rows


class Count:
    """How many records of one collection are in view, kept by ENTERED and LEFT."""

    def __init__(self, in_view: Predicate, *, exact_before: bool = True) -> None:
        self.in_view = in_view
        self.exact_before = exact_before
        self.count = 0
        self.stale = True

    def needs(self) -> int:
        return Needs.RELOAD if self.stale else Needs.NOTHING

    def load(self, count: int) -> None:
        self.count = count
        self.stale = False

    def apply(self, event: ChangeEvent) -> bool:
        if self.stale:
            return True
        after = event.after()
        now = after is not None and self.in_view(after)
        before = before_of(event)
        if not self.exact_before and event.operation is Operation.UPDATED:
            self.stale = True  # the filter reads updatedAt, whose old value the event lacks
            return True
        was = before is not None and self.in_view(before)
        if now == was:
            return False
        self.count += 1 if now else -1
        return True

    def value(self) -> int:
        return self.count


class Single:
    """One record by id, or None when absent or not readable."""

    def __init__(self, record_id: str, readable: Predicate) -> None:
        self.record_id = record_id
        self.readable = readable
        self.record: Record | None = None
        self.stale = True

    def needs(self) -> int:
        return Needs.RELOAD if self.stale else Needs.NOTHING

    def load(self, record: Record | None) -> None:
        self.record = record
        self.stale = False

    def apply(self, event: ChangeEvent) -> bool:
        if self.stale:
            return True
        if event.record_id != self.record_id:
            return False
        after = event.after()
        self.record = after if after is not None and self.readable(after) else None
        return True

    def value(self) -> Record | None:
        return self.record
