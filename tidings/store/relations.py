"""Related rows in batches: one SELECT per relation and level, whatever the number of records.

- ``by_ids``: the targets of a reference for many records at once (``Task.project``).
- ``children``: a back reference's rows for many parents at once, each parent's own page
  (``Project.tasks(where, orderBy, limit, offset)``), cut per parent by ROW_NUMBER() in SQL.
- ``expand``: records with the related rows a relation filter's predicate reads, at
  ``"@" + relation`` (tidings.filters.predicate), nested as deep as the filter goes; to many,
  only the rows that decide its quantifiers.

Each takes an ``Overlay``: rows to read as given instead of as stored (collection -> id -> the
row, or None for no row). A change's consequences are decided with it: the same snapshot read
with the changed row as it was before the change, and as it is after (tidings.realtime.related).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from tidings.errors import BadUserInput
from tidings.filters import MATCH_ALL, And, Filter, Not, Or, Quantifier, Related, compile_predicate, related_nodes
from tidings.model.collection import Collection
from tidings.model.names import camel_case
from tidings.store.reads import CREATION_ORDER, Reader, order_clauses, sort_key
from tidings.types import Record

__all__ = ["Overlay", "by_ids", "children", "expand"]

Overlay = Mapping[str, Mapping[str, Record | None]]

_ROW = "__tidings_row"  # "__" names are GraphQL's own: no field has it
_CHUNK = 500  # ids per statement (SQLite's bound parameters, PostgreSQL's plan size)


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _present(image: Record | None) -> bool:
    return image is not None and image.get("deleted_at") is None


async def _overlaid(
    reader: Reader, coll: Collection, images: Iterable[Record], f: Filter, overlay: Overlay
) -> list[Record]:
    """The overlay's ``images`` that match ``f`` (its relations read through the overlay too)."""
    present = [image for image in images if _present(image)]
    if not present or f == MATCH_ALL:
        return present
    keep = compile_predicate(f)
    return [
        image
        for image, view in zip(present, await expand(reader, coll, present, f, overlay), strict=True)
        if keep(view)
    ]


async def by_ids(
    reader: Reader,
    coll: Collection,
    ids: Iterable[str | None],
    guard: Filter = MATCH_ALL,
    overlay: Overlay | None = None,
) -> dict[str, Record]:
    """id -> record, for the ``ids`` that exist, are not deleted and match ``guard``."""
    store = reader.store
    table = store.tables.by_collection[coll.name]
    wanted = sorted({str(i) for i in ids if i is not None})
    swapped = overlay.get(coll.name, {}) if overlay else {}
    found: dict[str, Record] = {}
    if swapped:
        images = [image for i in wanted if i in swapped and (image := swapped[i]) is not None]
        for image in await _overlaid(reader, coll, images, guard, overlay or {}):
            found[image["id"]] = image
        wanted = [i for i in wanted if i not in swapped]
    for chunk in _chunks(wanted):
        query = sa.select(table).where(table.c.id.in_(list(chunk)), store.where(guard, table))
        for row in await reader.rows(store.hide_deleted(coll, query)):
            record = store.decode_row(coll, row)
            found[record["id"]] = record
    return found


