"""Live queries (``query @live``): results kept current from the event stream and
pushed as JSON patches in the ``@n1ru4l/graphql-live-query-patch`` wire format.

Each distinct (document, variables, read guards, account) is one ``LiveGroup``:
it reads its root fields once, then applies every committed event the
dispatcher hands it, in seq order, to its kept values (``window.py``),
renders the document against them, and sends one patch to all its members.
A database read happens only when a window must be refilled or re-read; while
it runs, events wait in the group's bounded backlog.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from graphql import (
    GraphQLError,
    GraphQLObjectType,
    OperationDefinitionNode,
)
from graphql.execution import Executor
from graphql.pyutils import Path

from tidings.auth.principal import ANY_ACCOUNT
from tidings.errors import ErrorCode
from tidings.events import ChangeEvent
from tidings.filters import Filter, compile_predicate, equality_terms, relations_in
from tidings.limits import TokenBucket
from tidings.model.collection import Collection
from tidings.realtime.group import Sink
from tidings.realtime.index import UNINDEXED_COLUMNS, Bucket, IndexKey
from tidings.realtime.live_prepare import SharedPrepare
from tidings.realtime.patch import diff
from tidings.realtime.relevance import Relevance
from tidings.realtime.window import Count, Needs, Single, Window
from tidings.resolvers.prefetch import Nested, attach
from tidings.schema.extensions import classify_all
from tidings.store import Reader, Store
from tidings.store.relations import expand
from tidings.types import JSONObject

logger = logging.getLogger("tidings.realtime")

__all__ = ["LiveExecutor", "LiveGroup", "LiveHub", "LiveMember", "LiveSource", "is_live"]

BACKLOG = 10_000
"""Events a group holds while it reads; beyond, it drops them and re-reads everything."""


def is_live(operation: OperationDefinitionNode) -> bool:
    return any(d.name.value == "live" for d in operation.directives or ())


class LiveExecutor(Executor[Any]):
    """Executes the document with root fields taken from the root value (the kept
    values by response key) instead of their resolvers, which would read the database."""

    def execute_field(
        self,
        parent_type: GraphQLObjectType,
        source: Any,
        field_details_list: Any,
        path: Path,
        position_context: Any,
    ) -> Any:
        if path.prev is not None or not isinstance(source, dict) or path.key not in source:
            return super().execute_field(parent_type, source, field_details_list, path, position_context)
        node = field_details_list[0].node
        field_def = self.schema.get_field(parent_type, node.name.value)
        assert field_def is not None
        info = self.build_resolve_info(field_def, [d.node for d in field_details_list], parent_type, path)
        try:
            return self.complete_value(
                field_def.type, field_details_list, info, path, source[path.key], position_context
            )
        except Exception as raw_error:
            self.handle_field_error(raw_error, field_def.type, field_details_list, path)
            return None


class Kept(Protocol):
    """A kept value that reads itself (a live connection, an aggregate): the protocol of
    ``window.py``'s values, with the reads ``LiveSource`` makes for those."""

    stale: bool

    def needs(self) -> int: ...
    def apply(self, event: ChangeEvent) -> bool: ...
    def value(self) -> Any: ...
    async def reload(self, reader: Reader) -> None: ...
    async def fill(self, reader: Reader) -> None: ...


