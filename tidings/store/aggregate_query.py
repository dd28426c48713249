"""The SQL of an aggregate: per group of ``group_by`` values, the row count, and per column asked
for its sum with its count of non-NULL values (avg is their quotient), its min, its max."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

__all__ = ["AggregateRow", "AggregateSpec", "aggregate_query", "decode_aggregate"]


@dataclasses.dataclass(frozen=True, slots=True)
class AggregateSpec:
    """What an aggregate computes, by column: grouped by, summed (and averaged), min, max."""

    group_by: tuple[str, ...] = ()
    sums: tuple[str, ...] = ()
    mins: tuple[str, ...] = ()
    maxs: tuple[str, ...] = ()
    counts: tuple[str, ...] = ()  # non-NULL values (a live min or max knows when its last one leaves)


@dataclasses.dataclass(slots=True)
class AggregateRow:
    """One group as read: its key (values of ``group_by``), count, sums as (total, non-NULL count)."""

    key: tuple[Any, ...]
    count: int
    sums: dict[str, tuple[int | float, int]]
    mins: dict[str, Any]
    maxs: dict[str, Any]
    counts: dict[str, int] = dataclasses.field(default_factory=dict)


def _ordered(col: Any, dialect: str) -> Any:
    # Code point order for text, as reads sort and the filters compare (see Reader.list).
    if dialect == "postgresql" and isinstance(col.type, sa.String):
        return col.collate("C")
    return col


def aggregate_query(table: sa.Table, dialect: str, spec: AggregateSpec) -> sa.Select[Any]:
    """The SELECT (without its WHERE): labels ``g<i>``, ``n``, ``s<i>``/``c<i>``, ``lo<i>``, ``hi<i>``, ``k<i>``."""
    columns: list[Any] = [table.c[name].label(f"g{i}") for i, name in enumerate(spec.group_by)]
    columns.append(sa.func.count().label("n"))
    for i, name in enumerate(spec.sums):
        columns += [sa.func.sum(table.c[name]).label(f"s{i}"), sa.func.count(table.c[name]).label(f"c{i}")]
    for i, name in enumerate(spec.mins):
        col = table.c[name]
        columns.append(sa.func.min(_ordered(col, dialect), type_=col.type).label(f"lo{i}"))
    for i, name in enumerate(spec.maxs):
        col = table.c[name]
        columns.append(sa.func.max(_ordered(col, dialect), type_=col.type).label(f"hi{i}"))
    for i, name in enumerate(spec.counts):
        columns.append(sa.func.count(table.c[name]).label(f"k{i}"))
    query = sa.select(*columns).select_from(table)
    for name in spec.group_by:
        col = _ordered(table.c[name], dialect)
        query = query.group_by(table.c[name]).order_by(col.asc().nulls_last())
    return query


def _number(value: Any) -> int | float:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value  # type: ignore[no-any-return]


def decode_aggregate(spec: AggregateSpec, row: Mapping[Any, Any]) -> AggregateRow:
    return AggregateRow(
        key=tuple(row[f"g{i}"] for i in range(len(spec.group_by))),
        count=int(row["n"]),
        sums={
            name: (_number(row[f"s{i}"]) if row[f"s{i}"] is not None else 0, int(row[f"c{i}"]))
            for i, name in enumerate(spec.sums)
        },
        mins={name: row[f"lo{i}"] for i, name in enumerate(spec.mins)},
        maxs={name: row[f"hi{i}"] for i, name in enumerate(spec.maxs)},
        counts={name: int(row[f"k{i}"]) for i, name in enumerate(spec.counts)},
    )