async def children(
    reader: Reader,
    coll: Collection,
    column: str,
    parent_ids: Iterable[str],
    where: Filter,
    order_by: Sequence[tuple[str, bool]] = (),
    limit: int | None = None,
    offset: int = 0,
    *,
    budget: int | None = None,
    overlay: Overlay | None = None,
) -> dict[str, list[Record]]:
    """parent id -> its rows of ``coll`` (``column`` = the parent's id) matching ``where``, in
    ``order_by`` order then id, each parent's rows cut to ``offset``/``limit`` on its own.

    ``budget``: the most rows the read may return for all parents together; past it, BAD_USER_INPUT
    (a nested list under a long list would otherwise read limit x parents rows). With an
    ``overlay`` of ``coll``, the lists are read a little longer, overlaid, then ordered and cut here."""
    store = reader.store
    table = store.tables.by_collection[coll.name]
    wanted = sorted(set(parent_ids))
    result: dict[str, list[Record]] = {p: [] for p in wanted}
    swapped = overlay.get(coll.name, {}) if overlay else {}
    if swapped:
        # Each parent's page as given: of its stored rows, at most len(swapped) give way to the
        # overlay before the page's end, so that many more rows than the page hold all it needs.
        reach = None if limit is None else offset + limit + len(swapped)
        whole = await children(reader, coll, column, wanted, where, order_by, reach)
        for parent, records in whole.items():
            result[parent] = [r for r in records if r["id"] not in swapped]
        images = [i for i in swapped.values() if i is not None and i.get(column) in result]
        for image in await _overlaid(reader, coll, images, where, overlay or {}):
            result[image[column]].append(image)
        key = sort_key(order_by or CREATION_ORDER)
        total = 0
        for parent, records in result.items():
            records.sort(key=key)
            result[parent] = cut = records[offset : None if limit is None else offset + limit]
            total += len(cut)
        if budget is not None and total > budget:
            raise _over_budget(coll, column, budget)
        return result
    order = order_clauses(table, order_by, store.dialect)
    for chunk in _chunks(wanted):
        query = sa.select(table).where(table.c[column].in_(list(chunk)), store.where(where, table))
        query = store.hide_deleted(coll, query)
        if limit is None and not offset:
            query = query.order_by(table.c[column], *order)
        else:
            numbered = query.add_columns(
                sa.func.row_number().over(partition_by=table.c[column], order_by=order).label(_ROW)
            ).subquery()
            bounds = [numbered.c[_ROW] > offset]
            if limit is not None:
                bounds.append(numbered.c[_ROW] <= offset + limit)
            query = (
                sa.select(*(numbered.c[c.name] for c in table.c))
                .where(*bounds)
                .order_by(numbered.c[column], numbered.c[_ROW])
            )
        if budget is not None:
            query = query.limit(budget + 1)
        rows = await reader.rows(query)
        if budget is not None:
            if len(rows) > budget:
                raise _over_budget(coll, column, budget)
            budget -= len(rows)
        for row in rows:
            record = store.decode_row(coll, row)
            result[record[column]].append(record)
    return result


def _over_budget(coll: Collection, column: str, budget: int) -> BadUserInput:
    return BadUserInput(
        f"A nested {coll.plural} list would read more than {budget} rows for its parents: "
        "give it a smaller limit, or its parent list one",
        field=camel_case(column.removesuffix("_id")),
        maxRows=budget,
    )


async def expand(
    reader: Reader,
    coll: Collection,
    records: Sequence[Mapping[str, Any]],
    f: Filter,
    overlay: Overlay | None = None,
) -> list[dict[str, Any]]:
    """Copies of ``records`` carrying the related rows ``f`` reads: ``"@project"`` (a record or
    None), ``"@tasks"`` (a list), not deleted, each expanded for the filters nested in it. One
    SELECT per relation and level, for all the records together."""
    out = [dict(r) for r in records]
    found: dict[str, list[Related]] = {}
    for node in related_nodes(f):
        found.setdefault(node.relation, []).append(node)
    if not out or not found:
        return out
    collections = reader.store.collections
    for name, nodes in found.items():
        node = nodes[0]
        target = collections[node.target]
        inner: Filter = And(tuple(And((n.guard, n.item)) for n in nodes))
        keys = [r.get(node.local_column) for r in out]
        if node.target_column == "id":  # a reference: one record or None
            rows = await by_ids(reader, target, [k for k in keys if k is not None], overlay=overlay)
            related = await expand(reader, target, list(rows.values()), inner, overlay)
            by_id = {r["id"]: r for r in related}
            for record, key in zip(out, keys, strict=True):
                record["@" + name] = by_id.get(key) if key is not None else None
        else:  # a back reference: a list, of only the rows that can decide a quantifier
            # SOME and NONE are decided by the readable rows that match, EVERY by the readable rows
            # that do not: loading just those (a room's membership of one user, not its 10,000
            # members) gives every quantifier on this relation the answer all the rows would.
            deciding = Or(
                tuple(And((n.guard, Not(n.item) if n.quantifier is Quantifier.EVERY else n.item)) for n in nodes)
            )
            parents = [k for k in keys if k is not None]
            lists = await children(reader, target, node.target_column, parents, deciding, overlay=overlay)
            flat = [r for rows_ in lists.values() for r in rows_]
            expanded = await expand(reader, target, flat, inner, overlay)
            grouped: dict[str, list[dict[str, Any]]] = {}
            for r in expanded:
                grouped.setdefault(r[node.target_column], []).append(r)
            for record, key in zip(out, keys, strict=True):
                record["@" + name] = grouped.get(key, []) if key is not None else []
    return out