class LiveSource:
    """One root field of a live query: what it keeps and how to read it."""

    def __init__(
        self,
        key: str,
        collection: Collection,
        kept: Window | Count | Single | Kept,
        where: Filter,
        order: list[tuple[str, bool]] | None = None,
        *,
        nested: Sequence[Nested] = (),
        depends: frozenset[str] = frozenset(),
        loops: bool = False,
    ) -> None:
        self.key = key  # response key (alias or field name)
        self.collection = collection
        self.kept = kept
        self.where = where  # read guard and filter, as the plain query would read
        self.order = order or []
        # Relations: the related records its selection nests (read with its rows), and the other
        # collections its filter, rules or selection read. A change to one of those that may change
        # what it shows (``relevance``) reads the source again: one bounded query per group, never
        # per subscriber.
        self.nested = tuple(nested)
        self.depends = depends
        self.refetch = bool(self.nested or self.depends)
        # A change to its own collection is applied as to any source, once the changed record
        # is read with its related rows (``prepare``: its filter's, and what its selection nests),
        # unless those relations lead back to its own collection (``loops``: a task's parent is a
        # task), where a change may move other rows too: then it is read again.
        self.incremental = self.refetch and not loops and isinstance(kept, Window | Count | Single)
        self.pending: list[ChangeEvent] = []  # own changes waiting for ``prepare``
        # seq -> the hub's read of that event for every source waiting for it (live_prepare.py)
        self.batches: dict[int, asyncio.Future[dict[int, ChangeEvent]]] = {}
        self._in_view = compile_predicate(where)
        self.relevance = Relevance(where, self.nested, collection.name) if depends else None
        # Its filter follows no relation and its rows nest records: an own change may take them from
        # the kept rows instead of a read (``carried``).
        self.carries = self.incremental and bool(self.nested) and not relations_in(where)
        self.query: sa.Select[Any] | None = None  # a window's SELECT, built on its first read

    async def prepare(self, reader: Reader, event: ChangeEvent) -> ChangeEvent:
        """``event`` with its record, before and after, carrying the related rows the filter reads
        and, after, what the selection nests: what ``kept.apply`` decides and keeps. (LiveHub reads
        the related rows of one event once for all the sources waiting for it: live_prepare.py.)"""
        records = [r for r in (event.before(), event.after()) if r is not None]
        if relations_in(self.where):
            records = await expand(reader, self.collection, records, self.where)
        return await self.finish(reader, event, records)

    async def finish(self, reader: Reader, event: ChangeEvent, records: Sequence[Mapping[str, Any]]) -> ChangeEvent:
        """``prepare`` from the event's records (before, after: those that exist) expanded for its
        filter, or for one that reads at least what its filter does."""
        it = iter([dict(r) for r in records])
        was = next(it) if event.before() is not None else None
        now = next(it) if event.after() is not None else None
        if self.nested and now is not None and self._in_view(now):
            await attach(reader, [now], self.nested)
        if now is None:
            return dataclasses.replace(event, record=was or event.record, previous={})
        if was is None:
            return dataclasses.replace(event, record=now)
        related = {k: v for k, v in was.items() if k.startswith("@")}
        return dataclasses.replace(event, record=now, previous={**event.previous, **related})

    def carried(self, event: ChangeEvent) -> ChangeEvent | None:
        """``event`` as ``prepare`` makes it, without a read, when what its record nests is at hand:
        each reference, a record a kept row (its own previous version, or another) shows already;
        its children, as its previous version shows them (they point at its id, which did not
        change). Those are current: a change to them makes the source stale (``relevance``).
        None: ``prepare`` must read."""
        kept = self.kept
        if not self.carries or kept.stale or not isinstance(kept, Window | Single):
            return None
        rows = kept.rows if isinstance(kept, Window) else [r for r in (kept.record,) if r is not None]
        before, after = event.before(), event.after()
        if after is None:
            return dataclasses.replace(event, record=before if before is not None else event.record, previous={})
        now = dict(after)
        if self._in_view(now):
            old = next((r for r in rows if r["id"] == event.record_id), None)
            for p in self.nested:
                key = "$" + p.key
                if p.reference is None:
                    if old is None or key not in old:
                        return None
                    now[key] = old[key]
                elif (target := now.get(p.reference)) is None:
                    now[key] = None
                else:
                    donors = [old, *rows] if old is not None else rows
                    donor = next((r for r in donors if r.get(p.reference) == target and key in r), None)
                    if donor is None:
                        return None
                    now[key] = donor[key]
        return dataclasses.replace(event, record=now)

    def touched_by(self, event: ChangeEvent) -> bool:
        """Whether ``event`` may change this source: any of its own collection's; of a collection it
        depends on, those that may change what it shows (a renamed project its rows reference, a
        membership of the member it reads for; see relevance.py)."""
        if event.collection == self.collection.name:
            return True
        if event.collection not in self.depends:
            return False
        return self.relevance is None or self.relevance.may_change(event, self.kept)

    async def reload(self, reader: Reader) -> None:
        kept = self.kept
        if isinstance(kept, Window):
            rows = await reader.page(self.collection, self._query(reader), kept.limit, kept.offset)
            if self.nested and rows:
                await attach(reader, rows, self.nested)
            kept.load(rows)
        elif isinstance(kept, Count):
            kept.load(await reader.count(self.collection, self.where))
        elif isinstance(kept, Single):
            record = await reader.get(self.collection, kept.record_id, self.where)
            if self.nested and record is not None:
                await attach(reader, [record], self.nested)
            kept.load(record)
        else:
            await kept.reload(reader)

    async def fill(self, reader: Reader) -> None:
        kept = self.kept
        if not isinstance(kept, Window):
            assert not isinstance(kept, Count | Single)  # they never need a fill
            await kept.fill(reader)
            return
        offset, limit = kept.fill_request()
        rows = await reader.page(self.collection, self._query(reader), limit, offset)
        if self.nested and rows:
            await attach(reader, rows, self.nested)  # the rows filling in show their nested records too
        kept.fill(rows, limit)

    def _query(self, reader: Reader) -> sa.Select[Any]:
        """The window's SELECT, built once: its filter and order never change, and building a filter's
        SQL (EXISTS and table aliases for each relation it follows) costs more than reading a page."""
        if self.query is None:
            self.query = reader.list_query(self.collection, self.where, self.order)
        return self.query


