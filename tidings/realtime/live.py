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
import logging
from collections.abc import Hashable
from typing import Any, Protocol

import orjson
from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLObjectType,
    GraphQLSchema,
    OperationDefinitionNode,
)
from graphql.execution import Executor
from graphql.execution.values import get_argument_values
from graphql.pyutils import Path

from tidings.auth.principal import ANY_ACCOUNT, Principal
from tidings.auth.rules import Action, Authorizer
from tidings.errors import BadUserInput, ErrorCode
from tidings.events import ChangeEvent
from tidings.filters import And, Compare, Filter, Not, Or, compile_predicate, parse_filter
from tidings.limits import TokenBucket
from tidings.realtime.group import Sink
from tidings.realtime.patch import diff
from tidings.realtime.window import Count, Needs, Single, Window
from tidings.resolvers.convert import input_to_dict
from tidings.resolvers.crud import count_field
from tidings.schema.collection import Collection
from tidings.schema.extensions import classify_all
from tidings.store import Reader, Store
from tidings.types import JSONObject

logger = logging.getLogger("tidings.realtime")

__all__ = ["LiveExecutor", "LiveGroup", "LiveHub", "LiveMember", "LiveQueries", "LiveSource", "is_live"]

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


class _Kept(Protocol):
    stale: bool

    def needs(self) -> int: ...

    def apply(self, event: ChangeEvent) -> bool: ...

    def value(self) -> Any: ...


class LiveSource:
    """One root field of a live query: what it keeps and how to read it."""

    def __init__(
        self,
        key: str,
        collection: Collection,
        kept: Window | Count | Single,
        where: Filter,
        order: list[tuple[str, bool]] | None = None,
    ) -> None:
        self.key = key  # response key (alias or field name)
        self.collection = collection
        self.kept = kept
        self.where = where  # read guard and filter, as the plain query would read
        self.order = order or []

    async def reload(self, reader: Reader) -> None:
        kept = self.kept
        if isinstance(kept, Window):
            kept.load(await reader.list(self.collection, self.where, self.order, kept.limit, kept.offset))
        elif isinstance(kept, Count):
            kept.load(await reader.count(self.collection, self.where))
        else:
            kept.load(await reader.get(self.collection, kept.record_id, self.where))

    async def fill(self, reader: Reader) -> None:
        kept = self.kept
        assert isinstance(kept, Window)
        offset, limit = kept.fill_request()
        kept.fill(await reader.list(self.collection, self.where, self.order, limit, offset), limit)


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
        self.collections = {s.collection.name for s in sources}
        self.bucket_keys: list[tuple[str, Any]] = []
        self.seq = 0  # the event-log position the kept values reflect
        self.rendered: JSONObject | None = None  # the last result sent: {"data": ..., "errors"?: ...}
        self.rendered_seq = 0
        self.backlog: collections.deque[ChangeEvent] = collections.deque()
        self.overflowed = False
        self.busy = True  # reading: events wait in the backlog
        self.ready = asyncio.Event()
        self.failure: BaseException | None = None
        self.task: asyncio.Task[None] | None = None
        self.reads = 0  # database reads after the first (refills, re-reads): for tests and the bench

    # -- events ------------------------------------------------------------------------

    def receive(self, event: ChangeEvent) -> None:
        """From the dispatcher, in seq order; never blocks."""
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
            self._start_read()
        elif changed:
            self.emit()

    def _apply(self, event: ChangeEvent) -> bool:
        self.seq = event.seq
        changed = False
        for source in self.sources:
            if source.collection.name == event.collection and source.kept.apply(event):
                changed = True
        return changed

    def _needs_read(self) -> bool:
        return any(s.kept.needs() != Needs.NOTHING for s in self.sources)

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
            async with self.store.reader() as reader:
                snapshot = await reader.seq()
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
        self._buckets: dict[tuple[str, Any], set[LiveGroup]] = {}

    def observe(self, event: ChangeEvent) -> None:
        for bucket_key in ((event.collection, event.account), (event.collection, ANY_ACCOUNT)):
            groups = self._buckets.get(bucket_key)
            if groups:
                for group in list(groups):
                    try:
                        group.receive(event)
                    except Exception:
                        logger.exception("Applying seq %s to a live query failed; it reads again", event.seq)
                        for source in group.sources:
                            source.kept.stale = True
                        if not group.busy:
                            group._start_read()

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
        if group is None:
            sources, executor = make()
            group = LiveGroup(key, sources, executor, self.store, self.position)
            self.groups[key] = group
            for name in group.collections:
                bucket_key = (name, account)
                group.bucket_keys.append(bucket_key)
                self._buckets.setdefault(bucket_key, set()).add(group)
            member = LiveMember(sink, op_id, group)
            group.members[id(member)] = member
            try:
                await group.settle()
                group.emit()
            except BaseException as exc:
                group.failure = exc
                group.ready.set()
                self.unsubscribe(member)
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
                    self.unsubscribe(member)
                    raise RuntimeError("The live query's first read failed") from group.failure
        group.first_message(member)
        return member

    def unsubscribe(self, member: LiveMember) -> None:
        group = member.group
        group.members.pop(id(member), None)
        if not group.members and self.groups.get(group.key) is group:
            del self.groups[group.key]
            group.close()
            for bucket_key in group.bucket_keys:
                groups = self._buckets.get(bucket_key)
                if groups is not None:
                    groups.discard(group)
                    if not groups:
                        del self._buckets[bucket_key]

    @property
    def member_count(self) -> int:
        return sum(len(g.members) for g in self.groups.values())


