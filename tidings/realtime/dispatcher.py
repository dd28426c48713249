"""The dispatcher: reads doorbells in sequence order and fans events out.

One task consumes the broker. It keeps ``position``, the last sequence it
dispatched, and dispatches strictly in order: a doorbell that skips numbers
makes it read the gap from the event log first, and a periodic check of the
log's head catches a lost last doorbell. The broker may fail at any time:
the consumer subscribes again with capped, jittered backoff and then reads
what it missed from the log, the gap check delivers meanwhile, and a publish
never holds a mutation's response longer than ``publish_timeout``. Subscriptions are found through an
index on (collection, account), then record id or an equality term of their
filter, so an event only touches the groups that may want it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import operator
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Protocol, TypeVar

from graphql.execution import Executor

from tidings.auth.principal import ANY_ACCOUNT
from tidings.errors import CursorExpired, Unavailable
from tidings.events import ChangeEvent
from tidings.filters import equality_terms
from tidings.model.collection import Collection
from tidings.pubsub import Broker
from tidings.pubsub.consumer import consume
from tidings.realtime import doorbell
from tidings.realtime.group import Group, Selection, Sink, Subscriber
from tidings.realtime.index import Bucket, IndexKey
from tidings.realtime.related import Snapshot
from tidings.realtime.related import snapshot as related_snapshot
from tidings.realtime.replay import Replayer
from tidings.schema.inputs import Match
from tidings.store import Store
from tidings.store.faults import is_disconnect
from tidings.store.migrations import fingerprint
from tidings.tracing import Tracing


class Latency(Protocol):
    """Where delivery latencies go (tidings.metrics.LatencyHistogram)."""

    def observe(self, committed: dt.datetime, deliveries: int) -> None: ...


logger = logging.getLogger("tidings.realtime")
_T = TypeVar("_T")


def _index_key(group: Group) -> IndexKey:
    """Where a group is found: by its record id, its first equality term, or a scan."""
    if group.selection.record_id is not None:
        return ("id", group.selection.record_id)
    if group.index_terms:
        column, value = next(iter(group.index_terms.items()))
        return ("eq", column, value)
    return ("scan",)


class Dispatcher:
    """Owns the live subscriptions of this process and feeds them events."""

    def __init__(
        self,
        store: Store,
        broker: Broker,
        *,
        gap_check_interval: float = 1.0,
        replay_page: int = 500,
        replay_db_slots: int = 2,
        channel: str = doorbell.CHANNEL,
        publish_timeout: float = 0.25,
        reconnect_backoff: tuple[float, float] = (0.05, 1.0),
        tracing: Tracing | None = None,
        latency: Latency | None = None,
    ) -> None:
        self.store = store
        self.tracing = tracing or Tracing()
        self.broker = broker
        self.channel = channel
        self.gap_check_interval = gap_check_interval
        self.replay_page = replay_page
        self.replayer = Replayer(store, page_size=replay_page, db_slots=replay_db_slots)
        self.position = 0
        self.groups: dict[Hashable, Group] = {}
        self._buckets: dict[tuple[str, Any], Bucket] = {}
        # collection -> the groups whose view reads it through relations (RelatedRows.follows)
        self._followers: dict[str, set[Group]] = {}
        self._task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one dispatch pass at a time: order is the invariant
        self.dispatched = 0
        self.gaps_filled = 0
        self.publish_timeout = publish_timeout
        self.reconnect_backoff = reconnect_backoff
        # Broker health: one WARNING when an outage starts, one INFO when it ends.
        self.broker_outages = 0
        self.broker_subscriptions = 0  # confirmed subscriptions: the first, then one per reconnect
        self.latency = latency  # commit-to-write seconds, per delivery (tidings.metrics)
        self._broker_down = False
        self._database_down = False  # the gap check's last read lost its connection (a restart)
        self._down_since = 0.0  # monotonic time the current outage began
        self._subscribed = False  # the consumer holds a subscription the broker confirmed
        self._probing = False  # while down, one publish at a time tries the broker
        self._wake = asyncio.Event()  # wakes the gap check early, e.g. after resubscribing
        # Called with every event, in seq order, after the groups (live queries: LiveHub.observe).
        self.observers: list[Callable[[ChangeEvent], None]] = []
        # Called when a dispatch pass ends (LiveHub.flush): every commit it touched was dispatched
        # whole, so what observers kept is a state the database had (a transaction is never half in).
        self.flushers: list[Callable[[], None]] = []
        # Called when another process announces that it migrated the database to another schema.
        self.schema = fingerprint(store.tables)
        self.schema_listeners: list[Callable[[], object]] = []

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self.position = await self.store.last_seq()
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._consume(ready), name="tidings-dispatcher")
        self._task.add_done_callback(_log_failure)
        await ready.wait()
        self._poll_task = asyncio.create_task(self._poll(), name="tidings-gap-check")
        self._poll_task.add_done_callback(_log_failure)

    async def close(self) -> None:
        tasks = [task for task in (self._task, self._poll_task) if task is not None]
        for task in tasks:
            task.cancel()
        # A task that already failed was logged by _log_failure; shutdown goes on.
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.replayer.close()

    async def publish(self, event: ChangeEvent) -> None:
        """Ring the doorbell for a committed event (called after commit); see ``publish_batch``."""
        await self.publish_batch((event,))

    async def publish_batch(self, events: Sequence[ChangeEvent]) -> None:
        """Ring the doorbell once for a commit's events (a transaction's: consecutive seqs).

        Takes at most ``publish_timeout``: the commit stands whatever happens
        here, and a lost doorbell is delivered from the log by the gap check.
        While the broker is down only one publish at a time probes it; the
        others return at once.
        """
        if self._broker_down and self._probing:
            return
        probe = self._broker_down
        self._probing = self._probing or probe
        try:
            async with asyncio.timeout(self.publish_timeout):
                await self.broker.publish(self.channel, doorbell.encode_batch(events))
        except Exception as exc:
            self._broker_lost(exc)
        else:
            self._broker_back()
        finally:
            if probe:
                self._probing = False

    async def _consume(self, ready: asyncio.Event) -> None:
        def subscribed() -> None:
            self._subscribed = True
            self.broker_subscriptions += 1
            ready.set()
            self._broker_back()
            # Doorbells rung while we were not subscribed are lost: read them from the log now.
            self._wake.set()

        def lost(exc: Exception) -> None:
            self._subscribed = False
            self._broker_lost(exc)

        try:
            await consume(
                self.broker,
                self.channel,
                self._handle_doorbell,
                on_ready=subscribed,
                on_lost=lost,
                backoff=self.reconnect_backoff,
            )
        finally:
            self._subscribed = False

    async def announce_schema(self) -> None:
        """Tell every process that the database now has this process's schema (it migrated it)."""
        try:
            async with asyncio.timeout(self.publish_timeout):
                await self.broker.publish(self.channel, doorbell.encode_schema(self.position, self.schema))
        except Exception as exc:
            self._broker_lost(exc)

    async def _handle_doorbell(self, message: bytes) -> None:
        schema = doorbell.announced_schema(message)
        if schema is not None and schema != self.schema:
            logger.warning("The database's schema changed: another process migrated it; this one serves the old one")
            for listener in self.schema_listeners:
                listener()
        try:
            seq, events = doorbell.decode_all(message, self.store.collections)
            await self._advance(seq, events)
        except Exception:
            # Nothing past position was dispatched: the gap check retries it.
            logger.warning("Dispatching a doorbell failed; the gap check retries", exc_info=True)

    def _broker_lost(self, exc: BaseException) -> None:
        if not self._broker_down:
            self._broker_down = True
            self.broker_outages += 1
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {self.publish_timeout} s"
            else:
                reason = f"{type(exc).__name__}: {exc}"
            self._down_since = time.monotonic()
            logger.warning(
                "Broker unreachable (%s); reconnecting with backoff, delivering from the event log meanwhile",
                reason,
                extra={"event": "broker_outage", "channel": self.channel, "reason": reason},
            )

    def _broker_back(self) -> None:
        # A publish that went through is not enough after a disconnect: live delivery is
        # back only once the consumer holds a confirmed subscription again.
        if self._broker_down and self._subscribed:
            self._broker_down = False
            outage = round(time.monotonic() - self._down_since, 3)
            logger.info(
                "Broker reachable again after %.1f s; live delivery resumed",
                outage,
                extra={"event": "broker_recovered", "channel": self.channel, "outage_s": outage},
            )

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.gap_check_interval)
            self._wake.clear()
            try:
                head = await self.store.last_seq()
                if head > self.position:
                    await self._advance(head, None)
            except Exception as exc:
                if not is_disconnect(exc):
                    logger.exception("Gap check could not read the event log")
                elif not self._database_down:  # an outage, not a fault of ours: said once
                    self._database_down = True
                    logger.warning("Gap check: the database is unreachable (%s); trying again", type(exc).__name__)
            else:
                if self._database_down:
                    self._database_down = False
                    logger.info("Gap check: the database is reachable again")

    async def _advance(self, seq: int, events: list[ChangeEvent] | None) -> None:
        """Dispatch everything up to ``seq``, in order, exactly once.

        ``seq`` ends a commit (a doorbell's, or the log's head), so a pass that reaches it
        dispatched each commit whole; the flushers run once, at its end.
        """
        if seq <= self.position:
            return
        async with self._lock:
            if seq <= self.position:
                return
            if events and events[0].seq == self.position + 1 and events[-1].seq == seq:
                await self._dispatch_all(events)
            else:
                await self._read_up_to(seq)
            # Not when a pass fails midway (a related read): what observers applied of a commit
            # waits for the pass that dispatches its rest again.
            self._flush()

    async def _read_up_to(self, seq: int) -> None:
        """A gap (lost or reordered doorbell) or no event body: read the log up to ``seq``."""
        while self.position < seq:
            events = await self.store.read_events(self.position, seq, self.replay_page)
            if not events:
                # Nothing committed up to seq: numbers that rolled back leave holes, and a
                # doorbell may name a seq our log does not hold (yet). Move only as far as
                # the log's head, so no event that does commit is ever skipped.
                head = await self.store.last_seq()
                self.position = max(self.position, min(seq, head))
                break
            self.gaps_filled += 1
            await self._dispatch_all(events)
            if events[-1].seq >= seq:
                break
            # The next page starts after what we dispatched; holes below are skipped.

    async def _dispatch_all(self, events: Sequence[ChangeEvent]) -> None:
        """Dispatch committed ``events`` in order, their related reads in one snapshot, opened
        after they committed (so each is read as of its commit: ``Snapshot.as_of``)."""
        async with related_snapshot(self.store) as snapshot:
            for event in events:
                await self._dispatch(event, snapshot)

    def _flush(self) -> None:
        for flush in self.flushers:
            try:
                flush()
            except Exception:
                logger.exception("Ending a dispatch pass failed")

    async def _dispatch(self, event: ChangeEvent, snapshot: Snapshot) -> None:
        candidates: set[Group] = set()
        for key in ((event.collection, event.account), (event.collection, ANY_ACCOUNT)):
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.candidates(event, candidates)
        # Groups that follow relations read related rows first: for their own events, and for the
        # records a change to a row they read through relations moves into or out of their view. A
        # read the database could not serve (down, restarting) raises before anything of this event
        # went out: it is dispatched again, whole. Any other failure is that group's alone: logged,
        # as a render failure is, so one group never holds back every other subscriber.
        related: dict[Group, tuple[Match, str] | None] = {}
        moved: dict[Group, list[str]] = {}
        for group in candidates:
            if group.related is not None:
                related[group] = await self._related(event, group.outcome(event, snapshot))
        for group in self._followers.get(event.collection, ()):
            account = group.bucket_key[1]
            if account is ANY_ACCOUNT or event.account is None or account == event.account:
                payloads = await self._related(event, group.knock_on(event, snapshot))
                if payloads:
                    moved[group] = payloads
        self.position = event.seq
        self.dispatched += 1
        for group in candidates:
            if group.related is None:
                self._deliver(group, event)
            elif group.key in self.groups:
                outcome = related.get(group)
                own = [outcome[1]] if outcome is not None else []
                self._send(group, event, own + moved.pop(group, []))
        for group, payloads in moved.items():
            if group.key in self.groups:
                self._send(group, event, payloads)
        for observe in self.observers:
            observe(event)

    async def _related(self, event: ChangeEvent, read: Awaitable[_T]) -> _T | None:
        try:
            return await read
        except Exception as exc:
            if isinstance(exc, Unavailable) or is_disconnect(exc):
                raise
            logger.exception("Matching seq %s for a subscription group that follows relations failed", event.seq)
            return None

    def _deliver(self, group: Group, event: ChangeEvent) -> None:
        try:
            match = group.match(event)
        except Exception:
            logger.exception("Matching seq %s for a subscription group failed", event.seq)
            return
        if match is None:
            return
        if not self.tracing.enabled:
            self._push(group, event, match)
            return
        cursor = f"{self.store.epoch}:{event.seq}"
        with self.tracing.delivery(event.collection, event.seq, cursor, len(group.members)):
            self._push(group, event, match)

    def _push(self, group: Group, event: ChangeEvent, match: Match) -> None:
        try:
            payload = group.render(event, match)
        except Exception:
            logger.exception("Rendering seq %s for a subscription group failed", event.seq)
            return
        self._send(group, event, [payload])

    def _send(self, group: Group, event: ChangeEvent, payloads: list[str]) -> None:
        if not payloads:
            return
        members = list(group.members.values())
        for member in members:
            member.push_all(event.seq, payloads)
        if self.latency is not None:
            # Once per group, after its frames went out: writes are eager, so this is when
            # they reached the sockets (or the queues of connections whose sockets are full).
            self.latency.observe(event.timestamp, len(members))

    # -- subscriptions ---------------------------------------------------------

    async def subscribe(
        self,
        *,
        key: Hashable,
        selection: Selection,
        executor: Executor[Any],
        account: Any,
        sink: Sink,
        op_id: str,
        after: int | None,
    ) -> Subscriber:
        """Register a subscription; with ``after``, replay the log first.

        Registration and reading ``position`` happen with no await between
        them, so every live event after this point has seq > start and reaches
        the subscriber's buffer; the replay covers (after, start]. The buffer is
        then flushed with seq > last replayed: no gap, no duplicate. The replay
        itself is shared with the other subscribers resuming meanwhile (see
        ``Replayer``): it pushes only seqs in (after, start], straight to the sink.
        """
        if after is not None:
            pruned = await self.replayer.pruned_through()
            if after < pruned:
                raise CursorExpired(
                    f"Events after seq {after} are no longer retained (oldest kept is {pruned + 1}); "
                    "re-query and subscribe with the seq of that response",
                    oldestSeq=str(pruned + 1),
                )
        group = self.groups.get(key)
        if group is None:
            group = Group(key, selection, executor, equality_terms(selection.where))
            self.groups[key] = group
            group.bucket_key = (selection.collection.name, account)
            self._buckets.setdefault(group.bucket_key, Bucket()).add(_index_key(group), group)
            for followed in group.related.follows if group.related is not None else ():
                self._followers.setdefault(followed, set()).add(group)
        start = self.position
        subscriber = Subscriber(sink, op_id, group, min_seq=start if after is None else after)
        group.members[id(subscriber)] = subscriber
        if after is None or after >= start:
            return subscriber
        subscriber.buffer = []
        try:
            await self.replayer.replay(group, subscriber, after, start)
        except BaseException:
            self.unsubscribe(subscriber)
            raise
        buffered, subscriber.buffer = subscriber.buffer, None
        subscriber.min_seq = start
        for seq, payloads in itertools.groupby(buffered, key=operator.itemgetter(0)):
            subscriber.push_all(seq, [payload for _, payload in payloads])
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        group = subscriber.group
        group.members.pop(id(subscriber), None)
        if not group.members and self.groups.get(group.key) is group:
            del self.groups[group.key]
            self.replayer.forget(group)
            bucket = self._buckets.get(group.bucket_key)
            if bucket is not None:
                bucket.remove(_index_key(group), group)
                if bucket.is_empty():
                    del self._buckets[group.bucket_key]
            for followed in group.related.follows if group.related is not None else ():
                followers = self._followers.get(followed)
                if followers is not None:
                    followers.discard(group)
                    if not followers:
                        del self._followers[followed]

    @property
    def subscriber_count(self) -> int:
        return sum(len(g.members) for g in self.groups.values())


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("Background task %s failed", task.get_name(), exc_info=task.exception())


__all__ = ["ANY_ACCOUNT", "Collection", "Dispatcher"]