async def _apply_batches(source: LiveSource) -> None:
    """Apply the source's waiting own changes that the hub read for it, in order, up to the first
    it did not (read in the group's snapshot then, as is the rest)."""
    while source.pending and not source.kept.stale:
        batch = source.batches.pop(source.pending[0].seq, None)
        if batch is None:
            return
        try:
            prepared = (await batch).get(id(source))
        except Exception:  # the group reads it itself, as without the hub's read
            logger.debug("A shared read of a live change failed; the group reads it", exc_info=True)
            return
        if prepared is None or not source.pending or source.kept.stale:
            return
        source.pending.pop(0)
        source.kept.apply(prepared)


class LiveMember:
    """One live operation of one connection; its ``revision`` counts its messages."""

    __slots__ = ("group", "op_id", "rate", "revision", "sink")

    def __init__(self, sink: Sink, op_id: str, group: LiveGroup) -> None:
        self.sink = sink
        self.op_id = op_id
        self.group = group
        self.revision = 0
        # The engine hands every stream an event-rate bucket; a live result has no backlog to
        # resume from, so its patches are not counted (a burst of changes is one patch per change).
        self.rate: TokenBucket | None = None

    def send(self, seq: int, head: str) -> None:
        """``head`` is the shared payload without its closing ``,"revision":n}``."""
        self.revision += 1
        self.sink.push(self.op_id, seq, f'{head},"revision":{self.revision}}}')


