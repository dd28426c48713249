"""Aggregates: ``tasksAggregate(where, groupBy: [status]) { groups { key { status } count
sum { priority } avg { priority } min { dueAt } max { dueAt } } }``, computed in SQL, under the
read rules and tenant scope of lists; live with ``query @live`` (tidings.realtime.aggregate_window).

No ``from __future__ import annotations``: the resolvers' annotations are the generated types.

Without ``groupBy`` there is exactly one group (key all null), also when no row matches (count 0,
sums null). With it, one group per distinct key among the matching rows, in key order (each value
ascending, NULLs last). ``sum`` and ``avg`` are Floats (an Int sum outgrows GraphQL's 32 bits);
``sum`` is null when the group has no non-null value. Only the aggregates a document selects are
computed.
"""

import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import strawberry
from graphql import DocumentNode, FieldNode, FragmentDefinitionNode, FragmentSpreadNode, InlineFragmentNode
from strawberry.types import Info

from tidings.auth.rules import Action
from tidings.filters import And, FieldKind, parse_filter
from tidings.model.collection import Collection, Field
from tidings.resolvers.context import DIRECT, Context
from tidings.resolvers.relations import read_guard_for
from tidings.resolvers.truncation import response_path
from tidings.schema.inputs import SCALARS
from tidings.schema.types import CollectionTypes
from tidings.store.aggregate_query import AggregateRow, AggregateSpec

__all__ = ["aggregate_field", "aggregate_spec", "build_aggregate_field", "group_value", "requested"]

NUMERIC = (FieldKind.INT, FieldKind.FLOAT)
ORDERED = (FieldKind.INT, FieldKind.FLOAT, FieldKind.STRING, FieldKind.DATETIME)
AGGREGATES = ("sum", "avg", "min", "max")
Wanted = dict[str, set[str]]  # aggregate -> the GraphQL names of the fields selected under it


def aggregate_field(coll: Collection) -> str:
    """The name of a collection's aggregate query field: ``tasksAggregate``."""
    return f"{coll.plural}Aggregate"


def _groupable(coll: Collection) -> list[Field]:
    return [f for f in coll.fields if f.kind is not FieldKind.JSON]


def _subfields(
    selections: Iterable[Any], fragments: Mapping[str, FragmentDefinitionNode], seen: frozenset[str] = frozenset()
) -> Iterable[FieldNode]:
    for selection in selections:
        if isinstance(selection, FieldNode):
            yield selection
        elif isinstance(selection, InlineFragmentNode):
            yield from _subfields(selection.selection_set.selections, fragments, seen)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            if name in fragments and name not in seen:
                yield from _subfields(fragments[name].selection_set.selections, fragments, seen | {name})


def requested(node: FieldNode, document: DocumentNode | Mapping[str, FragmentDefinitionNode]) -> Wanted:
    """The fields a document selects under ``sum``, ``avg``, ``min`` and ``max`` of ``groups``."""
    if isinstance(document, DocumentNode):
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    else:
        fragments = dict(document)
    wanted: Wanted = {name: set() for name in AGGREGATES}
    if node.selection_set is None:
        return wanted
    for groups in _subfields(node.selection_set.selections, fragments):
        if groups.name.value != "groups" or groups.selection_set is None:
            continue
        for agg in _subfields(groups.selection_set.selections, fragments):
            if agg.name.value in wanted and agg.selection_set is not None:
                for leaf in _subfields(agg.selection_set.selections, fragments):
                    wanted[agg.name.value].add(leaf.name.value)
    return wanted


def aggregate_spec(coll: Collection, group_by: Sequence[Any] | None, wanted: Wanted) -> AggregateSpec:
    columns = coll.columns_by_graphql_name
    keys: list[str] = []
    for item in group_by or []:
        column = str(getattr(item, "value", item))
        if column not in keys:
            keys.append(column)

    def named(aggregate: str) -> tuple[str, ...]:
        return tuple(sorted(columns[name] for name in wanted.get(aggregate, ()) if name in columns))

    return AggregateSpec(tuple(keys), tuple(sorted({*named("sum"), *named("avg")})), named("min"), named("max"))