def reads_column(f: Filter, column: str) -> bool:
    """Whether a filter compares ``column`` anywhere."""
    if isinstance(f, Compare):
        return f.column == column
    if isinstance(f, Not):
        return reads_column(f.item, column)
    if isinstance(f, And | Or):
        return any(reads_column(i, column) for i in f.items)
    return False


def order_keys(order_by: list[Any] | None, coll: Collection) -> list[tuple[str, bool]]:
    """``orderBy`` (coerced argument values, keyed by GraphQL name) as (column, descending)."""
    keys: list[tuple[str, bool]] = []
    for item in order_by or []:
        given = [(name, d) for name, d in item.items() if d is not None]
        if len(given) != 1:
            raise BadUserInput(
                f"Each {coll.name}OrderBy must name exactly one field, got {len(given)}", field="orderBy"
            )
        name, direction = given[0]
        keys.append((coll.filter_fields[name].column, str(getattr(direction, "value", direction)) == "DESC"))
    return keys


def root_fields(operation: OperationDefinitionNode) -> list[FieldNode]:
    fields: list[FieldNode] = []
    for selection in operation.selection_set.selections:
        if not isinstance(selection, FieldNode):
            raise BadUserInput("A live query selects fields at its root, not fragments")
        fields.append(selection)
    return fields


class LiveQueries:
    """Turns a ``query @live`` operation into a member of its live group."""

    def __init__(
        self,
        schema: GraphQLSchema,
        store: Store,
        authorizer: Authorizer,
        collections: list[Collection],
        hub: LiveHub,
        *,
        max_rows: int = 1000,
        max_limit: int = 1000,
    ) -> None:
        self.schema = schema
        self.store = store
        self.authorizer = authorizer
        self.hub = hub
        self.max_rows = max_rows
        self.max_limit = max_limit
        self.lists = {c.plural: c for c in collections}
        self.singles = {c.single_field: c for c in collections}
        self.counts = {count_field(c): c for c in collections}

    async def start(
        self,
        request_query: str,
        operation_name: str | None,
        variables: dict[str, Any] | None,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        principal: Principal,
        sink: Sink,
        op_id: str,
    ) -> LiveMember | list[GraphQLError]:
        built = LiveExecutor.build(self.schema, document, raw_variable_values=variables, operation_name=operation_name)
        if isinstance(built, list):
            return built
        query_type = self.schema.query_type
        assert query_type is not None
        plans: list[tuple[str, Collection, str, dict[str, Any]]] = []
        guards: dict[str, Filter] = {}
        for node in root_fields(operation):
            name = node.name.value
            key = node.alias.value if node.alias is not None else name
            if name == "__typename":
                continue
            coll = self.lists.get(name) or self.singles.get(name) or self.counts.get(name)
            if coll is None:
                raise BadUserInput(f"{name} cannot be live: live queries keep lists, counts and records by id")
            kind = "list" if name in self.lists else "single" if name in self.singles else "count"
            if coll.name not in guards:
                guards[coll.name] = self.authorizer.guard(coll.name, principal, Action.READ)
            plans.append((key, coll, kind, get_argument_values(query_type.fields[name], node, built.variable_values)))
        sources = [self._source(key, coll, kind, args, guards[coll.name]) for key, coll, kind, args in plans]
        account = self.authorizer.index_account(principal)
        # The grouping of event subscriptions (see Engine._subscribe): all that decides the
        # result is in the key, the read guards with their substituted values included.
        group_key = (
            "live",
            request_query,
            operation_name,
            orjson.dumps(variables or {}, option=orjson.OPT_SORT_KEYS),
            tuple(sorted((name, repr(g)) for name, g in guards.items())),
            account,
        )
        return await self.hub.subscribe(group_key, lambda: (sources, built), account, sink, op_id)

    def _source(self, key: str, coll: Collection, kind: str, args: dict[str, Any], guard: Filter) -> LiveSource:
        if kind == "single":
            return LiveSource(key, coll, Single(str(args["id"]), compile_predicate(guard)), guard)
        where = parse_filter(input_to_dict(args.get("where")), coll.filter_fields)
        view = And((guard, where))
        exact = not reads_column(view, "updated_at")
        if kind == "count":
            return LiveSource(key, coll, Count(compile_predicate(view), exact_before=exact), view)
        limit, offset = args.get("limit"), args.get("offset") or 0
        if limit is None or limit > self.max_rows:
            raise BadUserInput(
                f"A live {coll.plural} query keeps at most {self.max_rows} rows: give a limit of at most that "
                f"(got {'none' if limit is None else limit})",
                field="limit",
                maxRows=self.max_rows,
            )
        if not 0 <= limit <= self.max_limit:
            raise BadUserInput(f"limit must be between 0 and {self.max_limit}, got {limit}", field="limit")
        if offset < 0:
            raise BadUserInput(f"offset must be >= 0, got {offset}", field="offset")
        order = order_keys(args.get("orderBy"), coll)
        exact = exact and all(column != "updated_at" for column, _ in order)
        window = Window(order, offset, limit, compile_predicate(view), exact_before=exact)
        return LiveSource(key, coll, window, view, order)