class LiveGroup:
    """Members sharing one live document and read scope: one kept result, one patch per change."""

    def __init__(
        self,
        key: Hashable,
        sources: list[LiveSource],
        executor: Executor[Any],
        store: Store,
        position: Any,
    ) -> None:
        self.key = key
        self.sources = sources
        self.executor = executor
        self.store = store
        self._position = position  # () -> the dispatcher's position
        self.members: dict[int, LiveMember] = {}
        self.collections = {s.collection.name for s in sources} | {d for s in sources for d in s.depends}
        self.bucket_keys: list[tuple[tuple[str, Any], IndexKey]] = []
        self.seq = 0  # the event-log position the kept values reflect
        self.rendered: JSONObject | None = None  # the last result sent: {"data": ..., "errors"?: ...}
        self.rendered_seq = 0
        self.backlog: collections.deque[ChangeEvent] = collections.deque()
        self.overflowed = False
        self.busy = True  # reading: events wait in the backlog
        self.unsent = False  # events applied that no patch has carried yet (see ``flush``)
        self.ready = asyncio.Event()
        self.failure: BaseException | None = None
        self.broken = False
        self.task: asyncio.Task[None] | None = None
        self.reads = 0  # database reads after the first (refills, re-reads): for tests and the bench
        self.reloads = 0  # of them, those that read every root field again

    # -- events ------------------------------------------------------------------------

    def receive(self, event: ChangeEvent, *, emit: bool = True) -> None:
        """From the dispatcher, in seq order; never blocks. ``emit`` False: the patch waits for
        ``flush`` (the end of the dispatch pass), so the events of one commit make one revision."""
        if event.seq <= self.seq:
            return
        if self.busy:
            if len(self.backlog) >= BACKLOG:
                # The read in flight may predate these: drop them all and read everything again.
                self.backlog.clear()
                self.overflowed = True
            self.backlog.append(event)
            return
        changed = self._apply(event)
        if self._needs_read():
            self.unsent = False  # the read emits when it is done
            self._start_read()
        elif changed:
            self.unsent = True
            if emit:
                self.flush()

    def flush(self) -> None:
        """Send what the events received since the last patch changed (nothing while reading)."""
        if self.unsent and not self.busy:
            self.unsent = False
            self.emit()

    def _apply(self, event: ChangeEvent) -> bool:
        self.seq = event.seq
        changed = False
        for source in self.sources:
            if source.refetch:
                if source.incremental and event.collection == source.collection.name and not source.kept.stale:
                    carried = None if source.pending else source.carried(event)  # in order, after those
                    if carried is not None:
                        changed = source.kept.apply(carried) or changed
                    else:
                        source.pending.append(event)  # applied once read with its related rows (settle)
                        changed = True
                elif source.touched_by(event):
                    source.kept.stale = True  # read again (settle): one query for the whole group
                    source.pending.clear()
                    source.batches.clear()
                    changed = True
            elif source.collection.name == event.collection and source.kept.apply(event):
                changed = True
        return changed

    def index_key(self, collection: str) -> IndexKey:
        """How the hub finds this group for an event of ``collection`` (see index.py)."""
        sources = [s for s in self.sources if s.collection.name == collection]
        if len(sources) != 1 or any(collection in s.depends for s in self.sources):
            return ("scan",)
        kept = sources[0].kept
        if isinstance(kept, Single):
            return ("id", kept.record_id)
        terms = {c: v for c, v in equality_terms(sources[0].where).items() if c not in UNINDEXED_COLUMNS}
        if not terms:
            return ("scan",)
        column = next((c for c in terms if c != "account"), "account")
        return ("eq", column, terms[column])

    def _needs_read(self) -> bool:
        return any(s.pending or s.kept.needs() != Needs.NOTHING for s in self.sources)

    def _start_read(self) -> None:
        self.busy = True
        # Owned by the group: cancelled when its last member leaves (close).
        self.task = asyncio.get_running_loop().create_task(self._read_and_emit(), name="tidings-live-read")

    async def _read_and_emit(self) -> None:
        try:
            await self.settle()
            self.emit()
        except Exception:
            # Its members cannot be kept right any more: end them, saying so; they may run it again.
            self.broken = True  # and nobody joins it: the next subscriber starts a new group
            logger.warning("A live query's read failed; ending its %d operations", len(self.members), exc_info=True)
            error = {
                "message": "The live query could not be kept current; run it again",
                "extensions": {"code": ErrorCode.INTERNAL_SERVER_ERROR.value},
            }
            for member in list(self.members.values()):
                member.sink.finish(member.op_id, [error])

    async def settle(self) -> None:
        """Read what the kept values need, apply the backlog, until nothing is missing.

        A fill of missing rows is exact only when the snapshot it reads is the state
        the window reflects plus nothing else: every event up to the snapshot's seq
        must already be applied (none in the backlog, none still to be dispatched).
        Otherwise every root field is read again in that snapshot, and events up to
        its seq are skipped as already reflected.
        """
        while True:
            # Own changes the hub read for all their groups at once, in order: with nothing else to
            # read, this group opens no snapshot of its own.
            for source in self.sources:
                await _apply_batches(source)
            if self.overflowed or self._needs_read():
                await self._read()
                if self.rendered is not None:
                    self.reads += 1
                if self.overflowed:
                    continue
            while self.backlog and not self._needs_read():
                event = self.backlog.popleft()
                if event.seq > self.seq:
                    self._apply(event)
            if not self._needs_read():
                self.busy = False
                return

    async def _read(self) -> None:
        """One snapshot: the own changes still waiting, then a fill (when exact) or a re-read."""
        async with self.store.reader() as reader:
            snapshot = await reader.seq()
            # Own changes first, in order, each with its related rows: the kept values then
            # reflect every event received, and may need a fill (a row left) or a read.
            for source in self.sources:
                pending, source.pending = source.pending, []
                source.batches.clear()
                for event in pending:
                    if not source.kept.stale:
                        source.kept.apply(await source.prepare(reader, event))
            exact = (
                not self.overflowed
                and snapshot <= self._position()
                and all(e.seq > snapshot for e in self.backlog)
                and all(s.kept.needs() != Needs.RELOAD for s in self.sources)
            )
            self.overflowed = False
            if exact:
                for source in self.sources:
                    if source.kept.needs() == Needs.FILL:
                        await source.fill(reader)
            else:
                for source in self.sources:
                    await source.reload(reader)
                self.seq = max(self.seq, snapshot)
                if self.rendered is not None:
                    self.reloads += 1

    # -- rendering -----------------------------------------------------------------------

    def render(self) -> JSONObject:
        executor = self.executor.build_per_event_executor({s.key: s.kept.value() for s in self.sources})
        executor._relevant_sub_fields = {}  # see Group.render: the shared memo would grow per render
        result: Any = executor.execute_operation(False)
        out: JSONObject = {"data": result.data}
        errors: list[GraphQLError] | None = result.errors
        if errors:
            out["errors"] = [e.formatted for e in classify_all(list(errors))]
        return out

    def emit(self) -> None:
        """Render; if the result changed, send every member the patch (and the new revision)."""
        result = self.render()
        previous = self.rendered
        self.rendered, self.rendered_seq = result, self.seq
        if previous is None:
            return
        patch = diff(previous.get("data"), result.get("data"))
        if not patch and previous.get("errors") == result.get("errors"):
            return
        head: JSONObject = {"patch": patch}
        if "errors" in result:
            head["errors"] = result["errors"]
        head["extensions"] = self._extensions(self.seq)
        text = orjson.dumps(head).decode()[:-1]
        for member in list(self.members.values()):
            member.send(self.seq, text)

    def first_message(self, member: LiveMember) -> None:
        """The full result, revision 1, for a member that just joined."""
        assert self.rendered is not None
        head = {**self.rendered, "extensions": self._extensions(self.rendered_seq)}
        member.send(self.rendered_seq, orjson.dumps(head).decode()[:-1])

    def _extensions(self, seq: int) -> JSONObject:
        return {"seq": str(seq), "cursor": f"{self.store.epoch}:{seq}"}

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


