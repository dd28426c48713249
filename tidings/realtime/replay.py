"""Shared replay: resuming subscribers read each log page once and render each event once per group.

The log is read in pages aligned on ``page_size`` (page ``lo`` holds seqs in
``(lo, lo + page_size]``), so subscribers resuming from nearby positions ask for the
same pages. A page is read by one task that every replay wanting it awaits, and kept
in a small LRU cache with its events decoded. A group renders a page once (one task,
awaited by its replaying members), yielding to the event loop between batches, and
replays write to their sinks in turns of one batch. Page reads queue for a few
database slots, fewer than the pool holds, so a reconnect storm waits its turn
instead of failing, and plain queries and writes keep connections of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import OrderedDict
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from tidings.errors import CursorExpired
from tidings.events import ChangeEvent
from tidings.realtime.related import snapshot as related_snapshot
from tidings.store import Store

if TYPE_CHECKING:
    from tidings.realtime.group import Group, Subscriber

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """The log's events in ``(lo, upto]``, and how far retention had pruned when they were read."""

    lo: int
    upto: int
    events: list[ChangeEvent]
    pruned: int


class _Renders:
    """One group's rendered pages, kept while the group lives (a storm's subscribers come over seconds)."""

    __slots__ = ("pages",)

    def __init__(self) -> None:
        self.pages: OrderedDict[tuple[int, int], asyncio.Task[list[tuple[int, str]]]] = OrderedDict()


