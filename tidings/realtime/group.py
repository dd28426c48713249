"""A group: identical subscriptions sharing one execution per event.

Subscriptions with the same document, variables and permission scope select
the same events and render them to the same bytes; the group decides and
renders once, and each member only wraps the shared payload in its own frame.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol

import orjson
from graphql import GraphQLError
from graphql.execution import Executor, execute_subscription_event

from tidings.events import ChangeEvent, Operation
from tidings.filters import And, Filter, compile_predicate
from tidings.limits import TokenBucket, rate_limited_events
from tidings.model.collection import Collection
from tidings.schema.extensions import classify_all
from tidings.schema.inputs import Match
from tidings.schema.inputs import Operation as GraphQLOperation

_OPERATIONS = {op: GraphQLOperation(op.value) for op in Operation}


def render_view(executor: Executor[Any], view: Mapping[str, Any]) -> str:
    """Execute a subscription's selection set on ``view`` (its root value) and serialize the result."""
    per_event = executor.build_per_event_executor(view)
    # The copy shares graphql-core's subfield memo with the subscription's executor, keyed by
    # lists made anew for each event: shared, it would grow by every event ever rendered.
    per_event._relevant_sub_fields = {}
    result = execute_subscription_event(per_event)
    payload: dict[str, Any] = {"data": result.data}  # type: ignore[union-attr]
    errors: list[GraphQLError] | None = result.errors  # type: ignore[union-attr]
    if errors:
        payload["errors"] = [e.formatted for e in classify_all(list(errors))]
    return orjson.dumps(payload).decode()


class Sink(Protocol):
    """Where one connection's results go (the transport implements it).

    ``push`` never blocks: it enqueues on the connection's bounded queue, and
    a connection that overflows closes itself.
    """

    def push(self, op_id: str, seq: int, payload: str) -> None: ...

    def finish(self, op_id: str, errors: list[dict[str, Any]] | None = None) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Selection:
    """What a subscription selects: decided from its arguments, once."""

    collection: Collection
    where: Filter
    operations: frozenset[Operation] | None
    record_id: str | None
    guard: Filter  # the subscriber's read permission, account scope included
    epoch: str = ""  # the event log's identity, the first half of each event's cursor
    changed_fields: frozenset[str] | None = None  # columns; an update that STAYED in view must change one
    related: Any = None  # tidings.realtime.related.RelatedRows: when its filter or selection follows relations


class Subscriber:
    """One subscription of one connection, member of a group."""

    __slots__ = ("buffer", "group", "min_seq", "op_id", "rate", "sink")

    def __init__(self, sink: Sink, op_id: str, group: Group, min_seq: int) -> None:
        self.sink = sink
        self.op_id = op_id
        self.group = group
        self.min_seq = min_seq
        # While a resume replays the log, live events wait here (see Dispatcher.subscribe).
        self.buffer: list[tuple[int, str]] | None = None
        self.rate: TokenBucket | None = None  # events delivered per second (None: unlimited)

    def push(self, seq: int, payload: str) -> None:
        if seq <= self.min_seq:
            return
        if self.buffer is not None:
            self.buffer.append((seq, payload))
            return
        rate = self.rate
        if rate is not None and rate.take():
            self._over_rate(rate)
            return
        self.min_seq = seq
        self.sink.push(self.op_id, seq, payload)

    def push_all(self, seq: int, payloads: Sequence[str]) -> None:
        """Several results of one seq (a change and the records it moved into or out of view):
        all or none, so a resume after this seq misses none of them and repeats none."""
        if len(payloads) == 1:
            self.push(seq, payloads[0])
            return
        if seq <= self.min_seq or not payloads:
            return
        if self.buffer is not None:
            self.buffer.extend((seq, payload) for payload in payloads)
            return
        rate = self.rate
        if rate is not None:
            taken = 0
            while taken < len(payloads) and not rate.take():
                taken += 1
            if taken < len(payloads):
                for _ in range(taken):
                    rate.give_back()
                self._over_rate(rate)
                return
        self.min_seq = seq
        for payload in payloads:
            self.sink.push(self.op_id, seq, payload)

    def _over_rate(self, rate: TokenBucket) -> None:
        """Over its event rate: end this one subscription, saying where to resume.

        Nothing is dropped silently: the client learns the last seq it received
        and resubscribes with ``after:`` it, replaying the rest from the event log.
        Holding events back here instead would keep unbounded memory per subscriber.
        """
        error = rate_limited_events(rate, self.min_seq)
        self.min_seq = sys.maxsize  # whatever still arrives before the unsubscribe is past its end
        self.rate = None
        self.sink.finish(self.op_id, [error])


