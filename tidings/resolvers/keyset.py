"""Keyset cursors of connections: a row's place in one order, opaque to clients, and the filter
of the rows strictly after (or before) it, in the filter language, so SQL reads a page and live
windows keep one with the same test.

A cursor holds the order it was made for and the row's values of its keys, ``id`` last (every
order ends with ``id``, so a place is exact). A page after a cursor is the rows past that place,
whether or not its row still exists: a row written or deleted elsewhere never shifts the page
(what an offset would do), so paging on while others write sees every row that stayed once.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from tidings.errors import BadUserInput
from tidings.events import to_jsonable
from tidings.filters import And, Compare, FieldKind, FieldSpec, Filter, Not, Op, Or
from tidings.model.collection import Collection

__all__ = [
    "Place",
    "after",
    "before",
    "column_kinds",
    "compared_kind",
    "decode_cursor",
    "encode_cursor",
    "not_after",
    "not_before",
]

Order = Sequence[tuple[str, bool]]
Place = tuple[Any, ...]  # the values of the order's keys, then the id
_NEVER: Filter = Or(())


def _order_tag(order: Order) -> list[str]:
    return [f"{column}:{'d' if descending else 'a'}" for column, descending in order]


def encode_cursor(order: Order, record: Mapping[str, Any]) -> str:
    """The cursor of ``record`` in ``order``."""
    values = [to_jsonable(record.get(column)) for column, _ in order]
    payload = orjson.dumps([_order_tag(order), [*values, record["id"]]])
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def decode_cursor(cursor: str, order: Order, coll: Collection, argument: str) -> Place:
    """A cursor's place; BAD_USER_INPUT (``field`` the argument) for garbage or another order's cursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        tag, values = orjson.loads(raw)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadUserInput(f"{argument} is not a cursor of {coll.plural}", field=argument) from None
    if tag != _order_tag(order) or not isinstance(values, list) or len(values) != len(order) + 1:
        raise BadUserInput(
            f"{argument} is a cursor of another order: page with the orderBy it was made with", field=argument
        )
    kinds = column_kinds(coll)
    place: list[Any] = []
    for (column, _), value in zip(order, values, strict=False):
        if value is not None and kinds[column] is FieldKind.DATETIME:
            try:
                value = dt.datetime.fromisoformat(value)
            except (TypeError, ValueError):
                raise BadUserInput(f"{argument} is not a cursor of {coll.plural}", field=argument) from None
        place.append(value)
    if not isinstance(values[-1], str):
        raise BadUserInput(f"{argument} is not a cursor of {coll.plural}", field=argument)
    place.append(values[-1])
    return tuple(place)


def column_kinds(coll: Collection) -> dict[str, FieldKind]:
    """Each column's kind (the collection's own fields and system fields; relations have none)."""
    return {spec.column: spec.kind for spec in coll.filter_fields.values() if isinstance(spec, FieldSpec)}


def compared_kind(kind: FieldKind) -> FieldKind:
    """The kind a column is compared as: enums and ids are text in every table, compared as strings
    in code point order (the filter compiler collates strings "C" on PostgreSQL, as reads sort)."""
    return FieldKind.STRING if kind in (FieldKind.ENUM, FieldKind.ID) else kind


def _kind(coll: Collection, column: str) -> FieldKind:
    return compared_kind(column_kinds(coll)[column])


def _is_null(column: str, kind: FieldKind, null: bool) -> Filter:
    return Compare(column, kind, Op.IS_NULL, null)


def after(coll: Collection, order: Order, place: Place) -> Filter:
    """The rows strictly after ``place`` in ``order`` (NULLs last in either direction, then id)."""
    return _beyond(coll, order, place, forward=True)


def before(coll: Collection, order: Order, place: Place) -> Filter:
    """The rows strictly before ``place`` in ``order``."""
    return _beyond(coll, order, place, forward=False)


def not_after(coll: Collection, order: Order, place: Place) -> Filter:
    """The rows at ``place`` or before it (a page after ``place`` has rows before it when this matches one)."""
    return Not(after(coll, order, place))


def not_before(coll: Collection, order: Order, place: Place) -> Filter:
    return Not(before(coll, order, place))


def _beyond(coll: Collection, order: Order, place: Place, *, forward: bool) -> Filter:
    alternatives: list[Filter] = []
    equal: list[Filter] = []
    for (column, descending), value in zip(order, place, strict=False):
        kind = _kind(coll, column)
        if value is None:
            # NULLs sort last: nothing is after a NULL but other NULLs; every non-NULL is before it.
            step = _NEVER if forward else _is_null(column, kind, False)
            same = _is_null(column, kind, True)
        else:
            op = (Op.LT if descending else Op.GT) if forward else (Op.GT if descending else Op.LT)
            step = Compare(column, kind, op, value)
            if forward:
                step = Or((step, _is_null(column, kind, True)))
            same = Compare(column, kind, Op.EQ, value)
        alternatives.append(And((*equal, step)))
        equal.append(same)
    alternatives.append(And((*equal, Compare("id", FieldKind.STRING, Op.GT if forward else Op.LT, place[-1]))))
    return Or(tuple(alternatives))
