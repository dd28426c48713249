"""Event subscriptions that follow relations: what a group reads of related rows per event.

Two needs, each met with one batch per relation and level, per event and group:

- its filter or its read rule follows relations (``taskEvents(where: {project: {archived: {eq:
  false}}})``, ``Message.read = {"room": {"members": ...}}``): the event's record, before and
  after the change, is ``expand``ed with the related rows the predicate reads;
- its selection nests related records (``record { title project { name } }``): they are read
  under the subscriber's rules at every level and handed to the relation resolvers, which
  answer from them (``"$" + response key``) without a load of their own.

Related rows are read when the event is delivered, in one snapshot per event and group (the
event's own record is as of its commit, as always).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    SelectionSetNode,
    get_named_type,
)
from graphql.execution import get_argument_values

from tidings.errors import BadUserInput
from tidings.events import ChangeEvent
from tidings.filters import MATCH_ALL, MATCH_NONE, And, Filter, GuardFor, parse_filter, relations_in
from tidings.model.collection import Collection
from tidings.model.names import camel_case
from tidings.model.relations import Reference
from tidings.resolvers.convert import order_keys
from tidings.store import Store
from tidings.store.relations import by_ids, children, expand
from tidings.types import Record

__all__ = ["Nested", "RelatedRows", "nested_plan"]


@dataclass(frozen=True, slots=True)
class Nested:
    """One relation field a selection nests: where its rows go, which they are, and what they nest."""

    key: str  # the response key: the resolver finds its rows at "$" + key
    target: Collection
    reference: str | None  # a reference's column (to one), or None (to many)
    via: str | None  # a back reference's column on the target
    where: Filter = MATCH_ALL
    order: tuple[tuple[str, bool], ...] = ()
    limit: int | None = None
    offset: int = 0
    nested: tuple[Nested, ...] = field(default=())


def nested_plan(
    schema: GraphQLSchema,
    document: DocumentNode,
    root: FieldNode,
    variables: Mapping[str, Any],
    collection: Collection,
    collections: Mapping[str, Collection],
    guard_for: GuardFor,
    max_limit: int,
) -> tuple[Nested, ...]:
    """The relation fields under the root field's ``record`` (an event subscription's selection)."""
    record = _fields(root.selection_set, document, "record")
    event_type = (
        get_named_type(schema.subscription_type.fields[root.name.value].type) if schema.subscription_type else None
    )
    if not record or not isinstance(event_type, GraphQLObjectType):
        return ()
    record_type = get_named_type(event_type.fields["record"].type)
    assert isinstance(record_type, GraphQLObjectType)
    plans: list[Nested] = []
    for node in record:
        plans.extend(
            _plan(
                schema,
                document,
                node.selection_set,
                record_type,
                variables,
                collection,
                collections,
                guard_for,
                max_limit,
            )
        )
    return tuple(plans)


def _fields(selection_set: SelectionSetNode | None, document: DocumentNode, name: str | None = None) -> list[FieldNode]:
    """The fields of a selection set (through fragments), or those named ``name``."""
    out: list[FieldNode] = []
    if selection_set is None:
        return out
    fragments = {d.name.value: d for d in document.definitions if hasattr(d, "type_condition") and hasattr(d, "name")}
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            if name is None or selection.name.value == name:
                out.append(selection)
        elif isinstance(selection, InlineFragmentNode):
            out.extend(_fields(selection.selection_set, document, name))
        elif isinstance(selection, FragmentSpreadNode):
            fragment = fragments.get(selection.name.value)
            if fragment is not None:
                out.extend(_fields(fragment.selection_set, document, name))  # type: ignore[attr-defined]
    return out


def _plan(
    schema: GraphQLSchema,
    document: DocumentNode,
    selection_set: SelectionSetNode | None,
    record_type: GraphQLObjectType,
    variables: Mapping[str, Any],
    collection: Collection,
    collections: Mapping[str, Collection],
    guard_for: GuardFor,
    max_limit: int,
) -> list[Nested]:
    relations = {camel_case(r.name): r for r in (*collection.references, *collection.back_references)}
    plans: list[Nested] = []
    for node in _fields(selection_set, document):
        relation = relations.get(node.name.value)
        if relation is None:
            continue
        target = collections[relation.target]
        target_type = get_named_type(record_type.fields[node.name.value].type)
        assert isinstance(target_type, GraphQLObjectType)
        nested = tuple(
            _plan(
                schema, document, node.selection_set, target_type, variables, target, collections, guard_for, max_limit
            )
        )
        key = node.alias.value if node.alias else node.name.value
        if isinstance(relation, Reference):
            plans.append(Nested(key, target, relation.column, None, guard_for(target.name), nested=nested))
            continue
        args = get_argument_values(record_type.fields[node.name.value], node, variables)
        limit, offset = args.get("limit"), args.get("offset") or 0
        if limit is not None and not 0 <= limit <= max_limit:
            raise BadUserInput(f"limit must be between 0 and {max_limit}, got {limit}", field="limit")
        if offset < 0:
            raise BadUserInput(f"offset must be >= 0, got {offset}", field="offset")
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
            )
        )
    return plans


class RelatedRows:
    """What one group reads of related rows per event: for its predicate (``views``) and for its
    selection (``render``)."""

    def __init__(self, store: Store, collection: Collection, view: Filter, nested: Sequence[Nested]) -> None:
        self.store = store
        self.collection = collection
        self.view = view if relations_in(view) else None
        self.nested = tuple(nested)

    @property
    def scope(self) -> str:
        """What, beside the group's own guard, decides what members see: its relation filters and
        nested relations, each target's read guard substituted: two callers share a group only if equal."""
        return repr((self.view, self.nested))

    @property
    def needed(self) -> bool:
        return self.view is not None or bool(self.nested)

    async def views(self, event: ChangeEvent) -> tuple[Record | None, Record | None]:
        """The record before and after the change, with the related rows the filter reads."""
        before, after = event.before(), event.after()
        if self.view is None:
            return before, after
        records = [r for r in (before, after) if r is not None]
        async with self.store.reader() as reader:
            expanded = await expand(reader, self.collection, records, self.view)
        it = iter(expanded)
        return (next(it) if before is not None else None), (next(it) if after is not None else None)

    async def render(self, record: Mapping[str, Any]) -> Record:
        """``record`` with its nested related records, read under the subscriber's rules."""
        out = dict(record)
        if self.nested:
            async with self.store.reader() as reader:
                await _attach(reader, [out], self.nested)
        return out


async def _attach(reader: Any, records: list[dict[str, Any]], plans: Sequence[Nested]) -> None:
    for plan in plans:
        if plan.reference is not None:
            if plan.where == MATCH_NONE:
                found: dict[str, Record] = {}
            else:
                found = await by_ids(reader, plan.target, [r.get(plan.reference) for r in records], plan.where)
            related = {k: dict(v) for k, v in found.items()}
            if plan.nested and related:
                await _attach(reader, list(related.values()), plan.nested)
            for r in records:
                ref = r.get(plan.reference)
                r["$" + plan.key] = related.get(ref) if ref is not None else None
        else:
            assert plan.via is not None
            rows = await children(
                reader,
                plan.target,
                plan.via,
                [r["id"] for r in records],
                plan.where,
                plan.order,
                plan.limit,
                plan.offset,
            )
            lists = {k: [dict(x) for x in v] for k, v in rows.items()}
            if plan.nested:
                await _attach(reader, [x for v in lists.values() for x in v], plan.nested)
            for r in records:
                r["$" + plan.key] = lists.get(r["id"], [])
