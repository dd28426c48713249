"""Event subscriptions that follow relations: what a group reads of related rows per event.

Two needs, each met with one batch per relation and level, per event and group:

- its filter or its read rule follows relations (``taskEvents(where: {project: {archived: {eq:
  false}}})``, ``Message.read = {"room": {"members": ...}}``): the event's record, before and
  after the change, is ``expand``ed with the related rows the predicate reads;
- its selection nests related records (``record { title project { name } }``): they are read
  under the subscriber's rules at every level and handed to the relation resolvers, which
  answer from them (``"$" + response key``) without a load of their own.

- a change to a related row moves records into or out of its view (a member removed from the
  room: the room's messages leave the view of that member's subscriptions): ``consequences``
  finds them (tidings.realtime.related_changes) and decides each with the changed row as it
  was, then as it is.

Related rows are read as of the event's commit: in one snapshot per dispatch pass (or replay
page), opened only if a read is needed, with the rows later commits changed read as they were
(``Snapshot.as_of``, from the log), so a resume renders and decides what live delivery did.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from graphql import DocumentNode, FieldNode, FragmentDefinitionNode, GraphQLObjectType, GraphQLSchema, get_named_type

from tidings.events import ChangeEvent
from tidings.filters import Filter, GuardFor, relations_in
from tidings.model.collection import Collection
from tidings.realtime.related_changes import Path, Paths, affected, shape
from tidings.resolvers.prefetch import NESTED_ROWS, Nested, attach, fields_of, plan
from tidings.schema.inputs import Match
from tidings.store import Reader, Store
from tidings.store.relations import Overlay, expand
from tidings.types import Record

__all__ = ["RelatedRows", "Snapshot", "nested_plan", "snapshot"]


@contextlib.asynccontextmanager
async def snapshot(store: Store) -> AsyncIterator[Snapshot]:
    """A read snapshot for the events of one dispatch pass or replay page, every group's."""
    async with contextlib.AsyncExitStack() as stack:
        yield Snapshot(store, stack)


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


REWIND_EVENTS = 2_000  # the most later events a snapshot undoes to read as of an event's commit


class Snapshot:
    """One read snapshot for the events of a dispatch pass or a replay page, opened on first use
    (an event every group decides without related rows, and renders without nested ones, opens
    none), read as of each event's commit: ``as_of``."""

    def __init__(self, store: Store, stack: contextlib.AsyncExitStack) -> None:
        self._store = store
        self._stack = stack
        self._reader: Reader | None = None
        self._later: list[ChangeEvent] = []  # the log after ``_later_after``, up to the snapshot
        self._later_after: int | None = None
        self._overlay: tuple[int, Overlay] | None = None  # the last one made
        self._affected: dict[tuple[int, str, tuple[tuple[str, str, str, str], ...]], list[Record]] = {}

    async def reader(self) -> Reader:
        if self._reader is None:
            self._reader = await self._stack.enter_async_context(self._store.reader())
        return self._reader

    async def affected(
        self, root: Collection, path: Path, event: ChangeEvent, rows: Sequence[Record], as_of: Overlay
    ) -> list[Record]:
        """``related_changes.affected``, once per event, root and path shape for every group (the
        groups of one rule with a claim in it differ only in the claim's value)."""
        key = (event.seq, root.name, shape(path))
        found = self._affected.get(key)
        if found is None:
            reader = await self.reader()
            found = await affected(reader, self._store.collections, root, path, rows, as_of)
            if len(self._affected) >= 64:
                self._affected.clear()
            self._affected[key] = found
        return found

    async def as_of(self, seq: int) -> Overlay:
        """The rows that commits after ``seq`` changed, as they were at ``seq``: each row as before
        the first later event on it (None: it did not exist, or was hidden). Read with it, the
        snapshot is the database right after ``seq`` committed. Empty when nothing committed since
        (the usual case of live delivery), and when more than ``REWIND_EVENTS`` did (a resume from
        far back: then related rows are as of the snapshot)."""
        if self._overlay is not None and self._overlay[0] == seq:
            return self._overlay[1]  # views, consequences and render of one event ask alike
        reader = await self.reader()
        head = await reader.seq()
        if head <= seq or head - seq > REWIND_EVENTS:
            return {}
        if self._later_after is None or seq < self._later_after:
            events = self._store.tables.events
            query = sa.select(events).where(events.c.seq > seq, events.c.seq <= head).order_by(events.c.seq)
            self._later = [self._store.decode_event(row) for row in await reader.rows(query)]
            self._later_after = seq
        overlay: dict[str, dict[str, Record | None]] = {}
        for event in self._later:
            if event.seq > seq:
                rows = overlay.setdefault(event.collection, {})
                if event.record_id not in rows:
                    rows[event.record_id] = event.before()
        self._overlay = (seq, overlay)
        return overlay


