"""Live connections and live aggregates kept from events equal a fresh query after every change,
and the SQL aggregate equals the figures computed from the rows (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from graphql import parse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.backends import fresh_database
from tests.test_live import apply_patch
from tests.test_live_window import COLLS, SCHEMA, TASK, WHERES, writes
from tidings.filters import MATCH_ALL, And, parse_filter
from tidings.realtime.aggregate_window import AggregateWindow
from tidings.realtime.connection_window import ConnectionWindow
from tidings.realtime.live import LiveExecutor, LiveGroup, LiveMember, LiveSource
from tidings.resolvers.aggregates import aggregate_spec, group_value, requested
from tidings.resolvers.connections import page_value, paging
from tidings.resolvers.keyset import encode_cursor
from tidings.store import Store

EXAMPLES = int(os.environ.get("LIVE_EXAMPLES", "20"))
BASE = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)

CONNECTION = parse(
    "query @live { c: tasksConnection { edges { cursor node { id title status priority assignedTo } } "
    "pageInfo { hasNextPage hasPreviousPage startCursor endCursor } totalCount } }"
)
AGGREGATE = parse(
    "query @live { a: tasksAggregate { groups { key { status assignedTo } count "
    "sum { priority } avg { priority } min { priority dueAt title } max { priority dueAt title } } } }"
)
ORDERS = [[], [("priority", True)], [("assigned_to", False), ("title", True)], [("due_at", False)]]


class _Sink:
    def __init__(self) -> None:
        self.payloads: list[str] = []

    def push(self, op_id: str, seq: int, payload: str) -> None:
        self.payloads.append(payload)

    def finish(self, op_id: str, errors: list[dict[str, Any]] | None = None) -> None:
        raise AssertionError(f"finished: {errors}")


def _due(n: int) -> dt.datetime | None:
    return None if n % 4 == 3 else BASE + dt.timedelta(days=n % 4)


async def _seed(store: Store, seeded: int) -> list[str]:
    ids: list[str] = []
    for i in range(seeded):
        record, _ = await store.create(
            TASK,
            {"title": f"s{i}", "status": "ab"[i % 2], "priority": i % 3, "due_at": _due(i)},
            account=None,
            actor=None,
        )
        ids.append(record["id"])
    return ids


async def _play(
    store: Store, source: LiveSource, document: Any, fresh: Any, ops: list[tuple[Any, ...]], ids: list[str]
) -> LiveGroup:
    """Start a live group of ``source``, apply ``ops`` (on rows ``ids`` and those they create); after
    each, the kept result, and the patched client's, equal ``fresh()``. Returns the group."""
    names = itertools.count()
    executor = LiveExecutor.build(SCHEMA._schema, document)
    assert not isinstance(executor, list)
    position = 0
    group = LiveGroup("k", [source], executor, store, lambda: position)
    sink = _Sink()
    member = LiveMember(sink, "1", group)
    group.members[id(member)] = member
    await group.settle()
    group.emit()
    group.first_message(member)
    client = orjson.loads(sink.payloads[-1])

    def render(value: Any) -> Any:
        out = executor.build_per_event_executor({source.key: value})
        out._relevant_sub_fields = {}
        result: Any = out.execute_operation(False)
        assert not result.errors, result.errors
        return {"data": result.data}

    assert client["data"] == render(await fresh())["data"]
    for op in ops:
        if op[0] == "create":
            _, status, priority, assigned, title = op
            n = next(names)
            record, event = await store.create(
                TASK,
                {
                    "title": f"{title}-{n}",
                    "status": status,
                    "priority": priority,
                    "assigned_to": assigned,
                    "due_at": _due(n),
                },
                account=None,
                actor=None,
            )
            ids.append(record["id"])
        elif not ids:
            continue
        elif op[0] == "update":
            _, which, values = op
            _, maybe = await store.update(
                TASK, ids[which % len(ids)], values, expected_version=None, guard=MATCH_ALL, actor=None
            )
            if maybe is None:
                continue
            event = maybe
        else:
            _, which = op
            _, [event] = await store.delete(TASK, ids.pop(which % len(ids)), guard=MATCH_ALL, actor=None)
        position = event.seq
        group.receive(event)
        if group.busy:
            assert group.task is not None
            await group.task
        assert group.rendered == render(await fresh()), op
        for payload in sink.payloads[1:]:
            message = orjson.loads(payload)
            assert message["revision"] == client["revision"] + 1
            client["revision"] = message["revision"]
            client["data"] = apply_patch(client["data"], message["patch"])
        del sink.payloads[1:]
        assert client["data"] == group.rendered["data"]
    return group


async def _fresh_store(url: str) -> Store:
    store = Store(url, COLLS)
    await store.start()
    async with store.engine.begin() as conn:
        await conn.execute(sa.delete(store.tables.by_collection["Task"]))
    return store


connections = st.tuples(
    st.sampled_from(WHERES),
    st.sampled_from(range(len(ORDERS))),
    st.integers(0, 4),  # page size
    st.booleans(),  # last (backward) instead of first
    st.integers(-1, 5),  # the cursor: that seeded row's place (after, or before when backward); -1: none
    st.integers(0, 6),  # rows there before the live query starts
)