class Replayer:
    """Replays the event log to resuming subscribers, sharing reads and renders."""

    def __init__(
        self,
        store: Store,
        *,
        page_size: int = 500,
        db_slots: int = 2,
        cached_pages: int = 16,
        rendered_pages: int = 8,
        cached_groups: int = 16,
        render_batch: int = 50,
        push_batch: int = 100,
    ) -> None:
        self.store = store
        self.page_size = page_size
        self.cached_pages = cached_pages
        self.rendered_pages = rendered_pages
        self.cached_groups = cached_groups
        self.render_batch = render_batch
        self.push_batch = push_batch
        self._turn = asyncio.Lock()  # one replay writes to its sink at a time, a batch per turn
        self._slots = asyncio.Semaphore(db_slots)  # below the pool size: queries and writes keep the rest
        self._pages: OrderedDict[int, tuple[int, asyncio.Task[Page]]] = OrderedDict()  # lo -> (upto, read); LRU
        self._renders: OrderedDict[Group, _Renders] = OrderedDict()  # LRU
        self._pruned: asyncio.Task[int] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.page_reads = 0  # log pages read from the database
        self.renders = 0  # events rendered for replay
        self.replays = 0  # resumes that read the log
        self.replayed = 0  # events pushed to resuming subscribers

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._pages.clear()
        self._renders.clear()

    async def pruned_through(self) -> int:
        """The store's ``pruned_through``, one query at a time however many callers ask at once.

        A caller may get the answer of a query that began just before it asked; a replay
        checks each page it reads again (``Page.pruned``), so a stale answer loses nothing.
        """
        task = self._pruned
        if task is None or task.done():
            task = self._pruned = self._spawn(self._read_pruned())
        return await asyncio.shield(task)

    async def replay(self, group: Group, subscriber: Subscriber, after: int, start: int) -> None:
        """Send ``subscriber`` the group's events with ``after < seq <= start``, in order."""
        renders = self._renders.get(group)
        if renders is None:
            renders = self._renders[group] = _Renders()
            while len(self._renders) > self.cached_groups:
                self._renders.popitem(last=False)
        else:
            self._renders.move_to_end(group)
        self.replays += 1
        lo = after - after % self.page_size
        while lo < start:
            hi = min(lo + self.page_size, start)
            page = await asyncio.shield(self._page(lo, hi))
            if page.pruned > max(lo, after):
                # Some of (after, hi] was deleted before it was read: a partial replay would be a silent loss.
                raise CursorExpired(
                    f"Events after seq {after} were pruned during replay", oldestSeq=str(page.pruned + 1)
                )
            rendered = await asyncio.shield(self._rendered(renders, group, page))
            # A cached page may reach past ``start``: those events come live, through the buffer.
            mine = [item for item in rendered if after < item[0] <= hi]
            for n in range(0, max(len(mine), 1), self.push_batch):
                # A finished read wakes every replay waiting for it in one loop turn: taking
                # turns keeps each turn to one batch of writes, so queries and live events
                # are served between batches instead of after the whole storm.
                async with self._turn:
                    if id(subscriber) not in group.members:
                        return  # unsubscribed meanwhile (connection gone): stop replaying
                    push, op_id = subscriber.sink.push, subscriber.op_id
                    batch = mine[n : n + self.push_batch]
                    for seq, payload in batch:
                        push(op_id, seq, payload)
                    self.replayed += len(batch)
                await asyncio.sleep(0)
            lo = hi

    def forget(self, group: Group) -> None:
        """Drop what was rendered for ``group`` (it has no members left)."""
        self._renders.pop(group, None)

    # -- pages ---------------------------------------------------------------

    def _page(self, lo: int, hi: int) -> asyncio.Task[Page]:
        """The read of page ``lo`` up to at least ``hi``: cached, in flight, or started now."""
        cached = self._pages.get(lo)
        if cached is not None and cached[0] >= hi:
            self._pages.move_to_end(lo)
            return cached[1]
        # Nothing cached, or a read that stopped short of ``hi`` (it began at an older head).
        task = self._spawn(self._read_page(lo, hi))
        self._pages[lo] = (hi, task)
        self._pages.move_to_end(lo)
        while len(self._pages) > self.cached_pages:
            self._pages.popitem(last=False)  # awaiters of an evicted read still hold its task
        return task

    async def _read_page(self, lo: int, hi: int) -> Page:
        try:
            async with self._slots:
                events = await self.store.read_events(lo, hi, self.page_size)
                pruned = await self.store.pruned_through()
        except BaseException:
            cached = self._pages.get(lo)
            if cached is not None and cached[1] is asyncio.current_task():
                del self._pages[lo]  # a failed read is not cached: the next replay tries again
            raise
        self.page_reads += 1
        return Page(lo, hi, events, pruned)

    async def _read_pruned(self) -> int:
        async with self._slots:
            return await self.store.pruned_through()

    # -- renders -------------------------------------------------------------

    def _rendered(self, renders: _Renders, group: Group, page: Page) -> asyncio.Task[list[tuple[int, str]]]:
        key = (page.lo, page.upto)
        task = renders.pages.get(key)
        if task is None:
            task = renders.pages[key] = self._spawn(self._render(group, page))
            while len(renders.pages) > self.rendered_pages:
                renders.pages.popitem(last=False)
        else:
            renders.pages.move_to_end(key)
        return task

    async def _render(self, group: Group, page: Page) -> list[tuple[int, str]]:
        if group.related is not None:
            return await self._render_related(group, page)
        out: list[tuple[int, str]] = []
        for n, event in enumerate(page.events, 1):
            match = group.match(event)
            if match is not None:
                out.append((event.seq, group.render(event, match)))
                self.renders += 1
            if n % self.render_batch == 0:
                await asyncio.sleep(0)  # render a batch, then let live delivery and queries run
        return out

    async def _render_related(self, group: Group, page: Page) -> list[tuple[int, str]]:
        """A page for a group that follows relations: read in one snapshot, each event as of its commit."""
        out: list[tuple[int, str]] = []
        follows = group.related.follows
        # Its reads queue for the same database slots as the log's pages: a storm of resuming
        # members of many such groups waits its turn instead of emptying the pool.
        async with self._slots, related_snapshot(self.store) as snapshot:
            for n, event in enumerate(page.events, 1):
                rendered = await group.outcome(event, snapshot)
                if rendered is not None:
                    out.append((event.seq, rendered[1]))
                if event.collection in follows:  # the records it moved into or out of view, after it
                    out.extend((event.seq, payload) for payload in await group.knock_on(event, snapshot))
                if n % self.render_batch == 0:
                    await asyncio.sleep(0)
        self.renders += len(out)
        return out

    def _spawn(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        task = asyncio.create_task(coro, name="tidings-replay")
        self._tasks.add(task)  # owned here: cancelled by close()
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # its awaiters got it; do not warn "never retrieved" when none are left
