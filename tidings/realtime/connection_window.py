"""A live connection (``query @live { tasksConnection(...) }``): its page kept as a live list's
window is, over the rows within the page's cursors, with the counts behind ``totalCount`` and
the flag of rows beyond the cursor, all changed by events without reading the database.

The page is a ``Window`` of ``first`` + 1 rows (or ``last`` + 1, kept from the order's end):
the extra row says whether more follow. ``totalCount`` is a ``Count`` of the whole view; the
rows beyond the cursor the page starts from (``hasPreviousPage`` after ``after``) another.
"""

from __future__ import annotations

from typing import Any

from tidings.events import ChangeEvent
from tidings.filters import And, compile_predicate
from tidings.model.collection import Collection
from tidings.realtime.window import Count, Needs, Window
from tidings.resolvers.connections import Paging, page_value
from tidings.store import Reader

__all__ = ["ConnectionWindow"]


class ConnectionWindow:
    """The kept value of one live connection (see LiveSource for the protocol it follows)."""

    def __init__(self, collection: Collection, paging: Paging, *, exact_before: bool) -> None:
        self.collection = collection
        self.paging = paging
        self.window = Window(
            paging.order,
            0,
            paging.count + 1,
            compile_predicate(paging.bounded),
            exact_before=exact_before,
            backward=paging.backward,
        )
        self.total = Count(compile_predicate(paging.view), exact_before=exact_before)
        self.beyond: Count | None = None
        if paging.outside is not None:
            self.beyond = Count(compile_predicate(And((paging.view, paging.outside))), exact_before=exact_before)

    @property
    def parts(self) -> list[Window | Count]:
        parts: list[Window | Count] = [self.window, self.total]
        if self.beyond is not None:
            parts.append(self.beyond)
        return parts

    @property
    def stale(self) -> bool:
        return any(part.stale for part in self.parts)

    @stale.setter
    def stale(self, value: bool) -> None:
        for part in self.parts:
            part.stale = value

    def needs(self) -> int:
        return max(part.needs() for part in self.parts)

    def apply(self, event: ChangeEvent) -> bool:
        changed = False
        for part in self.parts:
            changed = part.apply(event) or changed
        return changed

    async def reload(self, reader: Reader) -> None:
        p, coll = self.paging, self.collection
        self.window.load(await reader.list(coll, p.bounded, p.order, self.window.limit, backward=p.backward))
        self.total.load(await reader.count(coll, p.view))
        if self.beyond is not None:
            assert p.outside is not None
            self.beyond.load(await reader.count(coll, And((p.view, p.outside))))

    async def fill(self, reader: Reader) -> None:
        # Only the page fills (counts never need a read but a whole one).
        if self.window.needs() == Needs.FILL:
            offset, limit = self.window.fill_request()
            rows = await reader.list(
                self.collection, self.paging.bounded, self.paging.order, limit, offset, backward=self.paging.backward
            )
            self.window.fill(rows, limit)

    def value(self) -> dict[str, Any]:
        p = self.paging
        beyond = self.beyond is not None and self.beyond.value() > 0
        return page_value(
            p.order, self.window.value(), backward=p.backward, count=p.count, beyond=beyond, total=self.total.value()
        )
