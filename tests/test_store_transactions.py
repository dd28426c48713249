"""The store's transactions (several write bodies as one) on SQLite and PostgreSQL, amid group commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.backends import fresh_database
from tidings.errors import NotFound
from tidings.filters import MATCH_ALL
from tidings.model.collection import collections_from
from tidings.model.demo import COLLECTIONS
from tidings.realtime import doorbell
from tidings.store import Store

TASK = next(c for c in collections_from(COLLECTIONS) if c.name == "Task")


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(await fresh_database(request.param, tmp_path), [TASK])
    await s.start()
    yield s
    await s.close()


def creates(store: Store, *titles: str) -> list[Any]:
    return [store.create_body(TASK, {"title": t}, account=None, actor="ann")[1] for t in titles]


async def test_transactions_commit_whole_or_not_at_all_beside_lone_writes(store: Store) -> None:
    existing, _ = await store.create(TASK, {"title": "old"}, account=None, actor=None)
    move = store.update_body(TASK, existing["id"], {"priority": 9}, expected_version=1, guard=MATCH_ALL, actor=None)
    doomed = [
        *creates(store, "never"),
        store.update_body(TASK, "missing", {"priority": 1}, expected_version=None, guard=MATCH_ALL, actor=None),
    ]
    # Arriving together, they share group commits: the failing transaction rolls back alone.
    lone = [store.create(TASK, {"title": f"lone{i}"}, account=None, actor=None) for i in range(6)]
    results = await asyncio.gather(
        *lone[:3],
        store.transaction([*creates(store, "t1", "t2"), move]),
        store.transaction(doomed),
        *lone[3:],
        return_exceptions=True,
    )
    assert isinstance(results[4], NotFound)
    assert not any(isinstance(r, Exception) for i, r in enumerate(results) if i != 4), results
    committed = results[3]
    seqs = [event.seq for event in committed[:2]] + [committed[2][1].seq]
    assert seqs == list(range(seqs[0], seqs[0] + 3))  # consecutive, in the order written
    log = await store.read_events(0)
    assert len(log) == 1 + 6 + 3
    assert "never" not in {e.record.get("title") for e in log}
    async with store.reader() as reader:
        titles = sorted(r["title"] for r in await reader.list(TASK, MATCH_ALL, [], 100, 0))
    assert titles == sorted(["old", "t1", "t2", *(f"lone{i}" for i in range(6))])


async def test_one_doorbell_carries_a_transactions_events_in_order(store: Store) -> None:
    events = await store.transaction(creates(store, "a", "b", "c"))
    collections = {TASK.name: TASK}
    assert doorbell.decode_all(doorbell.encode_batch(events), collections) == (events[-1].seq, events)
    assert doorbell.decode_all(doorbell.encode_batch(events[:1]), collections) == (events[0].seq, events[:1])
    # A version that reads one event per doorbell still learns the last seq, and reads the log for the rest.
    assert doorbell.decode(doorbell.encode_batch(events), collections) == (events[-1].seq, None)