def _with(overlay: Overlay, collection: str, record_id: str, image: Record | None) -> Overlay:
    """``overlay`` with one more row given."""
    return {**overlay, collection: {**overlay.get(collection, {}), record_id: image}}


class RelatedRows:
    """What one group reads of related rows per event: for its predicate (``views``) and for its
    selection (``render``)."""

    def __init__(self, store: Store, collection: Collection, view: Filter, nested: Sequence[Nested]) -> None:
        self.store = store
        self.collection = collection
        self.view = view if relations_in(view) else None
        self.nested = tuple(nested)
        self.paths = Paths(self.view) if self.view is not None else None

    @property
    def follows(self) -> frozenset[str]:
        """The collections whose changes can move records into or out of the view."""
        return self.paths.collections if self.paths is not None else frozenset()

    @property
    def scope(self) -> str:
        """What, beside the group's own guard, decides what members see: its relation filters and
        nested relations, each target's read guard substituted: two callers share a group only if equal."""
        return repr((self.view, self.nested))

    @property
    def needed(self) -> bool:
        return self.view is not None or bool(self.nested)

    async def views(self, event: ChangeEvent, snapshot: Snapshot) -> tuple[Record | None, Record | None]:
        """The record before and after the change, with the related rows the filter reads."""
        before, after = event.before(), event.after()
        if self.view is None:
            return before, after
        records = [r for r in (before, after) if r is not None]
        as_of = await snapshot.as_of(event.seq)
        expanded = await expand(await snapshot.reader(), self.collection, records, self.view, as_of)
        it = iter(expanded)
        return (next(it) if before is not None else None), (next(it) if after is not None else None)

    async def render(self, record: Mapping[str, Any], snapshot: Snapshot, seq: int) -> Record:
        """``record`` with its nested related records as of ``seq``, read under the subscriber's rules."""
        return (await self.render_all([record], snapshot, seq))[0]

    async def render_all(self, records: Sequence[Mapping[str, Any]], snapshot: Snapshot, seq: int) -> list[Record]:
        """``render`` for many records (those one change moved): one read per relation and level for
        each chunk of them. A chunk holds at most ``NESTED_ROWS`` records when a list is nested, so its
        rows for all of them (each at most ``--max-limit``) stay within the list's budget."""
        out = [dict(r) for r in records]
        if self.nested and out:
            reader, as_of = await snapshot.reader(), await snapshot.as_of(seq)
            step = NESTED_ROWS if any(p.via is not None for p in self.nested) else len(out)
            for start in range(0, len(out), step):
                await attach(reader, out[start : start + step], self.nested, as_of)
        return out

    async def consequences(
        self, event: ChangeEvent, snapshot: Snapshot, in_view: Callable[[Mapping[str, Any]], bool]
    ) -> list[tuple[Record, Match]]:
        """The records ``event`` (a change to a row the view reads through relations) moves into
        (ENTERED) or out of (LEFT) the view, in id order: each decided on the same snapshot with
        the changed row as it was before the event, then as it is after it."""
        if self.paths is None or self.view is None:
            return []
        before, after = event.before(), event.after()
        paths = self.paths.moved(event.collection, before, after)
        if not paths:
            return []  # e.g. another user's membership: it decides nothing this view reads
        rows = [r for r in (before, after) if r is not None]
        reader = await snapshot.reader()
        as_of = await snapshot.as_of(event.seq)
        found: dict[str, Record] = {}
        for path in paths:
            for record in await snapshot.affected(self.collection, path, event, rows, as_of):
                found[record["id"]] = record
        if event.collection == self.collection.name:
            found.pop(event.record_id, None)  # the changed record itself has its own event
        if not found:
            return []
        records = [found[k] for k in sorted(found)]
        was = await expand(
            reader, self.collection, records, self.view, _with(as_of, event.collection, event.record_id, before)
        )
        now = await expand(
            reader, self.collection, records, self.view, _with(as_of, event.collection, event.record_id, after)
        )
        moved: list[tuple[Record, Match]] = []
        for record, then, later in zip(records, was, now, strict=True):
            if in_view(then) != (entered := in_view(later)):
                moved.append((record, Match.ENTERED if entered else Match.LEFT))
        return moved
