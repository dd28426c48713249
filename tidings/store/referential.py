"""What relations make writes do, inside the write's own transaction: a delete follows the
``on_delete`` of the references that point at the record (restrict, cascade, set_null, an event per
record it changes), and a create or update checks that each reference it sets names a record the
writer may read and that a rule through relations holds (``WriteChecks``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any, Protocol

import sqlalchemy as sa

from tidings.errors import BadUserInput, Conflict, Forbidden
from tidings.events import ChangeEvent, Operation
from tidings.filters import MATCH_ALL, Filter
from tidings.model.collection import Collection
from tidings.model.names import camel_case
from tidings.model.relations import OnDelete, Reference
from tidings.store.tables import DELETED_AT, Tables
from tidings.types import Record

__all__ = ["NO_CHECKS", "Referential", "WriteChecks"]


@dataclasses.dataclass(frozen=True, slots=True)
class WriteChecks:
    """What a create or update checks inside its transaction, beside the store's own checks.

    ``references``: reference column -> the rows of its target the writer may point at (their
    read guard): an id outside them is BAD_USER_INPUT naming the field, as if it did not exist.
    ``guard``: a rule that follows relations, which the written row must match (in SQL, after
    the write, in the same transaction), else FORBIDDEN and nothing is written.
    """

    references: Mapping[str, Filter] = dataclasses.field(default_factory=dict)
    guard: Filter | None = None
    action: str = "write"


NO_CHECKS = WriteChecks()


class _Store(Protocol):
    """What these writes need of the store (tidings.store.store.Store)."""

    tables: Tables
    collections: dict[str, Collection]
    referrers: dict[str, list[tuple[Collection, Reference]]]

    def where(self, f: Filter, table: sa.FromClause) -> sa.ColumnElement[bool]: ...
    def hide_deleted(self, coll: Collection, query: sa.Select[Any]) -> sa.Select[Any]: ...
    def decode_row(self, coll: Collection, row: Mapping[Any, Any]) -> Record: ...
    def append_event(
        self,
        conn: sa.Connection,
        coll: Collection,
        operation: Operation,
        record: Record,
        previous: Record,
        changed: tuple[str, ...],
        actor: str | None,
    ) -> ChangeEvent: ...


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Referential:
    """The relation writes of one store: run inside its transaction bodies."""

    def __init__(self, store: _Store) -> None:
        self.store = store

    def delete_row(
        self,
        conn: sa.Connection,
        coll: Collection,
        current: Record,
        actor: str | None,
        events: list[ChangeEvent],
        seen: set[tuple[str, str]],
    ) -> None:
        table = self.store.tables.by_collection[coll.name]
        record_id = current["id"]
        events.append(self.store.append_event(conn, coll, Operation.DELETED, current, {}, (), actor))
        for child, ref in self.store.referrers.get(coll.name, ()):
            child_table = self.store.tables.by_collection[child.name]
            query = sa.select(child_table).where(child_table.c[ref.column] == record_id)
            if child is coll:
                query = query.where(child_table.c.id != record_id)  # a record pointing at itself goes with it
            live: list[Record] = []
            hidden: list[Record] = []
            for row in conn.execute(query).mappings():
                (hidden if row.get(DELETED_AT) is not None else live).append(self.store.decode_row(child, row))
            if ref.on_delete is OnDelete.RESTRICT and live:
                what = child.plural if len(live) > 1 else child.name
                raise Conflict(
                    f"{coll.name} {record_id!r} is referenced by {len(live)} {what} "
                    f"through {child.name}.{ref.name} (on_delete restrict): delete or move them first",
                    referencedBy=child.name,
                    count=len(live),
                )
            if ref.on_delete is OnDelete.SET_NULL:
                for record in live:
                    self._clear_reference(conn, child, ref, record, actor, events)
            else:
                for record in live:
                    if (child.name, record["id"]) not in seen:
                        seen.add((child.name, record["id"]))
                        self.delete_row(conn, child, record, actor, events, seen)
            if hidden and not coll.soft_delete:
                # Soft-deleted rows left every view already: they follow silently, so the key holds.
                ids = [r["id"] for r in hidden]
                if ref.on_delete is OnDelete.SET_NULL:
                    conn.execute(child_table.update().where(child_table.c.id.in_(ids)).values({ref.column: None}))
                else:
                    conn.execute(child_table.delete().where(child_table.c.id.in_(ids)))
        if coll.soft_delete:
            conn.execute(table.update().where(table.c.id == record_id).values({DELETED_AT: _now()}))
        else:
            conn.execute(table.delete().where(table.c.id == record_id))

    def _clear_reference(
        self,
        conn: sa.Connection,
        coll: Collection,
        ref: Reference,
        current: Record,
        actor: str | None,
        events: list[ChangeEvent],
    ) -> None:
        table = self.store.tables.by_collection[coll.name]
        record = {**current, ref.column: None, "updated_at": _now(), "version": current["version"] + 1}
        conn.execute(
            table.update()
            .where(table.c.id == current["id"])
            .values({ref.column: None, "updated_at": record["updated_at"], "version": record["version"]})
        )
        previous = {ref.column: current[ref.column]}
        events.append(self.store.append_event(conn, coll, Operation.UPDATED, record, previous, (ref.column,), actor))

    def check_references(
        self, conn: sa.Connection, coll: Collection, values: Mapping[str, Any], checks: WriteChecks
    ) -> None:
        """Each reference ``values`` set must name a record the writer may read (BAD_USER_INPUT)."""
        for ref in coll.references:
            target_id = values.get(ref.column)
            if target_id is None:
                continue
            target = self.store.collections[ref.target]
            table = self.store.tables.by_collection[target.name]
            query = sa.select(table.c.id).where(
                table.c.id == target_id, self.store.where(checks.references.get(ref.column, MATCH_ALL), table)
            )
            if conn.execute(self.store.hide_deleted(target, query)).first() is None:
                name = camel_case(ref.column)
                raise BadUserInput(f"{name}: no {target.name} with id {target_id!r}", field=name)

    def check_guard(self, conn: sa.Connection, coll: Collection, record_id: str, checks: WriteChecks) -> None:
        """The written row must match ``checks.guard`` (a rule through relations), read back in SQL."""
        if checks.guard is None:
            return
        table = self.store.tables.by_collection[coll.name]
        query = sa.select(table.c.id).where(table.c.id == record_id, self.store.where(checks.guard, table))
        if conn.execute(query).first() is None:
            raise Forbidden(f"{coll.name}: not allowed to {checks.action} this record")