class LiveHub:
    """The live groups of this process, indexed by (collection, account); fed by the dispatcher."""

    def __init__(self, store: Store, position: Any) -> None:
        self.store = store
        self.position = position
        self.groups: dict[Hashable, LiveGroup] = {}
        self._buckets: dict[tuple[str, Any], Bucket] = {}
        self._touched: set[LiveGroup] = set()  # groups that received events in the current dispatch pass
        self.prepare = SharedPrepare(store)

    def flush(self) -> None:
        """A dispatch pass ended (whole commits): each group it touched sends one patch."""
        touched, self._touched = self._touched, set()
        for group in touched:
            try:
                group.flush()
            except Exception:
                logger.exception("Rendering a live query failed; it reads again")
                for source in group.sources:
                    source.kept.stale = True
                if not group.busy:
                    group._start_read()

    def observe(self, event: ChangeEvent) -> None:
        groups: set[LiveGroup] = set()
        for bucket_key in ((event.collection, event.account), (event.collection, ANY_ACCOUNT)):
            bucket = self._buckets.get(bucket_key)
            if bucket is not None:
                bucket.candidates(event, groups)
        # In seq order for each group (this is one event); the order among groups does not matter.
        waiting: list[LiveSource] = []
        for group in groups:
            self._touched.add(group)
            try:
                group.receive(event, emit=False)
            except Exception:
                logger.exception("Applying seq %s to a live query failed; it reads again", event.seq)
                for source in group.sources:
                    source.kept.stale = True
                if not group.busy:
                    group._start_read()
                continue
            waiting.extend(s for s in group.sources if s.pending and s.pending[-1] is event)
        if waiting:
            # Their groups' reads wait for it: one read of the event's related rows for them all
            # (a message posted to a room whose 200 members each hold their own live query).
            batch = self.prepare.read(event, waiting)
            for source in waiting:
                source.batches[event.seq] = batch

    async def subscribe(
        self,
        key: Hashable,
        make: Any,
        account: Any,
        sink: Sink,
        op_id: str,
    ) -> LiveMember:
        """Join (or start) the group of ``key``; send the member its first result.

        A new group registers before it reads, with no await between: every event
        past the snapshot it reads reaches its backlog, and those the snapshot
        already holds are skipped by seq.
        """
        group = self.groups.get(key)
        if group is not None and group.broken:
            self._drop(group)
            group = None
        if group is None:
            sources, executor = make()
            group = LiveGroup(key, sources, executor, self.store, self.position)
            self.groups[key] = group
            for name in group.collections:
                bucket_key, index_key = (name, account), group.index_key(name)
                group.bucket_keys.append((bucket_key, index_key))
                self._buckets.setdefault(bucket_key, Bucket()).add(index_key, group)
            member = LiveMember(sink, op_id, group)
            group.members[id(member)] = member
            try:
                await group.settle()
                group.emit()
            except BaseException as exc:
                group.failure = exc
                group.ready.set()
                self._drop(group)  # whoever waits on it starts again or fails too
                raise
            group.ready.set()
        else:
            member = LiveMember(sink, op_id, group)
            group.members[id(member)] = member
            if not group.ready.is_set():
                try:
                    await group.ready.wait()
                except BaseException:
                    self.unsubscribe(member)
                    raise
                if group.failure is not None:
                    group.members.pop(id(member), None)
                    if isinstance(group.failure, asyncio.CancelledError):
                        # Its starter went away (the client stopped it): this one starts it anew.
                        return await self.subscribe(key, make, account, sink, op_id)
                    raise RuntimeError("The live query's first read failed") from group.failure
        group.first_message(member)
        return member

    def unsubscribe(self, member: LiveMember) -> None:
        group = member.group
        group.members.pop(id(member), None)
        if not group.members:
            self._drop(group)

    def _drop(self, group: LiveGroup) -> None:
        if self.groups.get(group.key) is group:
            del self.groups[group.key]
            group.close()
            for bucket_key, index_key in group.bucket_keys:
                bucket = self._buckets.get(bucket_key)
                if bucket is not None:
                    bucket.remove(index_key, group)
                    if bucket.is_empty():
                        del self._buckets[bucket_key]

    @property
    def member_count(self) -> int:
        return sum(len(g.members) for g in self.groups.values())
