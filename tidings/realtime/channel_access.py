"""Channel rules that follow records (``read:<Collection>``): the one read that admits a caller to
``room:{id}``, and the re-check of every live channel operation under such a rule when a committed
change touches what the rule reads (a member removed from a room: their presence ends, FORBIDDEN).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import sqlalchemy as sa

from tidings.auth.channel_rules import ChannelAction, ChannelRules, RecordRule, Resolved
from tidings.auth.permissions import Permissions
from tidings.auth.principal import Principal
from tidings.auth.rules import Action
from tidings.errors import ConfigurationError, Forbidden, Unauthenticated
from tidings.events import ChangeEvent
from tidings.filters import Filter, related_nodes, related_targets
from tidings.realtime.dispatcher import Dispatcher
from tidings.realtime.group import Sink
from tidings.realtime.related_changes import Paths
from tidings.store.store import Store

logger = logging.getLogger("tidings.realtime")

OWN_ID = "@id"  # in a plan: the changed record's own id is the one to re-check
MAX_IDS_PER_READ = 500  # record ids one re-check query names, all its scopes together
MAX_CLAUSES = 1_000  # read guards kept built in SQL, about 22 KiB each (past it, all built again)
MAX_SCOPES_PER_READ = 50  # read guards one re-check query checks (a UNION ALL of one SELECT each)
MAX_CAUSES = 1_000  # changes one re-check tells guards apart by (past it, all noted are read)
RETRY_SECONDS = 1.0  # a re-check the database could not serve is tried again after this

Plan = Mapping[str, tuple[str, ...] | None]
"""A collection a rule reads -> the columns of its changed rows that hold the ids of the records to
re-check (OWN_ID: the row's own id), or None: any record of the rule's collection may be affected."""


class ChannelOperation(Protocol):
    """A ``channelEvents`` or ``presence`` operation (tidings.realtime.channel_events.ChannelSubscriber)."""

    sink: Sink
    op_id: str

    def close(self) -> None: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Ticket:
    """An admission: who was let in on which record, and the changes counted when its read began."""

    rule: RecordRule
    principal: Principal
    channel: str
    action: ChannelAction
    plan: Plan
    counted: int


@dataclasses.dataclass(eq=False, slots=True)
class _Entry:
    subscriber: ChannelOperation
    ticket: Ticket


def record_plan(collection: str, guard: Filter) -> dict[str, tuple[str, ...] | None]:
    """What a change to each collection ``guard`` reads tells about which records to re-check.

    A change to the collection itself: that record. To the target of a relation that starts at
    the record's id (a room's ``members``: ``Membership.room_id``): the records its old and new
    row name. To anything reached otherwise (through a reference, or deeper): any record.
    """
    plan: dict[str, tuple[str, ...] | None] = {collection: (OWN_ID,)}

    def any_record(name: str) -> None:
        plan[name] = None

    for node in related_nodes(guard):
        for name in related_targets(node.guard) | related_targets(node.item):
            any_record(name)
        columns = plan.get(node.target, ())
        if node.local_column == "id" and node.target != collection and columns is not None:
            plan[node.target] = (*columns, node.target_column)
        else:
            any_record(node.target)
    return plan


class ChannelAccess:
    """Admits callers to channels whose rule reads a record, and ends those no longer admitted.

    Registered with the dispatcher: ``observe`` sees every committed change in seq order and
    notes which tracked records it may affect (nothing, for a collection no rule reads);
    ``flush``, at the end of a dispatch pass, starts the re-check: the ids still readable among
    those noted, per (collection, read guard), read together (``_readable``).
    """

    def __init__(self, store: Store, permissions: Permissions, dispatcher: Dispatcher, rules: ChannelRules) -> None:
        self.store = store
        self.permissions = permissions
        names = sorted(permissions.current.collections)
        for namespace, action, collection in rules.record_rules():
            if collection not in names:
                raise ConfigurationError(
                    f"Channel {namespace.pattern!r}: {action} rule 'read:{collection}' names unknown collection "
                    f"{collection!r}; declared: {', '.join(names) or 'none'}"
                )
        self._entries: dict[str, dict[str, set[_Entry]]] = {}  # collection -> record id -> entries
        self._by_subscriber: dict[ChannelOperation, list[_Entry]] = {}
        self._plans: dict[str, dict[str, tuple[str, ...] | None]] = {}  # read collection -> rule collection -> cols
        self._changes: Counter[str] = Counter()  # committed changes seen, per collection
        self._pending: dict[str, set[str] | None] = {}  # rule collection -> ids to re-check (None: all)
        # The changes that noted them, to tell a guard they cannot move (another user's membership)
        # from one they may; None: not known (a change counted during an admission), check them all.
        self._causes: list[ChangeEvent] | None = []
        self._paths: dict[str, Paths] = {}  # repr(guard) -> its relation paths (bounded like _clauses)
        self.skipped = 0  # operations a change could not concern, not re-checked
        self._task: asyncio.Task[None] | None = None
        self._clauses: dict[tuple[str, str], sa.ColumnElement[bool]] = {}  # read guards in SQL (_where)
        self.admissions = 0  # admission reads
        self.reads = 0  # re-check reads
        self.rechecked = 0  # operations re-checked
        self.ended = 0  # operations ended FORBIDDEN by a re-check
        dispatcher.observers.append(self.observe)
        dispatcher.flushers.append(self.flush)

    # -- admission -----------------------------------------------------------------------

    async def admit(self, principal: Principal, resolved: Resolved, action: ChannelAction) -> Ticket | None:
        """Raise ``Forbidden`` unless ``principal`` may read the record ``resolved`` names (one read).

        None when the namespace's rule reads no record. A record that does not exist and one the
        caller may not read are refused alike: the answer never tells which.
        """
        rule = resolved.record
        if rule is None:
            return None
        refused = _refusal(resolved.channel, action, rule)
        authorizer = self.permissions.current
        try:
            guard = authorizer.guard(rule.collection, principal, Action.READ)
        except Forbidden:
            raise refused from None
        plan = record_plan(rule.collection, guard)
        # Counted before the read: a change seen while it runs is re-checked once tracked (track).
        counted = self._count(plan)
        self.admissions += 1
        # The record by id under the caller's read guard (Store.get_query's read, its id alone); the
        # guard's SQL is kept for the re-checks (_where).
        table = self.store.tables.by_collection[rule.collection]
        query = sa.select(table.c.id).where(table.c.id == rule.record_id, self._where(rule.collection, guard))
        async with self.store.reader() as reader:
            found = await reader.rows(self.store.hide_deleted(self.store.collections[rule.collection], query))
        if not found:
            raise refused
        return Ticket(rule, principal, resolved.channel, action, plan, counted)

    def track(self, subscriber: ChannelOperation, tickets: Iterable[Ticket | None]) -> None:
        """Keep re-checking ``subscriber``'s admissions until ``untrack``.

        Call it with no await since the operation's last await: a change committed after an
        admission's read began either was counted (then it is re-checked now) or is observed
        after this, with the subscriber tracked.
        """
        entries = [_Entry(subscriber, t) for t in tickets if t is not None]
        if not entries:
            return
        self._by_subscriber.setdefault(subscriber, []).extend(entries)
        for entry in entries:
            rule = entry.ticket.rule
            self._entries.setdefault(rule.collection, {}).setdefault(rule.record_id, set()).add(entry)
            for read, columns in entry.ticket.plan.items():
                plans = self._plans.setdefault(read, {})
                known = plans.get(rule.collection, ())
                # Guards of one rule share their shape; should two differ, the wider plan holds.
                plans[rule.collection] = (
                    None if known is None or columns is None else (*dict.fromkeys(known + columns),)
                )
            if self._count(entry.ticket.plan) != entry.ticket.counted:
                self._note(rule.collection, {rule.record_id})
                self._causes = None  # which changes is not known: a full re-check
        if self._pending:
            self._start()

    def untrack(self, subscriber: ChannelOperation) -> None:
        for entry in self._by_subscriber.pop(subscriber, ()):
            rule = entry.ticket.rule
            by_id = self._entries.get(rule.collection)
            if by_id is None:
                continue
            entries = by_id.get(rule.record_id)
            if entries is not None:
                entries.discard(entry)
                if not entries:
                    del by_id[rule.record_id]
            if not by_id:
                del self._entries[rule.collection]
                for plans in self._plans.values():
                    plans.pop(rule.collection, None)

    def _count(self, plan: Plan) -> int:
        return sum(self._changes[name] for name in plan)

    # -- the dispatcher's hooks ------------------------------------------------------------

    def observe(self, event: ChangeEvent) -> None:
        """A committed change: note the tracked records whose admission it may have changed."""
        self._changes[event.collection] += 1
        plans = self._plans.get(event.collection)
        if not plans:
            return
        for collection, columns in plans.items():
            by_id = self._entries.get(collection)
            if not by_id:
                continue
            if columns is None:
                self._note(collection, None)
                self._cause(event)
                continue
            ids: set[str] = set()
            for column in columns:
                if column == OWN_ID:
                    ids.add(event.record_id)
                    continue
                for row in (event.before(), event.after()):
                    value = row.get(column) if row is not None else None
                    if value is not None:
                        ids.add(str(value))
            ids &= by_id.keys()
            if ids:
                self._note(collection, ids)
                self._cause(event)

    def _cause(self, event: ChangeEvent) -> None:
        if self._causes is not None and (not self._causes or self._causes[-1] is not event):
            if len(self._causes) >= MAX_CAUSES:
                self._causes = None  # a burst: re-check all it noted rather than keep every change
            else:
                self._causes.append(event)

    def flush(self) -> None:
        """A dispatch pass ended (every commit in it whole): re-check what it noted."""
        if self._pending:
            self._start()

    def _note(self, collection: str, ids: set[str] | None) -> None:
        if collection in self._pending:
            known = self._pending[collection]
            self._pending[collection] = None if known is None or ids is None else known | ids
        else:
            self._pending[collection] = ids

    def _start(self) -> None:
        if self._task is None or self._task.done():
            # Owned here (cancelled by close); it runs until nothing is pending.
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tidings-channel-access")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # -- re-checks -----------------------------------------------------------------------

    async def _run(self) -> None:
        while self._pending:
            pending, self._pending = self._pending, {}
            causes, self._causes = self._causes, []
            try:
                await self.recheck(pending, causes)
            except Exception as exc:
                # Nobody is let off: the same records are checked again once the database answers.
                logger.warning("Channel access: a re-check failed (%s); retrying in %.1f s", exc, RETRY_SECONDS)
                for collection, ids in pending.items():
                    self._note(collection, ids)
                self._causes = None
                await asyncio.sleep(RETRY_SECONDS)

    def _moved(self, collection: str, guard: Filter, causes: Sequence[ChangeEvent]) -> bool:
        """Whether one of ``causes`` may change what ``guard`` lets read of ``collection``: a change
        to the collection itself may; one to a collection it reads through relations only unless
        the changed row counts alike before and after for each path there (related_changes.Paths)."""
        key = repr(guard)
        paths = self._paths.get(key)
        if paths is None:
            if len(self._paths) >= MAX_CLAUSES:
                self._paths.clear()
            paths = self._paths[key] = Paths(guard)
        for event in causes:
            if event.collection == collection:
                return True
            if paths.moved(event.collection, event.before(), event.after()):
                return True
        return False

    async def recheck(self, pending: Mapping[str, set[str] | None], causes: Sequence[ChangeEvent] | None = None) -> int:
        """Re-check the tracked operations on these records; end those no longer admitted. How many
        ended. ``causes``: the changes that noted them, when known (a guard none of them can move
        is not read)."""
        authorizer = self.permissions.current
        scopes: dict[tuple[str, str], tuple[Filter, dict[str, list[_Entry]]]] = {}
        refused: list[_Entry] = []
        guards: dict[tuple[int, str], Filter | None] = {}  # one guard per principal and collection
        for collection, ids in pending.items():
            by_id = self._entries.get(collection, {})
            chosen = list(by_id) if ids is None else [i for i in ids if i in by_id]
            for record_id in chosen:
                for entry in by_id[record_id]:
                    principal = entry.ticket.principal
                    key = (id(principal), collection)
                    if key not in guards:
                        try:
                            guards[key] = authorizer.guard(collection, principal, Action.READ)
                        except (Forbidden, Unauthenticated):
                            guards[key] = None
                    guard = guards[key]
                    if guard is None:
                        refused.append(entry)
                        continue
                    if causes is not None and not self._moved(collection, guard, causes):
                        self.skipped += 1
                        continue
                    scope = scopes.setdefault((collection, repr(guard)), (guard, {}))
                    scope[1].setdefault(record_id, []).append(entry)
        if scopes:
            readable = await self._readable(
                [(c, guard, list(by_record)) for (c, _), (guard, by_record) in scopes.items()]
            )
            for i, (_, by_record) in enumerate(scopes.values()):
                for record_id, entries in by_record.items():
                    self.rechecked += len(entries)
                    if (i, record_id) not in readable:
                        refused.extend(entries)
        ended = 0
        for entry in refused:
            if entry in self._by_subscriber.get(entry.subscriber, ()):  # not gone while we read
                self._end(entry)
                ended += 1
        return ended

    async def _readable(self, scopes: Sequence[tuple[str, Filter, Sequence[str]]]) -> set[tuple[int, str]]:
        """(scope's index, id) for each id its scope's guard lets read, in one snapshot.

        One SELECT per scope (collection, read guard) and ``MAX_IDS_PER_READ`` ids, sent together as
        one UNION ALL of up to ``MAX_SCOPES_PER_READ`` of them: a room whose 200 members are each a
        scope of their own (the rule names ``$sub``) is re-checked in four round trips, not 200.
        """
        selects: list[tuple[int, sa.Select[Any]]] = []
        for i, (collection, guard, ids) in enumerate(scopes):
            coll = self.store.collections[collection]
            table = self.store.tables.by_collection[collection]
            for start in range(0, len(ids), MAX_IDS_PER_READ):
                chunk = ids[start : start + MAX_IDS_PER_READ]
                query = sa.select(sa.literal_column(str(i), sa.Integer).label("scope"), table.c.id.label("id"))
                query = query.where(table.c.id.in_(chunk), self._where(collection, guard))
                selects.append((len(chunk), self.store.hide_deleted(coll, query)))
        found: set[tuple[int, str]] = set()
        async with self.store.reader() as reader:

            async def read(batch: list[sa.Select[Any]]) -> None:
                query = batch[0] if len(batch) == 1 else sa.select(sa.union_all(*batch).subquery())
                self.reads += 1
                found.update((int(row["scope"]), str(row["id"])) for row in await reader.rows(query))

            batch: list[sa.Select[Any]] = []
            size = 0
            for n, select in selects:
                if batch and (len(batch) == MAX_SCOPES_PER_READ or size + n > MAX_IDS_PER_READ):
                    await read(batch)
                    batch, size = [], 0
                batch.append(select)
                size += n
            if batch:
                await read(batch)
        return found

    def _where(self, collection: str, guard: Filter) -> sa.ColumnElement[bool]:
        """``guard`` in SQL over ``collection``'s table, kept for the next re-check: building one that
        follows relations (its aliases' columns) costs more than running it, about 0.5 ms."""
        key = (collection, repr(guard))
        clause = self._clauses.get(key)
        if clause is None:
            if len(self._clauses) >= MAX_CLAUSES:
                self._clauses.clear()
            clause = self._clauses[key] = self.store.where(guard, self.store.tables.by_collection[collection])
        return clause

    def _end(self, entry: _Entry) -> None:
        ticket, subscriber = entry.ticket, entry.subscriber
        error = _refusal(ticket.channel, ticket.action, ticket.rule)
        self.untrack(subscriber)
        self.ended += 1
        # The transport stops the operation (a presence member leaves: the others get LEAVE);
        # closing it here too covers an operation no transport holds yet (still starting).
        subscriber.sink.finish(subscriber.op_id, [{"message": error.message, "extensions": error.extensions}])
        subscriber.close()

    @property
    def busy(self) -> bool:
        """A re-check is pending or under way."""
        return bool(self._pending) or (self._task is not None and not self._task.done())

    @property
    def tracked(self) -> int:
        """Live channel operations under a record rule, in this process."""
        return len(self._by_subscriber)


def _refusal(channel: str, action: ChannelAction, rule: RecordRule) -> Forbidden:
    # The same words whether the record is missing or unreadable: they tell nothing about it.
    return Forbidden(
        f"Channel {channel!r}: {action.value} is for those who may read {rule.collection} {rule.record_id}"
    )
