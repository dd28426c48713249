"""Channel store contract: one suite over every backend's store (memory, real Redis, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from tests.support.backends import fresh_database, service_url
from tidings.pubsub import Broker, MemoryBroker, broker_from_url
from tidings.pubsub.channel_store import ChannelStore, Entry, split
from tidings.pubsub.postgres_channels import table_prefix


class Backend:
    """A started broker and the stores of the "processes" a test makes on it."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.topic = f"tidings:test:{uuid.uuid4().hex}:channels"
        self.stores: list[ChannelStore] = []

    async def store(self, process: str, ttl: float = 15.0) -> ChannelStore:
        store = self.broker.channel_store(self.topic, process, ttl)
        await store.start()
        self.stores.append(store)
        return store


async def started(kind: str, tmp_path: Path) -> AsyncIterator[Backend]:
    if kind == "memory":
        broker: Broker = MemoryBroker()
    elif kind == "redis":
        broker = broker_from_url(service_url("TIDINGS_TEST_REDIS_URL", "Redis"))
    else:
        broker = broker_from_url(await fresh_database("postgresql", tmp_path))
    await broker.start()
    b = Backend(broker)
    yield b
    for store in b.stores:
        await store.close()
    await broker.close()


@pytest.fixture(params=["memory", "redis", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async for b in started(request.param, tmp_path):
        yield b


@pytest.fixture(params=["redis", "postgres"])
async def shared(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The backends whose stores several processes share."""
    async for b in started(request.param, tmp_path):
        yield b


def body(key: str, n: int) -> bytes:
    """A channel event's JSON as ``Channels`` encodes it (``m``: published at, in ms)."""
    return orjson.dumps({"k": key, "c": key, "t": "m", "d": n, "s": None, "o": None, "m": time.time() * 1000})


def seqs(messages: list[bytes]) -> list[int]:
    return [int(split(m)[0]) for m in messages]


async def test_events_are_numbered_per_channel_kept_and_published_in_order(backend: Backend) -> None:
    store = await backend.store("p1")
    ready = asyncio.Event()
    stream = backend.broker.subscribe(backend.topic, on_ready=ready.set)
    first = asyncio.ensure_future(anext(stream))  # type: ignore[arg-type]
    await asyncio.wait_for(ready.wait(), 5)
    numbered = [await store.publish_event("a", body("a", i), 2, 60.0) for i in range(3)]
    assert numbered == [1, 2, 3]
    assert await store.publish_event("b", body("b", 9), 2, 60.0) == 1  # each channel its own sequence
    received = [await asyncio.wait_for(first, 5)]
    received += [await asyncio.wait_for(anext(stream), 5) for _ in range(3)]  # type: ignore[arg-type]
    assert [(split(m)[0], orjson.loads(split(m)[1])["d"]) for m in received] == [
        (b"1", 0),
        (b"2", 1),
        (b"3", 2),
        (b"1", 9),
    ]
    await stream.aclose()  # type: ignore[attr-defined]


async def test_history_keeps_the_last_events_and_says_when_some_are_gone(backend: Backend) -> None:
    store = await backend.store("p1")
    for i in range(4):
        await store.publish_event("a", body("a", i), 2, 60.0)
    kept, complete = await store.history("a", 2, 60.0)
    assert (seqs(kept), complete) == ([3, 4], True)
    kept, complete = await store.history("a", 1, 60.0)  # 2 is no longer kept
    assert (seqs(kept), complete) == ([3, 4], False)
    assert await store.history("a", 4, 60.0) == ([], True)  # nothing after the head
    assert await store.history("never", 0, 60.0) == ([], True)
    assert orjson.loads(split(kept[0])[1])["d"] == 2


async def test_history_drops_events_older_than_keep_seconds(backend: Backend) -> None:
    store = await backend.store("p1")
    await store.publish_event("a", body("a", 0), 10, 0.2)
    assert seqs((await store.history("a", 0, 0.2))[0]) == [1]
    await asyncio.sleep(0.3)  # the time the event is kept, passing: what this test is about
    assert await store.history("a", 0, 0.2) == ([], False)
    await store.publish_event("a", body("a", 1), 10, 0.2)
    kept, complete = await store.history("a", 0, 0.2)
    assert (seqs(kept), complete) == ([2], False)


async def test_two_processes_number_one_sequence_and_share_its_history(shared: Backend) -> None:
    one, two = await shared.store("p1"), await shared.store("p2")
    numbered = [await (one, two)[i % 2].publish_event("a", body("a", i), 10, 60.0) for i in range(6)]
    numbered += await asyncio.gather(*(s.publish_event("a", body("a", 6), 10, 60.0) for s in (one, two) * 5))
    assert sorted(numbered) == list(range(1, 17))
    for store in (one, two):
        kept, complete = await store.history("a", 10, 60.0)
        assert (seqs(kept), complete) == ([11, 12, 13, 14, 15, 16], True)


async def test_presence_entries_are_shared_updated_and_removed(shared: Backend) -> None:
    one, two = await shared.store("p1"), await shared.store("p2")
    await one.put_entry("room", Entry("p1.1", "alice", {"tab": 1}))
    await two.put_entry("room", Entry("p2.1", None, None))
    await one.put_entry("room", Entry("p1.1", "alice", {"tab": 2}))
    loaded = sorted(await two.load("room"), key=lambda e: e.connection)  # in no promised order
    assert loaded == [Entry("p1.1", "alice", {"tab": 2}), Entry("p2.1", None, None)]
    await two.remove_entries("room", ["p1.1"])
    assert await one.load("room") == [Entry("p2.1", None, None)]
    assert await one.load("elsewhere") == []
    assert await one.dead({"p1", "p2"}) == set()


async def test_a_process_whose_heartbeat_stops_is_dead_and_its_entries_go(shared: Backend) -> None:
    survivor, doomed = await shared.store("p1", ttl=0.5), await shared.store("p9", ttl=0.5)
    await doomed.put_entry("room", Entry("p9.1", "bob", None))
    await survivor.put_entry("room", Entry("p1.1", "alice", None))
    assert await survivor.dead({"p9"}) == set()

    async def p9_is_dead() -> bool:
        await survivor.heartbeat(["room"])
        return await survivor.dead({"p1", "p9"}) == {"p9"}  # never itself

    async with asyncio.timeout(5):
        while not await p9_is_dead():
            await asyncio.sleep(0.05)
    assert await survivor.load("room") == [Entry("p1.1", "alice", None)]  # the dead one's entries removed


async def test_a_closed_process_is_dead_at_once(shared: Backend) -> None:
    one, two = await shared.store("p1"), await shared.store("p2")
    assert await one.dead({"p2"}) == set()
    await two.close()
    assert await one.dead({"p2"}) == {"p2"}


def test_table_names_are_plain_identifiers_and_distinct_per_topic() -> None:
    assert table_prefix("tidings_events") == "tidings_events"
    assert table_prefix("tidings:events:channels").startswith("tidings_events_channels_")
    assert table_prefix("a:b") != table_prefix("a_b")
    long = table_prefix("x" * 100)
    assert len(long) <= 40 and long != table_prefix("x" * 101)
    assert all(c.isalnum() or c == "_" for c in table_prefix('we"ird; DROP TABLE x'))
