"""Event subscriptions that follow relations: what a group reads of related rows per event.

Two needs, each met with one batch per relation and level, per event and group:

- its filter or its read rule follows relations (``taskEvents(where: {project: {archived: {eq:
  false}}})``, ``Message.read = {"room": {"members": ...}}``): the event's record, before and
  after the change, is ``expand``ed with the related rows the predicate reads;
- its selection nests related records (``record { title project { name } }``): they are read
  under the subscriber's rules at every level and handed to the relation resolvers, which
  answer from them (``"$" + response key``) without a load of their own.

Related rows are read when the event is delivered, in one snapshot per event and group opened
only if a read is needed, not as of the event's commit; the event's own record is as of its
commit, as always.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from graphql import DocumentNode, FieldNode, FragmentDefinitionNode, GraphQLObjectType, GraphQLSchema, get_named_type

from tidings.events import ChangeEvent
from tidings.filters import Filter, GuardFor, relations_in
from tidings.model.collection import Collection
from tidings.resolvers.prefetch import Nested, attach, fields_of, plan
from tidings.store import Reader, Store
from tidings.store.relations import expand
from tidings.types import Record

__all__ = ["RelatedRows", "nested_plan"]


def nested_plan(
    schema: GraphQLSchema,
    document: DocumentNode,
    root: FieldNode,
    variables: Any,  # graphql-core's coerced variable values
    collection: Collection,
    collections: Mapping[str, Collection],
    guard_for: GuardFor,
    max_limit: int,
) -> tuple[Nested, ...]:
    """The relation fields under the root field's ``record`` (an event subscription's selection)."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    record = fields_of(root.selection_set, fragments, "record")
    subscription = schema.subscription_type
    event_type = get_named_type(subscription.fields[root.name.value].type) if subscription is not None else None
    if not record or not isinstance(event_type, GraphQLObjectType):
        return ()
    record_type = get_named_type(event_type.fields["record"].type)
    assert isinstance(record_type, GraphQLObjectType)
    return plan(record, record_type, fragments, variables, collection, collections, guard_for, max_limit)


class Snapshot:
    """One event's read snapshot for a group, opened on first use (an event the group's filter
    decides without related rows, and renders without nested ones, opens none)."""

    def __init__(self, store: Store, stack: contextlib.AsyncExitStack) -> None:
        self._store = store
        self._stack = stack
        self._reader: Reader | None = None

    async def reader(self) -> Reader:
        if self._reader is None:
            self._reader = await self._stack.enter_async_context(self._store.reader())
        return self._reader


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

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Snapshot]:
        """The read snapshot of one event (views and render share it)."""
        async with contextlib.AsyncExitStack() as stack:
            yield Snapshot(self.store, stack)

    async def views(self, event: ChangeEvent, snapshot: Snapshot) -> tuple[Record | None, Record | None]:
        """The record before and after the change, with the related rows the filter reads."""
        before, after = event.before(), event.after()
        if self.view is None:
            return before, after
        records = [r for r in (before, after) if r is not None]
        expanded = await expand(await snapshot.reader(), self.collection, records, self.view)
        it = iter(expanded)
        return (next(it) if before is not None else None), (next(it) if after is not None else None)

    async def render(self, record: Mapping[str, Any], snapshot: Snapshot) -> Record:
        """``record`` with its nested related records, read under the subscriber's rules."""
        out = dict(record)
        if self.nested:
            await attach(await snapshot.reader(), [out], self.nested)
        return out