def group_value(spec: AggregateSpec, group: AggregateRow) -> dict[str, Any]:
    """One group as the GraphQL types read it (python names: columns)."""
    sums: dict[str, Any] = {}
    avgs: dict[str, Any] = {}
    for column, (total, n) in group.sums.items():
        sums[column] = float(total) if n else None
        avgs[column] = total / n if n else None
    return {
        "key": dict(zip(spec.group_by, group.key, strict=True)),
        "count": group.count,
        "sum": sums,
        "avg": avgs,
        "min": group.mins,
        "max": group.maxs,
    }


def _type(name: str, annotations: dict[str, Any], description: str) -> Any:
    return strawberry.type(type(name, (), {"__annotations__": annotations}), description=description)


def build_aggregate_field(t: CollectionTypes) -> Any:
    coll = t.collection
    Where = t.where  # noqa: N806

    def scalar(f: Field) -> Any:
        return t.enums[f.enum] if f.kind is FieldKind.ENUM and f.enum is not None else SCALARS[f.kind]

    groupable = _groupable(coll)
    fields_by_name: type[enum.Enum] = enum.Enum(f"{coll.name}GroupField", {f.graphql_name: f.name for f in groupable})  # type: ignore[misc]
    group_enum = strawberry.enum(fields_by_name, description=f"A field of {coll.name} to group an aggregate by.")
    group_ann: dict[str, Any] = {"count": int}
    if groupable:
        group_ann["key"] = _type(
            f"{coll.name}AggregateKey",
            {f.name: scalar(f) | None for f in groupable},
            "The values a group shares (the groupBy fields; the others are null).",
        )
    numeric = [f for f in coll.fields if f.kind in NUMERIC]
    if numeric:
        numbers = _type(
            f"{coll.name}AggregateNumbers",
            {f.name: float | None for f in numeric},
            "Per numeric field, over the group's non-null values (null when there are none).",
        )
        group_ann["sum"] = numbers
        group_ann["avg"] = numbers
    ordered = [f for f in coll.fields if f.kind in ORDERED]
    if ordered:
        extremes = _type(
            f"{coll.name}AggregateExtremes",
            {f.name: scalar(f) | None for f in ordered},
            "Per field, the least or greatest non-null value of the group (text in code point order).",
        )
        group_ann["min"] = extremes
        group_ann["max"] = extremes
    Group = _type(f"{coll.name}AggregateGroup", group_ann, f"One group of {coll.plural} and its figures.")  # noqa: N806
    Aggregate = _type(  # noqa: N806
        f"{coll.name}Aggregate",
        {"groups": list[Group]},  # type: ignore[valid-type]
        f"Figures over {coll.plural}, per group.",
    )

    async def aggregate(
        root: Any,
        info: Info,
        where: Where | None = None,  # type: ignore[valid-type]
        groupBy: list[group_enum] | None = None,  # type: ignore[valid-type]  # noqa: N803
    ) -> Aggregate:  # type: ignore[valid-type]
        ctx: Context = info.context
        guard = ctx.services.authorizer.guard(coll.name, ctx.principal, Action.READ)
        view = And((guard, parse_filter(where, coll.filter_fields, guard_for=read_guard_for(ctx))))
        raw: Any = info  # graphql-core's GraphQLResolveInfo (see tidings.resolvers.crud)
        spec = aggregate_spec(coll, groupBy, requested(raw.field_nodes[0], raw.fragments))
        reader = await ctx.reader()
        groups = await reader.aggregate(coll, view, spec)
        cap = ctx.services.max_limit
        if len(groups) > cap:
            del groups[cap:]
            ctx.truncated.append({"path": response_path(info), "limit": cap})
        return {"groups": [group_value(spec, g) for g in groups]}

    aggregate.__name__ = aggregate.__qualname__ = f"aggregate_{coll.table_name}"
    return strawberry.field(
        aggregate,
        name=aggregate_field(coll),
        description=(
            f"count, sum, avg, min and max over {coll.plural} that match where (that the caller may read), "
            "per group of the groupBy fields' values; live with query @live."
        ),
        metadata={DIRECT: True},
    )
