"""Relation fields: ``Task.project`` and ``Project.tasks(where, orderBy, limit, offset)``, loaded in
batches (one SELECT per relation, level and arguments in a request: no N+1), under the caller's
read rules at every level: a related record the caller may not read is null (to one) or absent
(to many), never an error that would tell it exists.

No ``from __future__ import annotations``: Strawberry reads the resolvers' annotations as objects.

A record that already carries its related rows at ``"$" + response key`` (an event: its related
rows are read once per event and group, tidings.realtime.related) answers from them, without a load.
"""

from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import orjson
import strawberry
from strawberry.dataloader import DataLoader
from strawberry.types import Info

from tidings.auth.rules import Action
from tidings.filters import MATCH_NONE, And, Filter, GuardFor, parse_filter
from tidings.model.collection import Collection
from tidings.model.names import camel_case
from tidings.model.relations import BackReference, Reference
from tidings.resolvers.context import DIRECT, Context
from tidings.resolvers.convert import check_page, order_keys
from tidings.resolvers.prefetch import NESTED_ROWS
from tidings.schema.types import CollectionTypes
from tidings.store.referential import WriteChecks
from tidings.store.relations import by_ids, children

__all__ = ["read_guard_for", "relation_field", "write_checks"]


def read_guard_for(ctx: Context) -> GuardFor:
    """Collection name -> what the caller may read of it (nothing, rather than an error)."""
    guards: GuardFor | None = ctx.loaders.get("read_guards")
    if guards is None:
        guards = ctx.loaders["read_guards"] = ctx.services.authorizer.read_guards(ctx.principal)
    return guards


def write_checks(ctx: Context, coll: Collection, guard: Filter | None, action: Action) -> WriteChecks:
    """What a create or update of ``coll`` checks in its transaction: each reference it sets
    names a record the caller may read; ``guard`` (a rule through relations), if any, holds."""
    if not coll.references and guard is None:
        return WriteChecks(action=action.value)
    guard_for = read_guard_for(ctx)
    refs = {r.column: guard_for(r.target) for r in coll.references}
    return WriteChecks(references=refs, guard=guard, action=action.value)


def _loader(ctx: Context, key: Hashable, load: Callable[[list[str]], Awaitable[list[Any]]]) -> DataLoader[str, Any]:
    loaders: dict[Hashable, DataLoader[str, Any]] = ctx.loaders
    found = loaders.get(key)
    if found is None:
        found = loaders[key] = DataLoader(load_fn=load)
    return found


def relation_field(coll: Collection, relation: Reference | BackReference, target: CollectionTypes) -> Any:
    """The Strawberry field of one relation of ``coll`` (its target's types given)."""
    if isinstance(relation, Reference):
        return _reference_field(coll, relation, target)
    return _back_reference_field(coll, relation, target)


def _reference_field(coll: Collection, ref: Reference, target: CollectionTypes) -> Any:
    target_coll = target.collection
    column = ref.column
    Target = target.record  # noqa: N806

    def resolve(root: Any, info: Info) -> Target | None:  # type: ignore[valid-type]
        if type(root) is dict and (key := f"${info.path.key}") in root:
            return root[key]  # type: ignore[no-any-return]
        target_id = root.get(column) if type(root) is dict else getattr(root, column, None)
        if target_id is None:
            return None
        ctx: Context = info.context

        async def load(ids: list[str]) -> list[Any]:
            guard = read_guard_for(ctx)(target_coll.name)
            found = await by_ids(await ctx.reader(), target_coll, ids, guard) if guard != MATCH_NONE else {}
            return [found.get(i) for i in ids]

        return _loader(ctx, ("one", target_coll.name), load).load(str(target_id))

    resolve.__name__ = resolve.__qualname__ = f"{coll.table_name}_{ref.name}"
    resolve.prefetched = True  # type: ignore[attr-defined]  # tidings.schema.executor completes "$" + key itself
    return strawberry.field(
        resolve,
        name=camel_case(ref.name),
        description=f"The {target_coll.name} this {coll.name} references ({camel_case(ref.column)}); "
        "null when unset or not yours to read.",
        metadata={DIRECT: True},
    )


def _back_reference_field(coll: Collection, back: BackReference, target: CollectionTypes) -> Any:
    target_coll = target.collection
    via = next(r for r in target_coll.references if r.name == back.via)
    Target, Where, OrderBy = target.record, target.where, target.order_by  # noqa: N806

    def resolve(
        root: Any,
        info: Info,
        where: Where | None = None,  # type: ignore[valid-type]
        orderBy: list[OrderBy] | None = None,  # type: ignore[valid-type]  # noqa: N803
        limit: int | None = None,
        offset: int | None = 0,
    ) -> list[Target]:  # type: ignore[valid-type]
        if type(root) is dict and (key := f"${info.path.key}") in root:
            return root[key]  # type: ignore[no-any-return]
        ctx: Context = info.context
        max_limit = ctx.services.max_limit
        check_page(limit, offset, max_limit)
        arguments = orjson.dumps([where, orderBy, limit, offset], default=_plain).decode()

        async def load(parent_ids: list[str]) -> list[Any]:
            guard_for = read_guard_for(ctx)
            guard = guard_for(target_coll.name)
            if guard == MATCH_NONE:
                return [[] for _ in parent_ids]
            flt = parse_filter(where, target_coll.filter_fields, guard_for=guard_for)
            order = order_keys(orderBy, target_coll)
            rows = await children(
                await ctx.reader(),
                target_coll,
                via.column,
                parent_ids,
                And((guard, flt)),
                order,
                limit if limit is not None else max_limit,
                offset or 0,
                budget=NESTED_ROWS * max_limit,
            )
            return [rows.get(p, []) for p in parent_ids]

        parent = root.get("id") if type(root) is dict else root.id
        return _loader(ctx, ("many", coll.name, back.name, arguments), load).load(str(parent))  # type: ignore[return-value]

    resolve.__name__ = resolve.__qualname__ = f"{coll.table_name}_{back.name}"
    resolve.prefetched = True  # type: ignore[attr-defined]  # tidings.schema.executor completes "$" + key itself
    return strawberry.field(
        resolve,
        name=camel_case(back.name),
        description=f"The {target_coll.plural} whose {camel_case(via.name)} is this {coll.name} (that you may read), "
        "filtered, sorted and paginated.",
        metadata={DIRECT: True},
    )


def _plain(value: Any) -> Any:
    """Arguments as JSON for a loader's key: enums by value, the rest as text."""
    return getattr(value, "value", str(value))
