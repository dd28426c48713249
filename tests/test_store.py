"""Store contract: the same suite over SQLite and a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.support.backends import fresh_database
from tidings.errors import Conflict, NotFound
from tidings.events import Operation
from tidings.filters import MATCH_ALL, parse_filter
from tidings.model.collection import collections_from
from tidings.model.demo import COLLECTIONS
from tidings.realtime import doorbell
from tidings.store import Store

_BY_NAME = {c.name: c for c in collections_from(COLLECTIONS)}
TASK, MESSAGE = _BY_NAME["Task"], _BY_NAME["Message"]


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = await fresh_database(request.param, tmp_path)
    s = Store(url, [TASK, MESSAGE])
    await s.start()
    yield s
    await s.close()


async def test_create_update_delete_write_one_event_each(store: Store) -> None:
    due = dt.datetime(2026, 5, 1, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    record, created = await store.create(TASK, {"title": "a", "due_at": due, "tags": ["x"]}, account=None, actor="ann")
    assert record["status"] == "pending" and record["version"] == 1
    assert created.seq == 1 and created.operation is Operation.CREATED and created.actor == "ann"
    got = await store.get(TASK, record["id"])
    assert got is not None
    assert got["due_at"] == due and got["due_at"].tzinfo == dt.UTC
    assert got["tags"] == ["x"]
    updated, event = await store.update(
        TASK, record["id"], {"priority": 4, "title": "a"}, expected_version=1, guard=MATCH_ALL, actor="bob"
    )
    assert event is not None and event.seq == 2
    assert event.changed_fields == ("priority",) and event.previous == {"priority": 0}
    assert updated["version"] == 2
    same, nothing = await store.update(
        TASK, record["id"], {"priority": 4}, expected_version=None, guard=MATCH_ALL, actor=None
    )
    assert nothing is None and same["version"] == 2
    with pytest.raises(Conflict) as info:
        await store.update(TASK, record["id"], {"priority": 5}, expected_version=1, guard=MATCH_ALL, actor=None)
    assert info.value.extensions == {"code": "CONFLICT", "currentVersion": 2}
    deleted, [gone] = await store.delete(TASK, record["id"], guard=MATCH_ALL, actor=None)
    assert gone.seq == 3 and deleted["priority"] == 4
    with pytest.raises(NotFound):
        await store.delete(TASK, record["id"], guard=MATCH_ALL, actor=None)
    log = await store.read_events(0)
    assert [(e.seq, e.operation) for e in log] == [
        (1, Operation.CREATED),
        (2, Operation.UPDATED),
        (3, Operation.DELETED),
    ]
    assert log[0].record["due_at"] == due
    assert await store.last_seq() == 3
    # What the store hands the dispatcher is what the log holds, and it crosses the broker intact.
    collections = {c.name: c for c in (TASK, MESSAGE)}
    for live, logged in zip((created, event, gone), log, strict=True):
        assert live == logged
        assert doorbell.decode(doorbell.encode(live), collections) == (live.seq, live)


async def test_guard_hides_records_from_reads_and_writes(store: Store) -> None:
    mine, _ = await store.create(TASK, {"title": "mine"}, account="acme", actor=None)
    await store.create(TASK, {"title": "theirs"}, account="globex", actor=None)
    guard = parse_filter({"id": {"isNull": False}}, TASK.filter_fields)
    from tidings.filters import And, Compare, FieldKind, Op

    acme = And((guard, Compare("account", FieldKind.STRING, Op.EQ, "acme")))
    async with store.reader() as reader:
        rows = await reader.list(TASK, acme)
    assert [r["title"] for r in rows] == ["mine"]
    theirs = (await store.read_events(0))[1].record_id
    with pytest.raises(NotFound):
        await store.update(TASK, theirs, {"title": "hijack"}, expected_version=None, guard=acme, actor=None)
    assert (await store.get(TASK, theirs))["title"] == "theirs"  # type: ignore[index]
    assert (await store.get(TASK, mine["id"], acme)) is not None


async def test_concurrent_writes_get_gapless_sequence_in_commit_order(store: Store) -> None:
    await asyncio.gather(
        *(
            store.create(MESSAGE, {"room": "r", "author": "a", "body": str(i)}, account=None, actor=None)
            for i in range(40)
        )
    )
    log = await store.read_events(0)
    assert [e.seq for e in log] == list(range(1, 41))
    assert sorted(e.record["body"] for e in log) == sorted(str(i) for i in range(40))


async def test_reader_snapshot_reports_the_seq_it_reflects(store: Store) -> None:
    await store.create(TASK, {"title": "one"}, account=None, actor=None)
    async with store.reader() as reader:
        before = await reader.list(TASK, MATCH_ALL)
        await store.create(TASK, {"title": "two"}, account=None, actor=None)
        seq = await reader.seq()
        again = await reader.list(TASK, MATCH_ALL)
    assert len(before) == len(again) == 1
    assert seq == 1
    # A first statement that finds nothing: the position is read on its own, still the snapshot's.
    async with store.reader() as reader:
        assert await reader.get(TASK, "missing") is None
        await store.create(TASK, {"title": "three"}, account=None, actor=None)
        assert await reader.count(TASK, MATCH_ALL) == 2
        assert await reader.seq() == 2
    # A count first: its one row carries the position.
    async with store.reader() as reader:
        assert await reader.count(TASK, MATCH_ALL) == 3
        await store.create(TASK, {"title": "four"}, account=None, actor=None)
        assert [r["title"] for r in await reader.list(TASK, MATCH_ALL, [("title", False)])] == ["one", "three", "two"]
        assert await reader.seq() == 3


async def test_prune_keeps_the_newest_and_records_the_horizon(store: Store) -> None:
    for i in range(10):
        await store.create(MESSAGE, {"room": "r", "author": "a", "body": str(i)}, account=None, actor=None)
    assert await store.prune(keep_last=3) == 7
    assert await store.pruned_through() == 7
    assert [e.seq for e in await store.read_events(0)] == [8, 9, 10]
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    assert await store.prune(keep_after=future) == 10
    assert await store.read_events(0) == []
    assert await store.last_seq() == 10  # an emptied log still says where it stands
    _, event = await store.create(MESSAGE, {"room": "r", "author": "a", "body": "after"}, account=None, actor=None)
    assert event.seq == 11


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_inserts_on_the_driver_store_what_sqlalchemy_stores(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes bind INSERT values with the columns' own processors and run them on the driver
    (pysqlite's cursor, asyncpg's connection): the stored rows (record and event log) are the
    ones SQLAlchemy's execution stores, column for column, in the database's own text."""
    import sqlite3

    import asyncpg

    from tidings.store import store as store_module
    from tidings.store.insert import Insert

    when = dt.datetime(2026, 11, 23, 13, 45, 6, 789012, tzinfo=dt.UTC)
    monkeypatch.setattr(store_module, "new_id", lambda: "0123456789abcdef0123456789abcdef")
    monkeypatch.setattr(store_module, "utcnow", lambda: when)
    values = {
        "title": 'déjà \u2603 "quoted"',
        "status": "pending",
        "priority": 2**40,
        "tags": ["a", {"b": [1.5, None, True]}],
        "due_at": dt.datetime(2027, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
    }
    rows: dict[str, list[tuple[object, ...]]] = {}
    for name in ("driver", "sqlalchemy"):
        if name == "sqlalchemy":  # the reference: every INSERT through SQLAlchemy's execution

            def reference(self: Insert, conn: sa.Connection, v: Any) -> Any:
                result = conn.execute(self.statement, v)
                return result.scalar_one() if self.returns else None if self.asyncpg else result.lastrowid

            monkeypatch.setattr(Insert, "execute", reference)
        (tmp_path / name).mkdir()
        url = await fresh_database(kind, tmp_path / name)
        store = Store(url, list(_BY_NAME.values()))
        await store.start()
        try:
            await store.create(_BY_NAME["Task"], values, account="acme", actor="alice")
        finally:
            await store.close()
        tables = ("tasks", "tidings_events")
        if kind == "sqlite":
            with sqlite3.connect(tmp_path / name / "store.db") as db:
                rows[name] = [row for t in tables for row in db.execute(f"SELECT * FROM {t}").fetchall()]
        else:
            db = await asyncpg.connect("postgresql://" + url.split("://", 1)[1])
            try:  # each row as PostgreSQL's own text of it
                rows[name] = [tuple(r) for t in tables for r in await db.fetch(f"SELECT x::text FROM {t} x")]
            finally:
                await db.close()
    assert len(rows["driver"]) == 2
    assert rows["driver"] == rows["sqlalchemy"]


async def test_postgresql_write_transactions_end_on_every_path(tmp_path: Path) -> None:
    """The store ends its PostgreSQL write transactions itself: after a failed write, a failed
    batch and its kept connection killed, no connection is left in a transaction, no refused
    write is stored, and writes go on (the dead connection's BEGIN fails: the write gets another)."""
    import asyncpg

    url = await fresh_database("postgresql", tmp_path)
    name = url.rsplit("/", 1)[1]
    store = Store(url, [TASK, MESSAGE])
    await store.start()
    admin = await asyncpg.connect("postgresql://" + url.split("://", 1)[1])
    in_transaction = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'"
    try:
        await store.create(TASK, {"title": "first"}, account=None, actor=None)
        with pytest.raises(sa.exc.IntegrityError):  # alone in its transaction: rolled back
            await store.create(TASK, {"title": None}, account=None, actor=None)
        burst = await asyncio.gather(
            store.create(TASK, {"title": None}, account=None, actor=None),
            store.create(TASK, {"title": "second"}, account=None, actor=None),
            return_exceptions=True,
        )
        assert isinstance(burst[0], sa.exc.IntegrityError) and not isinstance(burst[1], BaseException)
        assert await admin.fetchval(in_transaction, name) == 0
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        assert killed >= 1
        for i in range(3):
            await store.create(TASK, {"title": f"after {i}"}, account=None, actor=None)
        stored = {r["id"]: r["title"] for r in await admin.fetch("SELECT id, title FROM tasks")}
        assert sorted(stored.values()) == ["after 0", "after 1", "after 2", "first", "second"]
        # One event per stored record, none for a refused write.
        assert sorted(r["record_id"] for r in await admin.fetch("SELECT record_id FROM tidings_events")) == sorted(
            stored
        )
        assert await admin.fetchval(in_transaction, name) == 0
    finally:
        await admin.close()
        await store.close()
