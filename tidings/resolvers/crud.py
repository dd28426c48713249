"""Query and mutation resolvers, built once per collection at start-up.

No ``from __future__ import annotations``: the resolvers' annotations are the
generated types themselves, which Strawberry reads as objects.

Each resolver is written to graphql-core's own calling convention: ``root``, then
``info``, then the arguments as graphql-core coerced them (input objects as dicts keyed
by GraphQL name, enums as members), each parameter named as its GraphQL argument.
Strawberry reads their signatures to declare the fields; ``build_schema`` then makes
each one its field's graphql-core resolver (``DIRECT``), skipping Strawberry's
wrapper, which rebuilt every input object as a Strawberry instance per call (a
tenth of a ``tasks(where, orderBy)`` request) only for tidings to turn it back into
a dict. ``info`` is then graphql-core's ``GraphQLResolveInfo``; they read its
``context`` only.
"""

from typing import Any

import strawberry
from graphql import get_named_type
from strawberry.types import Info

from tidings.auth.rules import Action
from tidings.errors import BadUserInput, Forbidden, NotFound
from tidings.events import ChangeEvent
from tidings.filters import And, Filter, parse_filter
from tidings.hooks import WriteInfo
from tidings.model.collection import Collection, camel_case
from tidings.resolvers.context import DIRECT, Context, transport_only
from tidings.resolvers.convert import check_page, input_columns, order_keys
from tidings.resolvers.prefetch import attach, plan
from tidings.resolvers.relations import read_guard_for, write_checks
from tidings.resolvers.truncation import read_capped
from tidings.schema.types import CollectionTypes

_DIRECT = {DIRECT: True}


def _rename(fn: Any, name: str) -> None:
    # create_type keys fields by Python name: each collection's resolvers need their own.
    fn.__name__ = fn.__qualname__ = name


def _guarded(where: Filter, guard: Filter) -> Filter:
    return And((guard, where))


async def _write_guard(ctx: Context, coll: Collection, record_id: str, action: Action) -> Filter:
    """The write guard; FORBIDDEN (not NOT_FOUND) when the caller can see the record but not change it."""
    try:
        return ctx.services.authorizer.guard(coll.name, ctx.principal, action)
    except Forbidden:
        await _not_found_unless_readable(ctx, coll, record_id)
        raise


async def _not_found_unless_readable(ctx: Context, coll: Collection, record_id: str) -> None:
    read = ctx.services.authorizer.guard(coll.name, ctx.principal, Action.READ)
    if await ctx.services.store.get(coll, record_id, read) is None:
        raise NotFound(f"No {coll.name} with id {record_id!r}", id=record_id)


async def _forbidden_if_readable(ctx: Context, coll: Collection, record_id: str, action: Action) -> None:
    """A write guard missed: say FORBIDDEN if the caller can at least read the record."""
    await _not_found_unless_readable(ctx, coll, record_id)
    raise Forbidden(f"{coll.name}: not allowed to {action.value} this record")


async def _before_write(
    ctx: Context, coll: Collection, action: Action, values: dict[str, Any], record_id: str | None = None
) -> None:
    """The app's before_write hooks: after the input checks and the caller's rules, before the store."""
    if ctx.services.hooks.hooks.write:
        info = WriteInfo(coll.name, action.value, dict(values), ctx.principal, record_id)
        await ctx.services.hooks.before_write(info)


def _committed(ctx: Context, span: Any, event: ChangeEvent | None) -> None:
    """The commit span learns the event's position (tidings.tracing); nothing when tracing is off."""
    if event is not None and ctx.services.tracing.enabled:
        span.committed(event.seq, f"{ctx.services.store.epoch}:{event.seq}")


def _check_input(coll: Collection, values: dict[str, Any], *, creating: bool) -> None:
    for name, value in values.items():
        f = coll.field_map[name]
        if value is None and not f.nullable:
            raise BadUserInput(f"Field '{f.graphql_name}' of {coll.name} cannot be null", field=f.graphql_name)
    if creating:
        for f in coll.fields:
            if f.required and values.get(f.name) is None:
                raise BadUserInput(f"Field '{f.graphql_name}' of {coll.name} is required", field=f.graphql_name)


async def _prefetch(ctx: Context, info: Any, coll: Collection, records: list[Any], reader: Any) -> None:
    """The related records the selection nests, for all ``records`` at once (tidings.resolvers.prefetch)."""
    plans = plan(
        info.field_nodes,
        get_named_type(info.return_type),
        info.fragments,
        info.variable_values,
        coll,
        ctx.services.store.collections,
        read_guard_for(ctx),
        ctx.services.max_limit,
    )
    if plans:
        await attach(reader, records, plans)