class Group:
    """Members sharing (document, variables, scope); renders each event once."""

    __slots__ = (
        "_guard",
        "_in_view",
        "bucket_key",
        "executor",
        "graphql_names",
        "index_terms",
        "key",
        "members",
        "selection",
    )

    def __init__(
        self,
        key: Hashable,
        selection: Selection,
        executor: Executor[Any],
        index_terms: Mapping[str, Any],
    ) -> None:
        self.key = key
        self.selection = selection
        self.executor = executor
        self.index_terms = dict(index_terms)
        self.members: dict[int, Subscriber] = {}
        self.bucket_key: tuple[str, Any] = (selection.collection.name, None)  # set where the dispatcher indexes it
        self._guard = compile_predicate(selection.guard)
        self._in_view: Callable[[Mapping[str, Any]], bool] = compile_predicate(And((selection.guard, selection.where)))
        self.graphql_names = {f.name: f.graphql_name for f in selection.collection.fields}

    @property
    def related(self) -> Any:
        """The group's related rows per event (tidings.realtime.related), or None: all is in the event."""
        return self.selection.related

    async def outcome(self, event: ChangeEvent, snapshot: Any) -> tuple[Match, str] | None:
        """``match`` and ``render`` for a group whose filter or selection follows relations: the
        related rows are read first, from ``snapshot`` (tidings.realtime.related.Snapshot) as of
        the event's commit (may raise: the caller delivers nothing of the event then)."""
        related = self.selection.related
        if event.collection != self.selection.collection.name:
            return None
        before, after = await related.views(event, snapshot)
        match = self.match(event, (before, after))
        if match is None:
            return None
        record, previous, changed = self._shown(event, match, after)
        shown = await related.render(record, snapshot, event.seq)
        return match, self._payload(event, match, shown, previous, changed)

    async def knock_on(self, event: ChangeEvent, snapshot: Any) -> list[str]:
        """The payloads of the records ``event``, a change to a row this group's view reads through
        relations, moves into (ENTERED) or out of (LEFT) the view: each an UPDATED with no changed
        field, under the change's seq and cursor. Empty for events of collections it does not follow."""
        sel = self.selection
        related = sel.related
        if related is None or event.collection not in related.follows:
            return []
        if sel.operations is not None and Operation.UPDATED not in sel.operations:
            return []
        moved = [
            (record, match)
            for record, match in await related.consequences(event, snapshot, self._in_view)
            if sel.record_id is None or record["id"] == sel.record_id
        ]
        shown = await related.render_all([record for record, _ in moved], snapshot, event.seq)
        return [
            self._payload(event, match, record, {}, [], operation=Operation.UPDATED, record_id=record["id"])
            for record, (_, match) in zip(shown, moved, strict=True)
        ]

    def match(
        self, event: ChangeEvent, views: tuple[Mapping[str, Any] | None, Mapping[str, Any] | None] | None = None
    ) -> Match | None:
        """How ``event`` relates to this group's view, or None if it is not for it.

        A record is in view when the subscriber may read it and it matches the
        filter. UPDATED goes out when it was or is in view (ENTERED, STAYED,
        LEFT); DELETED when it was in view (LEFT); CREATED and RESTORED when it
        is (ENTERED). ``changed_fields`` narrows only updates that STAYED: a record
        entering or leaving the view is news whatever changed, or a client's copy
        of the view would go wrong.
        """
        sel = self.selection
        if event.collection != sel.collection.name:
            return None  # a replay reads the whole log: every collection's events
        if sel.operations is not None and event.operation not in sel.operations:
            return None
        if sel.record_id is not None and event.record_id != sel.record_id:
            return None
        before, after = views if views is not None else (event.before(), event.after())
        was = before is not None and self._in_view(before)
        now = after is not None and self._in_view(after)
        if now:
            if not was:
                return Match.ENTERED
            if sel.changed_fields is not None and sel.changed_fields.isdisjoint(event.changed_fields):
                return None
            return Match.STAYED
        if was:
            return Match.LEFT
        return None

    def render(self, event: ChangeEvent, match: Match) -> str:
        """Execute the selection set for ``event`` and serialize it, once."""
        record, previous, changed = self._shown(event, match, event.after())
        return self._payload(event, match, record, previous, changed)

    def _shown(
        self, event: ChangeEvent, match: Match, after: Mapping[str, Any] | None
    ) -> tuple[Mapping[str, Any], Mapping[str, Any], list[str]]:
        """What the subscriber is shown of the record: its state, previous values, changed fields."""
        record: Mapping[str, Any] = event.record
        previous: Mapping[str, Any] = event.previous
        changed = [self.graphql_names.get(name, name) for name in event.changed_fields]
        if match is Match.LEFT and after is not None and not self._guard(after):
            # Left because the subscriber may no longer read it: never show the
            # new contents, only the state it was allowed to see.
            record, previous, changed = event.before() or record, {}, []
        return record, previous, changed

    def _payload(
        self,
        event: ChangeEvent,
        match: Match,
        record: Mapping[str, Any],
        previous: Mapping[str, Any],
        changed: list[str],
        *,
        operation: Operation | None = None,
        record_id: str | None = None,
    ) -> str:
        event_id = f"{self.selection.collection.name}Event:{self.selection.epoch}:{event.seq}"
        if record_id is not None:  # one of the records a related change moved: several share the seq
            event_id += f":{record_id}"
        view = {
            "operation": _OPERATIONS[operation or event.operation],
            "seq": str(event.seq),
            "cursor": f"{self.selection.epoch}:{event.seq}",
            # Its own id, unique across types (a normalizing cache such as Relay's keys records by
            # id): the record's id is record { id }.
            "id": event_id,
            "record": record,
            "previous": previous,
            "changed_fields": changed,
            "timestamp": event.timestamp,
            "actor": event.actor,
            "match": match,
        }
        return render_view(self.executor, view)
