"""Transactions from your own resolvers: several writes through the generated mutations' path
(input checks, rules, before-write hooks, ``expectedVersion``), committed all or nothing.

Each ``await tx.create/update/delete(...)`` checks its input and the caller's rules and runs the
before-write hooks at once (a refusal raises there, nothing is written); the writes themselves
run when the ``async with`` block ends, as one transaction body on the store's writer: group
commit carries on around it, its events get consecutive seqs, and one doorbell carries them
all, so subscribers get them in one dispatch pass and a live result changes once. A write that
fails inside (``CONFLICT``, ``NOT_FOUND``, a rule on the new record) rolls back every write of
the transaction and is raised out of the ``async with``, to become the resolver's GraphQL error.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

import sqlalchemy as sa
import strawberry

from tidings.auth.rules import Action
from tidings.errors import BadUserInput, NotFound, TidingsError
from tidings.events import ChangeEvent
from tidings.filters import And, parse_filter
from tidings.model.collection import Collection
from tidings.resolvers.context import Context
from tidings.resolvers.convert import order_keys
from tidings.resolvers.crud import _before_write, _check_input, _forbidden_if_readable, _write_guard
from tidings.resolvers.relations import write_checks
from tidings.types import Record

__all__ = ["Info", "Staged", "Transaction", "TransactionError", "context_of", "record", "records", "transaction"]

Info = strawberry.Info[Context, None]
"""The ``info`` of your resolvers: ``info.context`` is tidings' ``Context`` (principal, services)."""


class TransactionError(RuntimeError):
    """Your code used a transaction wrongly (a write after it ended, a result read before it committed)."""


@dataclasses.dataclass(slots=True)
class Staged:
    """One write of a transaction: ``id`` at once; ``record`` and ``events`` once it committed.

    ``events``: its own event first, then (for a delete) one per record its references'
    ``on_delete`` changed; none for an update that changed nothing (nothing was written for it).
    """

    collection: str
    action: str
    id: str
    _record: Record | None = None
    _events: list[ChangeEvent] = dataclasses.field(default_factory=list)
    _done: bool = False

    @property
    def record(self) -> Record:
        """The record as written (for a delete, its last state)."""
        if not self._done or self._record is None:
            raise TransactionError(f"The {self.action} of {self.collection} {self.id!r} has not committed yet")
        return self._record

    @property
    def events(self) -> list[ChangeEvent]:
        if not self._done:
            raise TransactionError(f"The {self.action} of {self.collection} {self.id!r} has not committed yet")
        return self._events


@dataclasses.dataclass(slots=True)
class _Write:
    staged: Staged
    body: Callable[[sa.Connection], tuple[Record, list[ChangeEvent]]]
    coll: Collection
    action: Action


class _Failed(Exception):
    """A body that raised, with which write it was (to tell NOT_FOUND from FORBIDDEN after the rollback)."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


def context_of(info: Any) -> Context:
    """tidings' ``Context`` from a resolver's ``info`` (Strawberry's or graphql-core's) or a Context."""
    ctx = info if isinstance(info, Context) else getattr(info, "context", None)
    if not isinstance(ctx, Context):
        raise TypeError(f"Expected a resolver's info or a tidings Context, got {type(info).__name__}")
    return ctx


def _collection_of(ctx: Context, collection: Any) -> Collection:
    """A collection by its class, ``Collection`` or name."""
    name = getattr(getattr(collection, "__tidings_collection__", collection), "name", collection)
    coll = ctx.services.store.collections.get(str(name))
    if coll is None:
        raise BadUserInput(f"No collection named {name!r}")
    return coll


async def records(
    info: Any,
    collection: Any,
    *,
    where: Mapping[str, Any] | None = None,
    order_by: Sequence[Mapping[str, str]] = (),
    limit: int | None = None,
) -> list[Record]:
    """What the caller may read of ``collection``, as ``tasks(where, orderBy, limit)`` answers it:
    ``where`` and ``order_by`` spelled as in GraphQL (``{"columnId": {"eq": id}}``, ``[{"position": "ASC"}]``),
    read in the request's one snapshot."""
    ctx = context_of(info)
    coll = _collection_of(ctx, collection)
    guard = ctx.services.authorizer.guard(coll.name, ctx.principal, Action.READ)
    flt = And((guard, parse_filter(where, coll.filter_fields)))
    reader = await ctx.reader()
    max_limit = ctx.services.max_limit
    return await reader.list(coll, flt, order_keys(list(order_by), coll), min(limit or max_limit, max_limit), 0)


async def record(info: Any, collection: Any, record_id: str) -> Record | None:
    """One record the caller may read, or None (as ``task(id)`` answers)."""
    ctx = context_of(info)
    coll = _collection_of(ctx, collection)
    guard = ctx.services.authorizer.guard(coll.name, ctx.principal, Action.READ)
    reader = await ctx.reader()
    return await reader.get(coll, str(record_id), guard)


def transaction(info: Any) -> Transaction:
    """``async with tidings.transaction(info) as tx:`` writes as the caller of the resolver."""
    return Transaction(context_of(info))