def build_query_fields(t: CollectionTypes) -> list[Any]:
    coll = t.collection
    related = bool(coll.references or coll.back_references)
    Record, Where, OrderBy = t.record, t.where, t.order_by  # noqa: N806

    async def get_one(root: Any, info: Info, id: strawberry.ID) -> Record | None:  # type: ignore[valid-type]  # noqa: A002
        ctx: Context = info.context
        guard = ctx.services.authorizer.guard(coll.name, ctx.principal, Action.READ)
        reader = await ctx.reader()
        record = await reader.get(coll, str(id), guard)
        if record is not None and related:
            await _prefetch(ctx, info, coll, [record], reader)
        return record

    async def get_many(
        root: Any,
        info: Info,
        where: Where | None = None,  # type: ignore[valid-type]
        orderBy: list[OrderBy] | None = None,  # type: ignore[valid-type]  # noqa: N803
        limit: int | None = None,
        offset: int | None = 0,
    ) -> list[Record]:  # type: ignore[valid-type]
        ctx: Context = info.context
        max_limit = ctx.services.max_limit
        check_page(limit, offset, max_limit)
        guard = ctx.services.authorizer.guard(coll.name, ctx.principal, Action.READ)
        flt = parse_filter(where, coll.filter_fields, guard_for=read_guard_for(ctx))
        order = order_keys(orderBy, coll)
        reader = await ctx.reader()
        if limit is not None:
            records = await reader.list(coll, _guarded(flt, guard), order, limit, offset or 0)
        else:
            capped = reader.list(coll, _guarded(flt, guard), order, max_limit + 1, offset or 0)
            records = await read_capped(ctx, info, capped)
        if records and related:
            await _prefetch(ctx, info, coll, records, reader)
        return records

    async def count(root: Any, info: Info, where: Where | None = None) -> int:  # type: ignore[valid-type]
        ctx: Context = info.context
        guard = ctx.services.authorizer.guard(coll.name, ctx.principal, Action.READ)
        flt = parse_filter(where, coll.filter_fields, guard_for=read_guard_for(ctx))
        reader = await ctx.reader()
        return await reader.count(coll, _guarded(flt, guard))

    _rename(get_one, f"get_{coll.table_name}_one")
    _rename(get_many, f"get_{coll.table_name}")
    _rename(count, f"count_{coll.table_name}")
    return [
        strawberry.field(
            get_one, name=coll.single_field, description=f"One {coll.name} by id, or null.", metadata=_DIRECT
        ),
        strawberry.field(
            get_many,
            name=coll.plural,
            description=f"{coll.plural}, filtered, sorted and paginated.",
            metadata=_DIRECT,
        ),
        strawberry.field(
            count,
            name=count_field(coll),
            description=f"How many {coll.plural} match where (that the caller may read); live with query @live.",
            metadata=_DIRECT,
        ),
    ]


def count_field(coll: Collection) -> str:
    """The name of a collection's count query field: ``tasksCount``."""
    return f"{coll.plural}Count"


def build_mutation_fields(t: CollectionTypes) -> list[Any]:
    coll = t.collection
    Record, CreateInput, UpdateInput = t.record, t.create_input, t.update_input  # noqa: N806

    async def create(root: Any, info: Info, input: CreateInput) -> Record:  # type: ignore[valid-type]  # noqa: A002
        ctx: Context = info.context
        values = input_columns(coll, input)
        _check_input(coll, values, creating=True)
        authorizer = ctx.services.authorizer
        in_sql = authorizer.prepare_create(coll, ctx.principal, values)
        await _before_write(ctx, coll, Action.CREATE, values)
        with ctx.services.tracing.commit(coll.name, "create") as span:
            record, event = await ctx.services.store.create(
                coll,
                values,
                account=authorizer.account_for_new(ctx.principal),
                actor=ctx.principal.sub,
                checks=write_checks(ctx, coll, in_sql, Action.CREATE),
            )
            _committed(ctx, span, event)
        await ctx.services.publisher.publish(event)
        return record

    async def update(
        root: Any,
        info: Info,
        id: strawberry.ID,  # noqa: A002
        input: UpdateInput,  # type: ignore[valid-type]  # noqa: A002
        expectedVersion: int | None = None,  # noqa: N803
    ) -> Record:  # type: ignore[valid-type]
        ctx: Context = info.context
        values = input_columns(coll, input)
        _check_input(coll, values, creating=False)
        authorizer = ctx.services.authorizer
        guard = await _write_guard(ctx, coll, str(id), Action.UPDATE)
        await _before_write(ctx, coll, Action.UPDATE, values, str(id))
        try:
            with ctx.services.tracing.commit(coll.name, "update") as span:
                record, event = await ctx.services.store.update(
                    coll,
                    str(id),
                    values,
                    expected_version=expectedVersion,
                    guard=guard,
                    actor=ctx.principal.sub,
                    check=lambda new, previous: authorizer.check_write_result(coll, ctx.principal, new, previous),
                    checks=write_checks(ctx, coll, authorizer.guard_in_sql(coll.name, ctx.principal), Action.UPDATE),
                )
                _committed(ctx, span, event)
        except NotFound:
            await _forbidden_if_readable(ctx, coll, str(id), Action.UPDATE)
            raise
        if event is not None:
            await ctx.services.publisher.publish(event)
        return record

    async def delete(root: Any, info: Info, id: strawberry.ID) -> Record:  # type: ignore[valid-type]  # noqa: A002
        ctx: Context = info.context
        guard = await _write_guard(ctx, coll, str(id), Action.DELETE)
        await _before_write(ctx, coll, Action.DELETE, {}, str(id))
        try:
            with ctx.services.tracing.commit(coll.name, "delete") as span:
                record, events = await ctx.services.store.delete(coll, str(id), guard=guard, actor=ctx.principal.sub)
                _committed(ctx, span, events[-1])
        except NotFound:
            await _forbidden_if_readable(ctx, coll, str(id), Action.DELETE)
            raise
        # The record's, then one per record its references' on_delete changed: one commit, one doorbell,
        # so subscribers get them in one dispatch pass and a live result never shows half a cascade.
        await ctx.services.publisher.publish_batch(events)
        return record

    _rename(create, f"create_{coll.table_name}")
    _rename(update, f"update_{coll.table_name}")
    _rename(delete, f"delete_{coll.table_name}")
    fields = [
        strawberry.mutation(create, name=f"create{coll.name}", description=f"Create a {coll.name}.", metadata=_DIRECT),
        strawberry.mutation(
            update,
            name=f"update{coll.name}",
            description=f"Change a {coll.name}; with expectedVersion, fails with CONFLICT if it moved on.",
            metadata=_DIRECT,
        ),
        strawberry.mutation(
            delete,
            name=f"delete{coll.name}",
            metadata=_DIRECT,
            description=f"Delete a {coll.name}; returns its last state."
            + (
                f" It stays restorable (restore{coll.name}) until the retention window ends."
                if coll.soft_delete
                else ""
            ),
        ),
    ]
    if coll.soft_delete:
        fields.append(_restore_mutation(t))
    return fields


