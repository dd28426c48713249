"""The related records a live window's rows nest, kept while its own events are applied.

A live source whose filter and rules follow no relation, and whose nested selection never leads
back to its own collection, applies its own collection's events to its window as any window does
(``window.py``); a row that comes in from an event has no nested records yet. It takes them
without a read when it can: from its previous version (the same reference, or its own children),
or from another kept row referencing the same record. Otherwise it waits for one read (the
group's fill, in the snapshot the window reflects), of the nested records of the rows lacking
them only. Changes to the nested collections themselves are ``relevance.py``'s: they read the
source again.

Rows that come from events are the event's record, shared with every other group: they are
never changed in place, only replaced by copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tidings.filters import Filter, related_targets, relations_in
from tidings.realtime.window import Single, Window
from tidings.resolvers.prefetch import Nested, attach
from tidings.store import Reader
from tidings.types import Record

__all__ = ["NestedRows"]


def _reached(plans: Sequence[Nested]) -> set[str]:
    """Every collection the nested plans read, at any level, their filters' relations included."""
    found: set[str] = set()
    stack = list(plans)
    while stack:
        p = stack.pop()
        found.add(p.target.name)
        found |= related_targets(p.where)
        stack.extend(p.nested)
    return found


class NestedRows:
    """The nested plans of one live window (or record by id) whose own events it applies."""

    def __init__(self, plans: Sequence[Nested]) -> None:
        self.plans = tuple(plans)
        self.keys = tuple("$" + p.key for p in self.plans)
        # Rows lack nested records only after ``carry`` left one so (a window's own fill is followed
        # by ``fill`` here, a reload attaches them all): until then ``missing`` need not look.
        self.maybe_missing = False

    @classmethod
    def of(cls, kept: Any, where: Filter, plans: Sequence[Nested], own: str) -> NestedRows | None:
        """The keeper for a source, or None when its own events must read it again: its filter follows
        relations (a row's place in the view depends on other rows), or its nested records depend on
        its own collection (a change to one row could change another row's nested records)."""
        if not plans or not isinstance(kept, Window | Single) or relations_in(where) or own in _reached(plans):
            return None
        return cls(plans)

    def complete(self, row: Record) -> bool:
        return all(k in row for k in self.keys)

    def previous(self, kept: Window | Single, record_id: str) -> Record | None:
        """The kept row of ``record_id`` before an event is applied (its nested records with it)."""
        return next((r for r in _rows(kept) if r["id"] == record_id), None)

    def carry(self, kept: Window | Single, old: Record | None, record_id: str) -> None:
        """After an event of ``record_id`` was applied: give its row what it can take without a read."""
        rows = _rows(kept)
        for i, row in enumerate(rows):
            if row["id"] != record_id or self.complete(row):
                continue
            new = dict(row)
            for p, k in zip(self.plans, self.keys, strict=True):
                if p.reference is None:
                    if old is not None and k in old:
                        new[k] = old[k]  # its children: they point at its id, which did not change
                    continue
                target = row.get(p.reference)
                if target is None:
                    new[k] = None
                    continue
                donors = ([old] if old is not None else []) + [r for r in rows if r is not row]
                donor = next((d for d in donors if d.get(p.reference) == target and k in d), None)
                if donor is not None:
                    new[k] = donor[k]
            _put(kept, i, new)
            self.maybe_missing = self.maybe_missing or not self.complete(new)

    def missing(self, kept: Window | Single) -> bool:
        if self.maybe_missing:
            self.maybe_missing = not all(self.complete(r) for r in _rows(kept))
        return self.maybe_missing

    async def fill(self, reader: Reader, kept: Window | Single) -> None:
        """Read the nested records of the rows lacking them (one SELECT per plan and level)."""
        lacking = [(i, dict(r)) for i, r in enumerate(_rows(kept)) if not self.complete(r)]
        if lacking:
            await attach(reader, [r for _, r in lacking], self.plans)
            for i, row in lacking:
                _put(kept, i, row)


def _rows(kept: Window | Single) -> list[Record]:
    if isinstance(kept, Window):
        return kept.rows
    return [kept.record] if kept.record is not None else []


def _put(kept: Window | Single, index: int, row: Record) -> None:
    if isinstance(kept, Window):
        kept.rows[index] = row
    else:
        kept.record = row