class Transaction:
    """Writes staged by one resolver, committed together when its ``async with`` block ends.

    The writes are the caller's (``ctx.principal``): the collections' rules apply to them as to
    the generated mutations, and the events name the caller as their actor.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._writes: list[_Write] = []
        self._state = "open"  # open -> committed | rolled back
        self.events: list[ChangeEvent] = []  # after commit: every event, in seq order

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._state = "rolled back"  # nothing was written: the writes run only here
            return
        await self.commit()

    def _collection(self, collection: Any) -> Collection:
        return _collection_of(self.ctx, collection)

    def _stage(self, write: _Write) -> Staged:
        if self._state != "open":
            raise TransactionError(f"This transaction has {self._state}: start another for more writes")
        self._writes.append(write)
        return write.staged

    async def create(self, collection: Any, values: Any) -> Staged:
        """Stage a create of ``values`` (by field name, Python or GraphQL spelling, or a generated input)."""
        ctx, coll = self.ctx, self._collection(collection)
        columns = _columns(coll, values)
        _check_input(coll, columns, creating=True)
        authorizer = ctx.services.authorizer
        in_sql = authorizer.prepare_create(coll, ctx.principal, columns)
        await _before_write(ctx, coll, Action.CREATE, columns)
        record, body = ctx.services.store.create_body(
            coll,
            columns,
            account=authorizer.account_for_new(ctx.principal),
            actor=ctx.principal.sub,
            checks=write_checks(ctx, coll, in_sql, Action.CREATE),
        )

        def created(conn: sa.Connection) -> tuple[Record, list[ChangeEvent]]:
            return record, [body(conn)]

        return self._stage(_Write(Staged(coll.name, "create", record["id"]), created, coll, Action.CREATE))

    async def update(
        self, collection: Any, record_id: str, values: Any, *, expected_version: int | None = None
    ) -> Staged:
        """Stage an update; with ``expected_version``, the transaction fails CONFLICT if the record moved on."""
        ctx, coll, record_id = self.ctx, self._collection(collection), str(record_id)
        columns = _columns(coll, values)
        _check_input(coll, columns, creating=False)
        authorizer = ctx.services.authorizer
        guard = await _write_guard(ctx, coll, record_id, Action.UPDATE)
        await _before_write(ctx, coll, Action.UPDATE, columns, record_id)
        principal = ctx.principal
        body = ctx.services.store.update_body(
            coll,
            record_id,
            columns,
            expected_version=expected_version,
            guard=guard,
            actor=principal.sub,
            check=lambda new, previous: authorizer.check_write_result(coll, principal, new, previous),
            checks=write_checks(ctx, coll, authorizer.guard_in_sql(coll.name, principal), Action.UPDATE),
        )

        def updated(conn: sa.Connection) -> tuple[Record, list[ChangeEvent]]:
            record, event = body(conn)
            return record, [] if event is None else [event]

        return self._stage(_Write(Staged(coll.name, "update", record_id), updated, coll, Action.UPDATE))

    async def delete(self, collection: Any, record_id: str) -> Staged:
        """Stage a delete (a soft delete for collections that have it), with what its references'
        ``on_delete`` do (CONFLICT for ``restrict`` while records point at it)."""
        ctx, coll, record_id = self.ctx, self._collection(collection), str(record_id)
        guard = await _write_guard(ctx, coll, record_id, Action.DELETE)
        await _before_write(ctx, coll, Action.DELETE, {}, record_id)
        body = ctx.services.store.delete_body(coll, record_id, guard=guard, actor=ctx.principal.sub)
        return self._stage(_Write(Staged(coll.name, "delete", record_id), body, coll, Action.DELETE))

    async def commit(self) -> list[ChangeEvent]:
        """Write everything staged as one transaction and hand its events on; called by ``async with``."""
        if self._state != "open":
            raise TransactionError(f"This transaction has {self._state} already")
        self._state = "committed"
        writes = self._writes
        if not writes:
            return []

        def numbered(i: int, body: Callable[[sa.Connection], Any]) -> Callable[[sa.Connection], Any]:
            def run(conn: sa.Connection) -> Any:
                try:
                    return body(conn)
                except TidingsError as exc:
                    raise _Failed(i, exc) from exc

            return run

        store, tracing = self.ctx.services.store, self.ctx.services.tracing
        try:
            with tracing.commit(writes[0].coll.name, "transaction"):
                results = await store.transaction([numbered(i, w.body) for i, w in enumerate(writes)])
        except _Failed as failed:
            self._state = "rolled back"
            write, error = writes[failed.index], failed.error
            if isinstance(error, NotFound) and write.action is not Action.CREATE:
                await _forbidden_if_readable(self.ctx, write.coll, write.staged.id, write.action)
            raise error from None
        except BaseException:
            self._state = "rolled back"
            raise
        events: list[ChangeEvent] = []
        for write, (record, written) in zip(writes, results, strict=True):
            write.staged._record, write.staged._events, write.staged._done = record, written, True
            events.extend(written)
        self.events = events
        if events:
            await self.ctx.services.publisher.publish_batch(events)
        return events


def _columns(coll: Collection, values: Any) -> dict[str, Any]:
    """Values by column, from a mapping (Python or GraphQL field names) or a generated input object."""
    if not isinstance(values, Mapping):
        if not dataclasses.is_dataclass(values):
            raise BadUserInput(f"Values for {coll.name} must be a mapping or an input object, got {type(values)}")
        values = {
            f.name: getattr(values, f.name)
            for f in dataclasses.fields(values)
            if getattr(values, f.name) is not strawberry.UNSET
        }
    by_graphql = coll.columns_by_graphql_name
    out: dict[str, Any] = {}
    for key, value in values.items():
        column = key if key in coll.field_map else by_graphql.get(key)
        if column is None:
            raise BadUserInput(f"{coll.name} has no field {key!r}", field=str(key))
        out[column] = value.value if isinstance(value, enum.Enum) else value
    return out