# -- soft delete: restore<Name> ---------------------------------------------------


async def _not_found_unless_deleted(ctx: Context, coll: Collection, record_id: str) -> None:
    """FORBIDDEN is only for a caller who could read the deleted record; anyone else learns nothing."""
    read = ctx.services.authorizer.guard(coll.name, ctx.principal, Action.READ)
    if await ctx.services.store.get_deleted(coll, record_id, read) is None:
        raise NotFound(f"No deleted {coll.name} with id {record_id!r}", id=record_id)


def _restore_mutation(t: CollectionTypes) -> Any:
    coll = t.collection
    Record = t.record  # noqa: N806

    async def restore(root: Any, info: Info, id: strawberry.ID) -> Record:  # type: ignore[valid-type]  # noqa: A002
        ctx: Context = info.context
        try:
            guard = ctx.services.authorizer.guard(coll.name, ctx.principal, Action.RESTORE)
        except Forbidden:
            await _not_found_unless_deleted(ctx, coll, str(id))
            raise
        await _before_write(ctx, coll, Action.RESTORE, {}, str(id))
        try:
            with ctx.services.tracing.commit(coll.name, "restore") as span:
                record, event = await ctx.services.store.restore(coll, str(id), guard=guard, actor=ctx.principal.sub)
                _committed(ctx, span, event)
        except NotFound:
            await _not_found_unless_deleted(ctx, coll, str(id))
            raise Forbidden(f"{coll.name}: not allowed to restore this record") from None
        await ctx.services.publisher.publish(event)
        return record

    _rename(restore, f"restore_{coll.table_name}")
    return strawberry.mutation(
        restore,
        name=f"restore{coll.name}",
        metadata=_DIRECT,
        description=f"Bring back a deleted {coll.name} as it was; NOT_FOUND unless it is deleted and not yet purged.",
    )


def build_subscription_fields(t: CollectionTypes, operation_enum: Any) -> list[Any]:
    """Subscription fields for the schema; the realtime engine serves them.

    Strawberry never runs these generators: subscriptions are registered with
    the dispatcher by our transports, which execute the selection set per event.
    """
    coll = t.collection
    Event, Where, FieldEnum = t.event, t.where, t.field_enum  # noqa: N806

    async def events(
        info: Info,
        where: Where | None = None,  # type: ignore[valid-type]
        operations: list[operation_enum] | None = None,
        id: strawberry.ID | None = None,  # noqa: A002
        after: str | None = None,
        changed_fields: list[FieldEnum] | None = None,  # type: ignore[valid-type]
    ) -> Any:
        raise transport_only()
        yield  # pragma: no cover

    _rename(events, f"{coll.table_name}_events")
    events.__annotations__["return"] = __import__("collections.abc").abc.AsyncGenerator[Event, None]
    return [
        strawberry.subscription(
            events,
            name=coll.events_field,
            description=(
                f"Every change to {coll.plural} that where, operations and id select. "
                "Give after (a cursor, epoch:seq, or a plain seq) to replay what you missed first. "
                "changedFields keeps only the updates that change one of those fields "
                "(a record entering or leaving the view always goes out)."
            ),
        )
    ]


__all__ = ["build_mutation_fields", "build_query_fields", "build_subscription_fields", "camel_case", "count_field"]
