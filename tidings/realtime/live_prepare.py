"""One read of a change's related rows for every live group waiting for it.

A live source whose filter or rules follow relations applies a change to its own collection once
the changed record is read with the related rows its filter reads (``LiveSource.prepare``). Groups
that differ only in a claim (``Message.read`` through ``room.members`` with ``$sub``: each member
a group of their own) would each read the same message's room and their own membership: 200
members, 400 SELECTs per message. ``SharedPrepare`` reads them once for all the sources the event
reached: the record expanded for the OR of their filters (one SELECT per relation and level, the
rows that decide any of their quantifiers), each source then deciding with its own filter
(tidings.filters.predicate re-checks each related row's guard and filter) and reading what its own
selection nests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from tidings.events import ChangeEvent
from tidings.filters import Filter, Or, relations_in
from tidings.model.collection import Collection
from tidings.store import Reader, Store
from tidings.store.relations import expand

__all__ = ["SharedPrepare"]


class LiveSource(Protocol):
    """What is read for (tidings.realtime.live.LiveSource)."""

    collection: Collection
    where: Filter

    async def finish(self, reader: Reader, event: ChangeEvent, records: Sequence[Mapping[str, Any]]) -> ChangeEvent: ...


class SharedPrepare:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0  # shared reads made: for tests and the bench

    def read(self, event: ChangeEvent, sources: Sequence[LiveSource]) -> asyncio.Future[dict[int, ChangeEvent]]:
        """Start the read of ``event`` for ``sources`` (all of its collection): id(source) -> the
        event as that source's ``prepare`` makes it. Their groups await it."""
        task = asyncio.get_running_loop().create_task(self._read(event, list(sources)), name="tidings-live-prepare")
        task.add_done_callback(_retrieve)  # a failure is each group's to handle (it reads itself)
        return task

    async def _read(self, event: ChangeEvent, sources: list[LiveSource]) -> dict[int, ChangeEvent]:
        records = [r for r in (event.before(), event.after()) if r is not None]
        filters: list[Filter] = list({repr(s.where): s.where for s in sources if relations_in(s.where)}.values())
        async with self.store.reader() as reader:
            self.reads += 1
            if filters:
                wide = filters[0] if len(filters) == 1 else Or(tuple(filters))
                records = await expand(reader, sources[0].collection, records, wide)
            return {id(s): await s.finish(reader, event, records) for s in sources}


def _retrieve(task: asyncio.Task[dict[int, ChangeEvent]]) -> None:
    if not task.cancelled():
        task.exception()
