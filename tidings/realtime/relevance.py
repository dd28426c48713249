"""Which changes to a related collection may change a live source's result, decided from the
event alone: a project renamed changes the windows showing one of its tasks, not every window of
tasks; a member removed changes what that member reads, not what the others do.

A source depends on another collection through its filter and rules (``Related`` nodes, their
paths as ``related_changes.Paths`` walks them for event subscriptions) and through its nested
selection (``Nested`` plans). Each way in gives a check; an event of that collection may change
the result when any check says so. Anything not covered here says yes (the source is read again,
as before): relations inside a related node's own filter, nested relations below the first
level, filters on ``updatedAt`` (whose old value no event keeps).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tidings.events import ChangeEvent
from tidings.filters import Compare, Filter, Not, Related
from tidings.realtime.related_changes import Paths
from tidings.realtime.window import Single, Window, before_of
from tidings.resolvers.prefetch import Nested
from tidings.types import Record

__all__ = ["Relevance"]


def _plain(f: Filter) -> bool:
    """Whether ``f`` compares only columns whose old values events keep (not ``updatedAt``)."""
    if isinstance(f, Compare):
        return f.column != "updated_at"
    if isinstance(f, Not):
        return _plain(f.item)
    if isinstance(f, Related):
        return _plain(f.guard) and _plain(f.item)
    return all(_plain(i) for i in f.items)


class _Counts:
    """The relation paths of a filter ending at the changed row's collection: the row may change
    the result unless it moves none of them (``related_changes.Paths.moved``: along each it counts,
    or not, alike before and after, under the same parent)."""

    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def __call__(self, event: ChangeEvent, rows: Any) -> bool:
        return bool(self.paths.moved(event.collection, before_of(event), event.after()))


class _Refers:
    """A reference the selection nests at the first level: the rows it shows are those the kept
    rows reference."""

    def __init__(self, column: str) -> None:
        self.column = column

    def __call__(self, event: ChangeEvent, rows: Sequence[Record]) -> bool:
        return any(r.get(self.column) == event.record_id for r in rows)


class _Children:
    """A back reference the selection nests at the first level: the rows it shows point at a kept row."""

    def __init__(self, via: str) -> None:
        self.via = via

    def __call__(self, event: ChangeEvent, rows: Sequence[Record]) -> bool:
        parents = {r["id"] for r in rows}
        return any(x is not None and x.get(self.via) in parents for x in (event.before(), event.after()))


def _always(event: ChangeEvent, rows: Any) -> bool:
    return True


class Relevance:
    """The checks of one live source, by the related collection they cover."""

    def __init__(self, view: Filter, nested: Sequence[Nested], own: str) -> None:
        self.checks: dict[str, list[Any]] = {}
        self._filter(view)
        for p in nested:
            self._add(p.target.name, _Refers(p.reference) if p.reference is not None else _Children(str(p.via)))
            self._filter(p.where)
            self._below(p.nested)
        self.checks.pop(own, None)  # the source's own events are applied (or read) anyway

    def _add(self, collection: str, check: Any) -> None:
        self.checks.setdefault(collection, []).append(check)

    def _filter(self, f: Filter) -> None:
        paths = Paths(f)
        for target, found in paths.by_target.items():
            self._add(target, _Counts(paths) if all(_plain(path[-1]) for path in found) else _always)

    def _below(self, plans: Iterable[Nested]) -> None:
        for p in plans:
            self._add(p.target.name, _always)
            self._filter(p.where)
            self._below(p.nested)

    def may_change(self, event: ChangeEvent, kept: Any) -> bool:
        """Whether ``event`` (of a collection the source depends on) may change what it shows."""
        checks = self.checks.get(event.collection)
        if not checks or kept.stale:
            return True  # not a dependency this knows: read again
        rows: Sequence[Record] | None = None
        for check in checks:
            if isinstance(check, _Refers | _Children):
                if rows is None:
                    rows = _rows(kept)
                if rows is None:
                    return True
            if check(event, rows):
                return True
        return False


def _rows(kept: Any) -> Sequence[Record] | None:
    """The records a kept value shows, or None when it keeps no records (nested plans need them)."""
    if isinstance(kept, Window):
        return kept.rows
    if isinstance(kept, Single):
        return [kept.record] if kept.record is not None else []
    return None
