"""A live aggregate (``query @live { tasksAggregate(...) }``): its groups kept from the events.

Count, sum and avg (a sum and a count of non-null values) follow each record entering, leaving or
changing within the view with no read. A min or max follows entering values too; only when the
value that was the extreme leaves its group (a delete, an update, a record leaving the view) is
the extreme read again: one bounded query for that group, in the live group's settle (the same
exactness as a window's fill). A group whose count drops to 0 goes; without ``groupBy`` the one
group stays, at 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from tidings.events import ChangeEvent, Operation
from tidings.filters import And, Compare, Filter, Op, compile_predicate
from tidings.model.collection import Collection
from tidings.realtime.window import Needs, before_of
from tidings.resolvers.aggregates import group_value
from tidings.resolvers.keyset import column_kinds, compared_kind
from tidings.store import Reader
from tidings.store.aggregate_query import AggregateRow, AggregateSpec

__all__ = ["AggregateWindow"]


@dataclasses.dataclass(slots=True)
class _Group:
    row: AggregateRow
    counts: dict[str, int]  # per min/max column, its non-null values (the extreme is null at 0)
    lost: set[tuple[str, str]]  # ("min" | "max", column): the extreme left, to be read again


def _null_last(value: Any) -> tuple[int, Any]:
    return (1, None) if value is None else (0, value)


class AggregateWindow:
    """The kept value of one live aggregate (see LiveSource for the protocol it follows)."""

    def __init__(
        self, collection: Collection, spec: AggregateSpec, view: Filter, *, exact_before: bool, max_groups: int
    ) -> None:
        self.collection = collection
        self.spec = spec
        self.view = view
        self.in_view = compile_predicate(view)
        self.exact_before = exact_before  # False: the view reads updatedAt, whose old value no event keeps
        self.max_groups = max_groups
        self.groups: dict[tuple[Any, ...], _Group] = {}
        self.stale = True
        self.extreme_columns = sorted({*spec.mins, *spec.maxs})
        self.tracked = {*spec.group_by, *spec.sums, *self.extreme_columns}
        self.kinds = {c: compared_kind(kind) for c, kind in column_kinds(collection).items()}

    # -- reads -----------------------------------------------------------------------------

    def needs(self) -> int:
        if self.stale:
            return Needs.RELOAD
        if any(g.lost for g in self.groups.values()):
            return Needs.FILL
        return Needs.NOTHING

    async def reload(self, reader: Reader) -> None:
        spec = dataclasses.replace(self.spec, counts=tuple(self.extreme_columns))
        rows = await reader.aggregate(self.collection, self.view, spec)
        self.groups = {row.key: _Group(row, row.counts, set()) for row in rows}
        self._ensure_total_group()
        if len(self.groups) > self.max_groups:
            raise OverflowError(f"A live aggregate keeps at most {self.max_groups} groups, got {len(self.groups)}")
        self.stale = False

    async def fill(self, reader: Reader) -> None:
        """Read again the extremes that left, one query per group."""
        for key, group in list(self.groups.items()):
            if not group.lost:
                continue
            mins = tuple(sorted(c for kind, c in group.lost if kind == "min"))
            maxs = tuple(sorted(c for kind, c in group.lost if kind == "max"))
            where = And((self.view, *self._key_filter(key)))
            rows = await reader.aggregate(self.collection, where, AggregateSpec(mins=mins, maxs=maxs))
            group.row.mins.update(rows[0].mins)
            group.row.maxs.update(rows[0].maxs)
            group.lost.clear()

    def _key_filter(self, key: tuple[Any, ...]) -> list[Filter]:
        terms: list[Filter] = []
        for column, value in zip(self.spec.group_by, key, strict=True):
            kind = self.kinds[column]
            terms.append(
                Compare(column, kind, Op.IS_NULL, True) if value is None else Compare(column, kind, Op.EQ, value)
            )
        return terms

    def _ensure_total_group(self) -> None:
        if not self.spec.group_by and () not in self.groups:
            row = AggregateRow(
                (),
                0,
                {c: (0, 0) for c in self.spec.sums},
                dict.fromkeys(self.spec.mins),
                dict.fromkeys(self.spec.maxs),
            )
            self.groups[()] = _Group(row, dict.fromkeys(self.extreme_columns, 0), set())

    # -- events ----------------------------------------------------------------------------

    def apply(self, event: ChangeEvent) -> bool:
        if self.stale:
            return True
        if not self.exact_before and event.operation is Operation.UPDATED:
            self.stale = True
            return True
        after = event.after()
        before = before_of(event)
        was = before if before is not None and self.in_view(before) else None
        now = after if after is not None and self.in_view(after) else None
        if was is None and now is None:
            return False
        if was is not None and now is not None and all(was.get(c) == now.get(c) for c in self.tracked):
            return False
        if was is not None:
            self._remove(was)
        if now is not None:
            self._add(now)
        if len(self.groups) > self.max_groups:
            raise OverflowError(f"A live aggregate keeps at most {self.max_groups} groups")
        return True

    def _key(self, record: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(record.get(c) for c in self.spec.group_by)

    def _remove(self, record: Mapping[str, Any]) -> None:
        key = self._key(record)
        group = self.groups.get(key)
        if group is None:  # cannot be (the record was counted in it): read everything again
            self.stale = True
            return
        row = group.row
        row.count -= 1
        if row.count == 0 and self.spec.group_by:
            del self.groups[key]
            return
        for column, (total, n) in row.sums.items():
            value = record.get(column)
            if value is not None:
                row.sums[column] = (total - value, n - 1) if n > 1 else (0, 0)
        for column in self.extreme_columns:
            value = record.get(column)
            if value is None:
                continue
            group.counts[column] -= 1
            for kind, extremes in (("min", row.mins), ("max", row.maxs)):
                if column not in extremes:
                    continue
                if group.counts[column] == 0:
                    extremes[column] = None
                    group.lost.discard((kind, column))
                elif extremes[column] == value:
                    group.lost.add((kind, column))  # another row may hold the same value: only a read knows

    def _add(self, record: Mapping[str, Any]) -> None:
        key = self._key(record)
        group = self.groups.get(key)
        if group is None:
            row = AggregateRow(
                key,
                0,
                {c: (0, 0) for c in self.spec.sums},
                dict.fromkeys(self.spec.mins),
                dict.fromkeys(self.spec.maxs),
            )
            group = self.groups[key] = _Group(row, dict.fromkeys(self.extreme_columns, 0), set())
        row = group.row
        row.count += 1
        for column, (total, n) in row.sums.items():
            value = record.get(column)
            if value is not None:
                row.sums[column] = (total + value, n + 1)
        for column in self.extreme_columns:
            value = record.get(column)
            if value is None:
                continue
            group.counts[column] += 1
            for kind, extremes in (("min", row.mins), ("max", row.maxs)):
                if column not in extremes:
                    continue
                current = extremes[column]
                lost = (kind, column) in group.lost
                # Past a lost extreme (the true one lies beyond it), or at it, the new value is the extreme.
                if (
                    current is None
                    or (value < current if kind == "min" else current < value)
                    or (lost and value == current)
                ):
                    extremes[column] = value
                    group.lost.discard((kind, column))

    # -- rendering -------------------------------------------------------------------------

    def value(self) -> dict[str, Any]:
        ordered = sorted(self.groups.values(), key=lambda g: tuple(_null_last(v) for v in g.row.key))
        return {"groups": [group_value(self.spec, g.row) for g in ordered]}
