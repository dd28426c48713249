"""Group commit: concurrent writes share a transaction, each still all-or-nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.backends import fresh_database, service_url
from tidings.errors import Conflict, Forbidden, NotFound
from tidings.events import ChangeEvent, Operation
from tidings.filters import MATCH_ALL
from tidings.model.collection import collections_from
from tidings.model.demo import COLLECTIONS
from tidings.store import Store
from tidings.store.writers import PostgresWriter, SqliteWriter
from tidings.types import Record

COLLECTIONS_ = collections_from(COLLECTIONS)
TASK = next(c for c in COLLECTIONS_ if c.name == "Task")
SEEDED = 4

# One write of a concurrent burst; seeded records are addressed by index, "ok" kinds must be acknowledged.
OPS = st.one_of(
    st.tuples(st.just("create"), st.integers(0, 99)),
    st.tuples(st.just("create_null_title"), st.just(0)),  # NOT NULL refused by SQLite inside the transaction
    st.tuples(st.just("create_unencodable"), st.just(0)),  # its row inserted, then its event row fails
    st.tuples(st.just("update"), st.integers(0, SEEDED - 1)),
    st.tuples(st.just("update_wrong_version"), st.integers(0, SEEDED - 1)),  # CONFLICT
    st.tuples(st.just("update_refused"), st.integers(0, SEEDED - 1)),  # a rule's check raises FORBIDDEN
    st.tuples(st.just("update_missing"), st.just(0)),  # NOT_FOUND
    st.tuples(st.just("delete"), st.integers(0, SEEDED - 1)),  # NOT_FOUND when another delete came first
)


def refuse(record: Record, previous: Record) -> None:
    raise Forbidden("refused by a rule")


async def run_burst(store: Store, ops: list[tuple[str, int]]) -> None:
    seeded = [(await store.create(TASK, {"title": f"seed {i}"}, account=None, actor=None))[0] for i in range(SEEDED)]
    commits = 0

    def count(conn: Any) -> None:
        nonlocal commits
        commits += 1

    # On a SQLite file writes commit on the writer thread's engine; on PostgreSQL the store ends its
    # transactions itself (BEGIN with the advisory lock in one message): each is one PostgresWriter.commit.
    writer: Any = store.writer
    engine = writer.engine if isinstance(writer, SqliteWriter) else store.engine.sync_engine
    sa.event.listen(engine, "commit", count)
    pg_commit = getattr(writer, "commit", None)

    async def counted(*args: Any) -> None:
        count(None)
        assert pg_commit is not None
        await pg_commit(*args)

    if isinstance(writer, PostgresWriter):
        writer.commit = counted

    async def one(i: int, kind: str, n: int) -> ChangeEvent | None:
        write: Callable[[], Awaitable[tuple[Record, ChangeEvent | None]]]
        if kind == "create":
            write = lambda: store.create(TASK, {"title": f"t{n}", "priority": n}, account=None, actor=None)  # noqa: E731
        elif kind == "create_null_title":
            write = lambda: store.create(TASK, {"title": None}, account=None, actor=None)  # noqa: E731
        elif kind == "create_unencodable":
            # Bytes go into the TEXT column, but not into the event's JSON: the write fails after its INSERT.
            write = lambda: store.create(TASK, {"title": b"\xff"}, account=None, actor=None)  # noqa: E731
        elif kind in ("update", "update_wrong_version", "update_refused"):
            expected = 10_000 if kind == "update_wrong_version" else None
            check = refuse if kind == "update_refused" else None
            write = lambda: store.update(  # noqa: E731
                TASK,
                seeded[n]["id"],
                {"priority": 1 + i},  # never the seeded 0 nor another update's value: always a change
                expected_version=expected,
                guard=MATCH_ALL,
                actor=None,
                check=check,
            )
        elif kind == "update_missing":
            write = lambda: store.update(  # noqa: E731
                TASK, "missing", {"priority": 1}, expected_version=None, guard=MATCH_ALL, actor=None
            )
        else:
            write = lambda: store.delete(TASK, seeded[n]["id"], guard=MATCH_ALL, actor=None)  # type: ignore[assignment,return-value]  # noqa: E731
        _record, written = await write()
        event = written[0] if isinstance(written, list) else written  # a delete: its own event first
        if event is not None:
            # Acknowledged only once committed: another connection sees it now.
            seen = await store.read_events(event.seq - 1, event.seq)
            assert [e.seq for e in seen] == [event.seq]
        return event

    burst = asyncio.gather(*(one(i, k, n) for i, (k, n) in enumerate(ops)), return_exceptions=True)
    results = await asyncio.wait_for(burst, 30)
    sa.event.remove(engine, "commit", count)

    acked: list[ChangeEvent] = []
    for (kind, _n), result in zip(ops, results, strict=True):
        if kind == "create_null_title":
            assert isinstance(result, sa.exc.IntegrityError), result
        elif kind == "create_unencodable":
            assert isinstance(result, sa.exc.StatementError), result
        elif kind == "update_wrong_version":
            assert isinstance(result, (Conflict, NotFound)), result  # NOT_FOUND once a delete won
        elif kind == "update_refused":
            assert isinstance(result, (Forbidden, NotFound)), result
        elif kind == "update_missing":
            assert isinstance(result, NotFound), result
        elif kind == "delete" or kind == "update":
            assert isinstance(result, (ChangeEvent, NotFound)) or result is None, result
        else:
            assert isinstance(result, ChangeEvent), result
        if isinstance(result, ChangeEvent):
            acked.append(result)
    # Writes queued while a transaction runs share the next one (a burst this size always queues some).
    assert commits < len(ops), f"{len(ops)} concurrent writes took {commits} transactions"

    # Every acknowledged write is in the log exactly once, under its own seq, and nothing else is.
    log = await store.read_events(SEEDED)
    assert [e.seq for e in log] == sorted(e.seq for e in acked)
    assert len({e.seq for e in acked}) == len(acked)
    by_seq = {e.seq: e for e in acked}
    for e in log:
        assert (e.operation, e.record_id, e.record.get("version")) == (
            by_seq[e.seq].operation,
            by_seq[e.seq].record_id,
            by_seq[e.seq].record.get("version"),
        )
    # Commit order is seq order: replaying the log in seq order gives the table.
    replay: dict[str, int] = {r["id"]: 1 for r in seeded}
    for e in log:
        if e.operation is Operation.DELETED:
            assert e.record_id in replay
            del replay[e.record_id]
        else:
            assert e.record["version"] == replay.get(e.record_id, 0) + 1
            replay[e.record_id] = e.record["version"]
    async with store.reader() as reader:
        rows = await reader.list(TASK, MATCH_ALL)
    assert {r["id"]: r["version"] for r in rows} == replay


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=4, max_size=24))
def test_concurrent_writes_commit_together_each_all_or_nothing(kind: str, ops: list[tuple[str, int]]) -> None:
    if kind == "postgresql":
        service_url("TIDINGS_TEST_PG_URL", "PostgreSQL")  # skips (or fails under CI) without it

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            store = Store(await fresh_database(kind, Path(tmp)), COLLECTIONS_)
            await store.start()
            try:
                await run_burst(store, ops)
            finally:
                await store.close()

    asyncio.run(main())