async def _run_connection(url: str, shape: tuple[Any, ...], ops: list[tuple[Any, ...]]) -> None:
    where_input, order_index, size, backward, cursor_row, seeded = shape
    store = await _fresh_store(url)
    try:
        order = ORDERS[order_index]
        graphql_order = [
            {TASK.field_map[c].graphql_name if c in TASK.field_map else c: "DESC" if d else "ASC"} for c, d in order
        ]
        args: dict[str, Any] = {"where": where_input, "orderBy": graphql_order or None}
        args["last" if backward else "first"] = size
        ids = await _seed(store, seeded)
        if 0 <= cursor_row < seeded:
            # The cursor of a row that may be deleted later: its place stays.
            async with store.reader() as reader:
                rows = await reader.list(TASK, MATCH_ALL, order, 100)
            args["before" if backward else "after"] = encode_cursor(order or [("created_at", False)], rows[cursor_row])
        p = paging(TASK, args, MATCH_ALL, 50)
        source = LiveSource("c", TASK, ConnectionWindow(TASK, p, exact_before=True), p.view)

        async def fresh() -> Any:
            async with store.reader() as reader:
                rows = await reader.list(TASK, p.bounded, p.order, p.count + 1, backward=p.backward)
                beyond = p.outside is not None and bool(await reader.list(TASK, And((p.view, p.outside)), p.order, 1))
                total = await reader.count(TASK, p.view)
            return page_value(p.order, rows, backward=p.backward, count=p.count, beyond=beyond, total=total)

        await _play(store, source, CONNECTION, fresh, ops, ids)
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_live_connection_equals_a_fresh_page_after_every_change(backend: str, tmp_path: Path) -> None:
    url = asyncio.run(fresh_database(backend, tmp_path))

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(shape=connections, ops=writes)
    def check(shape: tuple[Any, ...], ops: list[tuple[Any, ...]]) -> None:
        asyncio.run(_run_connection(url, shape, ops))

    check()


GROUPINGS: list[list[str]] = [[], ["status"], ["status", "assignedTo"], ["assignedTo"]]
aggregates = st.tuples(st.sampled_from(WHERES), st.sampled_from(range(len(GROUPINGS))), st.integers(0, 6))


def _python_aggregate(rows: list[dict[str, Any]], group_by: list[str]) -> list[dict[str, Any]]:
    """The figures computed from the rows themselves: what the SQL must say."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[c] for c in group_by), []).append(row)
    if not group_by:
        groups.setdefault((), [])
    out = []
    for key in sorted(groups, key=lambda k: tuple((1, None) if v is None else (0, v) for v in k)):
        members = groups[key]

        def present(column: str, members: list[dict[str, Any]] = members) -> list[Any]:
            return [m[column] for m in members if m[column] is not None]

        priorities = present("priority")
        out.append(
            {
                "key": dict(zip(group_by, key, strict=True)),
                "count": len(members),
                "sum": {"priority": float(sum(priorities)) if priorities else None},
                "avg": {"priority": sum(priorities) / len(priorities) if priorities else None},
                "min": {c: min(present(c), default=None) for c in ("due_at", "priority", "title")},
                "max": {c: max(present(c), default=None) for c in ("due_at", "priority", "title")},
            }
        )
    return out


async def _run_aggregate(url: str, shape: tuple[Any, ...], ops: list[tuple[Any, ...]]) -> None:
    where_input, grouping, seeded = shape
    store = await _fresh_store(url)
    try:
        ids = await _seed(store, seeded)
        view = parse_filter(where_input, TASK.filter_fields)
        node = AGGREGATE.definitions[0].selection_set.selections[0]  # type: ignore[attr-defined]
        spec = aggregate_spec(
            TASK, [TASK.columns_by_graphql_name[g] for g in GROUPINGS[grouping]], requested(node, AGGREGATE)
        )
        kept = AggregateWindow(TASK, spec, view, exact_before=True, max_groups=100)
        source = LiveSource("a", TASK, kept, view)

        async def fresh() -> Any:
            async with store.reader() as reader:
                groups = await reader.aggregate(TASK, view, spec)
                rows = await reader.list(TASK, view, (), 1000)
            value = [group_value(spec, g) for g in groups]
            assert value == _python_aggregate(rows, list(spec.group_by))
            return {"groups": value}

        group = await _play(store, source, AGGREGATE, fresh, ops, ids)
        # Reads after the first are extremes read again (or a reload): never more than the changes.
        assert group.reads <= len(ops)
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_live_aggregate_equals_a_fresh_aggregate_and_the_rows_after_every_change(backend: str, tmp_path: Path) -> None:
    url = asyncio.run(fresh_database(backend, tmp_path))

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(shape=aggregates, ops=writes)
    def check(shape: tuple[Any, ...], ops: list[tuple[Any, ...]]) -> None:
        asyncio.run(_run_aggregate(url, shape, ops))

    check()
