"""Live query windows kept from events equal a fresh query after every change (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
from graphql import parse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.backends import fresh_database
from tests.test_live import apply_patch
from tidings.engine.build import build_schema
from tidings.filters import MATCH_ALL, compile_predicate, parse_filter
from tidings.model.collection import collections_from
from tidings.model.demo import COLLECTIONS
from tidings.realtime.live import LiveExecutor, LiveGroup, LiveMember, LiveSource
from tidings.realtime.patch import diff
from tidings.realtime.window import Count, Window, sort_key
from tidings.store import Store

EXAMPLES = int(os.environ.get("LIVE_EXAMPLES", "25"))  # more for a long local run
COLLS = collections_from(COLLECTIONS)
TASK = next(c for c in COLLS if c.name == "Task")
SCHEMA, _ = build_schema(COLLS)
DOCUMENT = parse("query @live { tasks { id title status priority assignedTo version } n: tasksCount }")

WHERES: list[dict[str, Any] | None] = [
    None,
    {"status": {"eq": "a"}},
    {"priority": {"gte": 1}},
    {"assignedTo": {"isNull": False}},
    {"OR": [{"status": {"eq": "b"}}, {"priority": {"lt": 1}}]},
    {"version": {"gte": 2}},
]
COLUMNS = ["priority", "assigned_to", "title", "status", "version", "updated_at", "created_at"]

writes = st.lists(
    st.one_of(
        st.tuples(
            st.just("create"),
            st.sampled_from(["a", "b"]),
            st.integers(0, 3),
            st.sampled_from([None, "x", "y"]),
            st.sampled_from(["t1", "t2", "t3"]),
        ),
        st.tuples(
            st.just("update"),
            st.integers(0, 50),
            st.fixed_dictionaries(
                {},
                optional={
                    "status": st.sampled_from(["a", "b"]),
                    "priority": st.integers(0, 3),
                    "assigned_to": st.sampled_from([None, "x", "y"]),
                },
            ),
        ),
        st.tuples(st.just("delete"), st.integers(0, 50)),
    ),
    min_size=1,
    max_size=14,
)
windows = st.tuples(
    st.sampled_from(WHERES),
    st.lists(st.tuples(st.sampled_from(COLUMNS), st.booleans()), max_size=2, unique_by=lambda o: o[0]),
    st.integers(0, 4),
    st.integers(0, 3),
    st.integers(0, 4),  # rows there before the live query starts
)


class _Sink:
    def __init__(self) -> None:
        self.payloads: list[str] = []

    def push(self, op_id: str, seq: int, payload: str) -> None:
        self.payloads.append(payload)

    def finish(self, op_id: str, errors: list[dict[str, Any]] | None = None) -> None:
        raise AssertionError(f"finished: {errors}")


async def _run(url: str, window: tuple[Any, ...], ops: list[tuple[Any, ...]]) -> None:
    where_input, order, limit, offset, seeded = window
    store = Store(url, COLLS)
    await store.start()
    try:
        async with store.engine.begin() as conn:
            await conn.execute(sa.delete(store.tables.by_collection["Task"]))
        names = itertools.count()
        ids: list[str] = []
        for i in range(seeded):
            record, _ = await store.create(
                TASK, {"title": f"s{i}", "status": "ab"[i % 2], "priority": i % 3}, account=None, actor=None
            )
            ids.append(record["id"])
        where = parse_filter(where_input, TASK.filter_fields)
        exact = "updated_at" not in [c for c, _ in order]
        sources = [
            LiveSource(
                "tasks",
                TASK,
                Window(order, offset, limit, compile_predicate(where), exact_before=exact),
                where,
                list(order),
            ),
            LiveSource("n", TASK, Count(compile_predicate(where)), where),
        ]
        executor = LiveExecutor.build(SCHEMA._schema, DOCUMENT)
        assert not isinstance(executor, list)
        position = 0
        group = LiveGroup("k", sources, executor, store, lambda: position)
        sink = _Sink()
        member = LiveMember(sink, "1", group)
        group.members[id(member)] = member
        await group.settle()
        group.emit()
        group.first_message(member)
        client = orjson.loads(sink.payloads[-1])
        assert client["revision"] == 1

        async def fresh() -> dict[str, Any]:
            async with store.reader() as reader:
                rows = await reader.list(TASK, where, order, limit, offset)
                count = await reader.count(TASK, where)
            out = executor.build_per_event_executor({"tasks": rows, "n": count})
            out._relevant_sub_fields = {}
            result: Any = out.execute_operation(False)
            return {"data": result.data}

        assert client["data"] == (await fresh())["data"]
        for op in ops:
            if op[0] == "create":
                _, status, priority, assigned, title = op
                record, event = await store.create(
                    TASK,
                    {
                        "title": f"{title}-{next(names)}",
                        "status": status,
                        "priority": priority,
                        "assigned_to": assigned,
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
            expected = await fresh()
            assert group.rendered == expected
            for payload in sink.payloads[1:]:
                message = orjson.loads(payload)
                assert message["revision"] == client["revision"] + 1
                client["revision"] = message["revision"]
                client["data"] = apply_patch(client["data"], message["patch"])
                assert int(message["extensions"]["seq"]) <= position
            del sink.payloads[1:]
            assert client["data"] == expected["data"], (window, ops)
    finally:
        await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kept_window_and_count_equal_a_fresh_query_after_every_change(backend: str, tmp_path: Path) -> None:
    url = asyncio.run(fresh_database(backend, tmp_path))

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(window=windows, ops=writes)
    def check(window: tuple[Any, ...], ops: list[tuple[Any, ...]]) -> None:
        asyncio.run(_run(url, window, ops))

    check()


def test_patch_turns_old_into_new() -> None:
    old = {"tasks": [{"id": "1", "p": 1}, {"id": "2", "p": 2}, {"id": "3", "p": 3}], "n": 3}
    new = {"tasks": [{"id": "4", "p": 0}, {"id": "1", "p": 1}, {"id": "3", "p": True}], "n": 3}
    ops = diff(old, new)
    assert ops == [
        {"op": "add", "path": "/tasks/0", "value": {"id": "4", "p": 0}},
        {"op": "remove", "path": "/tasks/2"},
        {"op": "replace", "path": "/tasks/2/p", "value": True},
    ]
    assert apply_patch(old, ops) == new


async def test_list_order_is_code_point_order_whatever_the_database_collation(tmp_path: Path) -> None:
    """On a PostgreSQL database with a linguistic collation, queries sort strings as live windows do."""
    base = os.environ.get("TIDINGS_TEST_PG_URL")
    if not base:
        await fresh_database("postgresql", tmp_path)  # skips, or fails under CI
        return
    name = "t_icu_" + os.urandom(6).hex()
    admin = sa_async.create_async_engine(base, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(
            sa.text(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'")
        )
    await admin.dispose()
    store = Store(base.rsplit("/", 1)[0] + "/" + name, COLLS)
    await store.start()
    try:
        for title in ["b", "B", "a", "A", "_x", "é", "e", "Z"]:
            await store.create(TASK, {"title": title}, account=None, actor=None)
        for descending in (False, True):
            order = [("title", descending)]
            async with store.reader() as reader:
                rows = await reader.list(TASK, MATCH_ALL, order, 20, 0)
            assert [r["title"] for r in rows] == [r["title"] for r in sorted(rows, key=sort_key(order))]
            assert [r["title"] for r in rows][:2] == (["é", "e"] if descending else ["A", "B"])
    finally:
        await store.close()
