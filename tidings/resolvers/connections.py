"""Relay cursor connections: ``tasksConnection(first, after, last, before, where, orderBy)`` with
``edges { cursor node }``, ``pageInfo`` and ``totalCount``, paged on keyset cursors (keyset.py).

No ``from __future__ import annotations``: the resolvers' annotations are the generated types.

Limit policy: ``first`` and ``last`` may each be at most ``--max-limit``; giving neither pages
``--max-limit`` rows with ``first`` semantics (``hasNextPage`` says whether more follow), so no
answer is ever cut silently. ``first`` with ``last`` together is BAD_USER_INPUT (the Relay spec
discourages it, and its meaning is rarely what a client wants).
"""

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import strawberry
from strawberry.types import Info

from tidings.auth.rules import Action
from tidings.errors import BadUserInput
from tidings.filters import And, Filter, parse_filter
from tidings.model.collection import Collection
from tidings.resolvers.context import DIRECT, Context
from tidings.resolvers.convert import order_keys
from tidings.resolvers.keyset import Place, after, before, decode_cursor, encode_cursor, not_after, not_before
from tidings.resolvers.relations import read_guard_for
from tidings.schema.types import CollectionTypes
from tidings.store.reads import CREATION_ORDER
from tidings.types import Record

__all__ = ["PageInfo", "Paging", "build_connection_field", "connection_field", "page_value", "paging"]


@strawberry.type(description="Where a page of a connection sits in the whole list (Relay's PageInfo).")
class PageInfo:
    has_next_page: bool
    has_previous_page: bool
    start_cursor: str | None
    end_cursor: str | None


def connection_field(coll: Collection) -> str:
    """The name of a collection's connection query field: ``tasksConnection``."""
    return f"{coll.plural}Connection"


@dataclasses.dataclass(frozen=True, slots=True)
class Paging:
    """A connection's arguments, checked: which rows, from which end, how many."""

    order: tuple[tuple[str, bool], ...]
    view: Filter  # read guard and where: the whole list (totalCount)
    bounded: Filter  # view and the cursors' bounds: the rows a page is taken from
    count: int
    backward: bool  # last: the page is taken from the end of the bounded rows
    outside: Filter | None  # the rows beyond the cursor the page is taken from (the other end's flag)


def paging(
    coll: Collection, args: Mapping[str, Any], guard: Filter, max_limit: int, *, guard_for: Any = None
) -> Paging:
    """``guard_for``: what the caller may read of each collection, for relation filters (parse_filter)."""
    first, last = args.get("first"), args.get("last")
    if first is not None and last is not None:
        raise BadUserInput("Give first or last, not both", field="last")
    for name, value in (("first", first), ("last", last)):
        if value is not None and not 0 <= value <= max_limit:
            raise BadUserInput(f"{name} must be between 0 and {max_limit}, got {value}", field=name)
    order = tuple(order_keys(args.get("orderBy"), coll)) or CREATION_ORDER
    view: Filter = And((guard, parse_filter(args.get("where"), coll.filter_fields, guard_for=guard_for)))
    bounds: list[Filter] = []
    places: dict[str, Place] = {}
    for name in ("after", "before"):
        cursor = args.get(name)
        if cursor is not None:
            places[name] = decode_cursor(str(cursor), order, coll, name)
    if "after" in places:
        bounds.append(after(coll, order, places["after"]))
    if "before" in places:
        bounds.append(before(coll, order, places["before"]))
    backward = last is not None
    outside: Filter | None = None
    if backward and "before" in places:
        outside = not_before(coll, order, places["before"])
    elif not backward and "after" in places:
        outside = not_after(coll, order, places["after"])
    count: int = last if last is not None else first if first is not None else max_limit
    return Paging(order, view, And((view, *bounds)) if bounds else view, count, backward, outside)


def page_value(
    order: Sequence[tuple[str, bool]],
    rows: Sequence[Record],
    *,
    backward: bool,
    count: int,
    beyond: bool,
    total: int | Callable[[], Awaitable[int]],
) -> dict[str, Any]:
    """The connection's value from up to ``count`` + 1 rows read from its end (the extra one says
    that more follow); ``beyond``: rows exist past the cursor the page was taken from."""
    more = len(rows) > count
    kept = list(rows[:count])
    if backward:
        kept.reverse()
    edges = [{"cursor": encode_cursor(order, row), "node": row} for row in kept]
    return {
        "edges": edges,
        "page_info": {
            "has_next_page": beyond if backward else more,
            "has_previous_page": more if backward else beyond,
            "start_cursor": edges[0]["cursor"] if edges else None,
            "end_cursor": edges[-1]["cursor"] if edges else None,
        },
        "total_count": total,
    }


def _total_count(root: Any, info: Info) -> int:
    """An int kept by a live connection, else read only now that it is selected (an awaitable:
    graphql-core awaits what a resolver returns)."""
    total = root["total_count"]
    return total if isinstance(total, int) else total()


def build_connection_field(t: CollectionTypes) -> Any:
    coll = t.collection
    Record, Where, OrderBy = t.record, t.where, t.order_by  # noqa: N806
    Edge = strawberry.type(  # noqa: N806
        type(f"{coll.name}Edge", (), {"__annotations__": {"cursor": str, "node": Record}}),
        description=f"One {coll.name} of a page, with its cursor.",
    )
    total = strawberry.field(_total_count, name="totalCount", metadata={DIRECT: True})
    Connection = strawberry.type(  # noqa: N806
        type(
            f"{coll.name}Connection",
            (),
            {"__annotations__": {"edges": list[Edge], "page_info": PageInfo}, "total_count": total},  # type: ignore[valid-type]
        ),
        description=f"A page of {coll.plural} (Relay's cursor connection); totalCount counts the whole list.",
    )

    async def get_page(
        root: Any,
        info: Info,
        first: int | None = None,
        after: str | None = None,
        last: int | None = None,
        before: str | None = None,
        where: Where | None = None,  # type: ignore[valid-type]
        orderBy: list[OrderBy] | None = None,  # type: ignore[valid-type]  # noqa: N803
    ) -> Connection:  # type: ignore[valid-type]
        ctx: Context = info.context
        guard = ctx.services.authorizer.guard(coll.name, ctx.principal, Action.READ)
        args = {"first": first, "after": after, "last": last, "before": before, "where": where, "orderBy": orderBy}
        p = paging(coll, args, guard, ctx.services.max_limit, guard_for=read_guard_for(ctx))
        reader = await ctx.reader()
        rows = await reader.list(coll, p.bounded, p.order, p.count + 1, backward=p.backward)
        beyond = p.outside is not None and bool(await reader.list(coll, And((p.view, p.outside)), p.order, 1))

        async def total() -> int:
            return await reader.count(coll, p.view)

        return page_value(p.order, rows, backward=p.backward, count=p.count, beyond=beyond, total=total)

    get_page.__name__ = get_page.__qualname__ = f"get_{coll.table_name}_connection"
    return strawberry.field(
        get_page,
        name=connection_field(coll),
        description=(
            f"{coll.plural} a page at a time on cursors (Relay connections): first/after forward, last/before "
            "backward, in orderBy's order (creation order by default, then id). A cursor is kept by a row's "
            "place, not an offset: rows written meanwhile never shift a page."
        ),
        metadata={DIRECT: True},
    )
