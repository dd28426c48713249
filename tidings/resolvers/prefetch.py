"""Looking ahead: the relation fields a selection nests, read for a whole list of records at once.

A list resolver (``tasks``, ``task``, an event's ``record``) reads its records, then the related
records its selection nests, one SELECT per relation and level, and leaves them on each record
at ``"$" + response key``; the relation resolvers (tidings.resolvers.relations) answer from there
synchronously. Executing 50 tasks with their projects then costs no coroutine, future or
DataLoader round per row; the loaders remain for what a plan does not cover.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLObjectType,
    InlineFragmentNode,
    SelectionSetNode,
    get_named_type,
)
from graphql.execution import get_argument_values
from graphql.execution.values import VariableValues

from tidings.filters import MATCH_NONE, And, Filter, GuardFor, parse_filter
from tidings.model.collection import Collection
from tidings.model.names import camel_case
from tidings.model.relations import BackReference, Reference
from tidings.resolvers.convert import check_page, order_keys
from tidings.store import Reader
from tidings.store.relations import Overlay, by_ids, children
from tidings.types import Record

__all__ = ["NESTED_ROWS", "Nested", "attach", "fields_of", "plan"]

NESTED_ROWS = 10
"""A nested list reads at most this many times ``--max-limit`` rows for all its parents together."""


@dataclass(frozen=True, slots=True)
class Nested:
    """One relation field a selection nests: where its rows go, which they are, and what they nest."""

    key: str  # the response key: the resolver finds its rows at "$" + key
    target: Collection
    reference: str | None  # a reference's column (to one), or None (to many)
    via: str | None  # a back reference's column on the target
    where: Filter
    order: tuple[tuple[str, bool], ...] = ()
    limit: int | None = None
    offset: int = 0
    nested: tuple[Nested, ...] = field(default=())
    budget: int | None = None  # the most rows a to-many read may return for all its parents


def fields_of(
    selection_set: SelectionSetNode | None, fragments: Mapping[str, FragmentDefinitionNode], name: str | None = None
) -> list[FieldNode]:
    """The fields of a selection set (through fragments), or those named ``name``."""
    out: list[FieldNode] = []
    if selection_set is None:
        return out
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if name is None or selection.name.value == name:
                out.append(selection)
        elif isinstance(selection, InlineFragmentNode):
            out.extend(fields_of(selection.selection_set, fragments, name))
        elif isinstance(selection, FragmentSpreadNode):
            fragment = fragments.get(selection.name.value)
            if fragment is not None:
                out.extend(fields_of(fragment.selection_set, fragments, name))
    return out


def plan(
    nodes: Sequence[FieldNode],
    record_type: GraphQLObjectType,
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Any,  # graphql-core's coerced variable values
    collection: Collection,
    collections: Mapping[str, Collection],
    guard_for: GuardFor,
    max_limit: int,
) -> tuple[Nested, ...]:
    """The relation fields under ``nodes`` (fields whose type is ``collection``'s record type).

    ``variables``: the executor's ``VariableValues``, or a resolver's ``info.variable_values`` (the
    coerced values alone, which graphql-core 3.3's ``get_argument_values`` takes wrapped)."""
    if isinstance(variables, dict):
        variables = VariableValues({}, variables)
    both: tuple[Reference | BackReference, ...] = (*collection.references, *collection.back_references)
    relations = {camel_case(r.name): r for r in both}
    if not relations:
        return ()
    plans: list[Nested] = []
    for parent in nodes:
        for node in fields_of(parent.selection_set, fragments):
            relation = relations.get(node.name.value)
            if relation is None:
                continue
            target = collections[relation.target]
            field_def = record_type.fields[node.name.value]
            target_type = get_named_type(field_def.type)
            assert isinstance(target_type, GraphQLObjectType)
            nested = plan([node], target_type, fragments, variables, target, collections, guard_for, max_limit)
            key = node.alias.value if node.alias else node.name.value
            if isinstance(relation, Reference):
                plans.append(Nested(key, target, relation.column, None, guard_for(target.name), nested=nested))
                continue
            args = get_argument_values(field_def, node, variables)
            limit, offset = args.get("limit"), args.get("offset") or 0
            check_page(limit, offset, max_limit)
            via = next(r for r in target.references if r.name == relation.via)
            where = parse_filter(args.get("where"), target.filter_fields, guard_for=guard_for)
            plans.append(
                Nested(
                    key,
                    target,
                    None,
                    via.column,
                    And((guard_for(target.name), where)),
                    tuple(order_keys(args.get("orderBy"), target)),
                    limit if limit is not None else max_limit,
                    offset,
                    nested,
                    NESTED_ROWS * max_limit,
                )
            )
    return tuple(plans)


async def attach(
    reader: Reader, records: Sequence[dict[str, Any]], plans: Sequence[Nested], overlay: Overlay | None = None
) -> None:
    """Read what ``plans`` nest for all ``records`` (one SELECT per plan and level) and leave it
    on each record at ``"$" + key``: a record or None, or a list. ``overlay``: rows read as given
    (tidings.store.relations), e.g. as they were at an event's commit."""
    for p in plans:
        if p.reference is not None:
            column = p.reference
            found: dict[str, Record] = {}
            if p.where != MATCH_NONE:
                found = await by_ids(reader, p.target, [r[column] for r in records if r.get(column)], p.where, overlay)
            if p.nested and found:
                await attach(reader, list(found.values()), p.nested, overlay)
            for r in records:
                target_id = r.get(column)
                r["$" + p.key] = found.get(target_id) if target_id is not None else None
        else:
            assert p.via is not None
            rows: dict[str, list[Record]] = {}
            if p.where != MATCH_NONE and records:
                parents = [str(r["id"]) for r in records]
                rows = await children(
                    reader,
                    p.target,
                    p.via,
                    parents,
                    p.where,
                    p.order,
                    p.limit,
                    p.offset,
                    budget=p.budget,
                    overlay=overlay,
                )
            if p.nested:
                await attach(reader, [x for v in rows.values() for x in v], p.nested, overlay)
            for r in records:
                r["$" + p.key] = rows.get(r["id"], [])
