"""Reconnect storms: resuming subscribers share log reads and renders, queue for the database, and go live exactly."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from tests.support.servers import Server, gql_post, subscribed, until, wait_subscribers
from tests.support.wsclient import WS
from tests.test_resume import SUB, events_of, post_many
from tidings.errors import CursorExpired
from tidings.events import ChangeEvent, Operation
from tidings.realtime.group import Subscriber
from tidings.realtime.replay import Replayer
from tidings.schema.inputs import Match


def count_reads(server: Server) -> dict[str, int]:
    """Count the event-log reads the server makes from now on."""
    store = server.tidings.store
    counts = {"reads": 0}
    read_events = store.read_events

    async def counted(*args: Any, **kw: Any) -> list[ChangeEvent]:
        counts["reads"] += 1
        return await read_events(*args, **kw)

    store.read_events = counted
    return counts


async def head(http: httpx.AsyncClient) -> int:
    return int((await gql_post(http, "{ messages(limit: 1) { id } }"))["extensions"]["seq"])


async def test_storm_of_resumes_reads_each_page_once_and_goes_live_exactly(
    server: Server, http: httpx.AsyncClient
) -> None:
    server.tidings.dispatcher.replayer.page_size = 50
    server.tidings.dispatcher.replay_page = 50
    base = await head(http)
    await post_many(http, [("r2" if i % 5 == 0 else "r1", f"m{i}") for i in range(200)])
    log = server.call(server.tidings.store.read_events(base, None, 5000))
    positions = [base, base + 20, base + 75, base + 130]  # 200 subscribers from 4 nearby positions
    reads = count_reads(server)
    conns = [await WS.open(server.ws_url) for _ in range(20)]
    for conn in conns:
        await conn.init()
    subs = [(conns[i % 20], str(i), positions[i % 4]) for i in range(200)]
    await asyncio.gather(*(ws.subscribe(op, SUB, {"after": str(after)}) for ws, op, after in subs))
    # A plain query during the storm is answered.
    answered = await gql_post(http, "{ messages(limit: 1) { id } }")
    assert "errors" not in answered and len(answered["data"]["messages"]) == 1
    got: dict[tuple[int, str], list[tuple[int, str]]] = {(id(ws), op): [] for ws, op, _ in subs}
    expected = {
        after: [(e.seq, e.record["body"]) for e in log if e.seq > after and e.record["room"] == "r1"]
        for after in positions
    }

    async def drain(ws: WS, total: int) -> None:
        for _ in range(total):
            message = await ws.recv()
            assert message["type"] == "next", message
            got[(id(ws), message["id"])].extend(events_of([message]))

    await asyncio.gather(*(drain(ws, sum(len(expected[after]) for w, _, after in subs if w is ws)) for ws in conns))
    for ws, op, after in subs:
        assert got[(id(ws), op)] == expected[after]
    await wait_subscribers(server, 200, exact=True)
    # 200 subscribers x 2-4 pages each would be ~600 reads; shared, each page is read about once.
    assert reads["reads"] <= 10, reads
    assert len(server.tidings.dispatcher.groups) == 1  # resuming from different seqs: still one group
    assert server.tidings.dispatcher.replayer.renders <= len(expected[base]) + 50
    await post_many(http, [("r1", "live")])
    for ws in conns:
        live = [await ws.recv() for _ in range(10)]
        assert {b for _, b in events_of(live)} == {"live"}
        assert await ws.no_message(0.05)
        await ws.close()


async def test_live_event_during_a_shared_replay_arrives_once_after_it(server: Server, http: httpx.AsyncClient) -> None:
    base = await head(http)
    await post_many(http, [("r1", f"old{i}") for i in range(30)], concurrency=1)
    store = server.tidings.store
    read_events = store.read_events
    reading = threading.Event()
    gate = asyncio.Event()  # waited on by the server's loop, set through call_soon_threadsafe

    async def held(*args: Any, **kw: Any) -> list[ChangeEvent]:
        reading.set()
        await gate.wait()
        return await read_events(*args, **kw)

    store.read_events = held
    a, b = await WS.open(server.ws_url), await WS.open(server.ws_url)
    await a.init()
    await b.init()
    await a.subscribe("1", SUB, {"after": str(base)})
    await b.subscribe("1", SUB, {"after": str(base + 10)})
    assert await asyncio.to_thread(reading.wait, 5)
    await wait_subscribers(server, 2, exact=True)
    # Both replays wait for the page being read; a live event is dispatched meanwhile.
    dispatcher = server.tidings.dispatcher
    position = dispatcher.position
    await post_many(http, [("r1", "live")])
    await until(lambda: dispatcher.position > position)
    server.server_loop.call_soon_threadsafe(gate.set)
    got_a = events_of([await a.recv() for _ in range(31)])
    got_b = events_of([await b.recv() for _ in range(21)])
    assert got_a[-1][1] == got_b[-1][1] == "live"
    assert [body for _, body in got_a[:-1]] == [f"old{i}" for i in range(30)]
    assert [body for _, body in got_b[:-1]] == [f"old{i}" for i in range(10, 30)]
    assert [s for s, _ in got_a] == list(range(base + 1, base + 32))
    assert await a.no_message() and await b.no_message()
    assert len(dispatcher.groups) == 1
    await a.close()
    await b.close()


# -- the Replayer alone, with a fake log and a fake group --------------------------------


class FakeLog:
    """``read_events``/``pruned_through`` over seqs 1..head; counts reads; a read can be held."""

    def __init__(self, head: int, holes: frozenset[int] = frozenset()) -> None:
        self.head = head
        self.holes = holes
        self.reads: list[tuple[int, int | None]] = []
        self.pruned = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.most_in_flight = 0

    async def read_events(self, after: int, upto: int | None = None, limit: int = 1000) -> list[ChangeEvent]:
        self.reads.append((after, upto))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            await asyncio.sleep(0)
        finally:
            self.in_flight -= 1
        top = min(self.head, upto if upto is not None else self.head)
        return [event(seq) for seq in range(after + 1, top + 1) if seq not in self.holes][:limit]

    async def pruned_through(self) -> int:
        return self.pruned


def event(seq: int) -> ChangeEvent:
    return ChangeEvent(
        seq=seq,
        collection="Message",
        operation=Operation.CREATED,
        record_id=f"id{seq}",
        account=None,
        record={"id": f"id{seq}", "room": "r1" if seq % 3 else "r2"},
        previous={},
        changed_fields=(),
        timestamp=None,  # type: ignore[arg-type]
        actor=None,
    )


class FakeGroup:
    related = None  # follows no relation: matched and rendered synchronously

    def __init__(self) -> None:
        self.members: dict[int, Subscriber] = {}
        self.rendered: list[int] = []

    def match(self, ev: ChangeEvent) -> Match | None:
        return Match.ENTERED if ev.record["room"] == "r1" else None

    def render(self, ev: ChangeEvent, match: Match) -> str:
        self.rendered.append(ev.seq)
        return f"p{ev.seq}"


class ListSink:
    def __init__(self) -> None:
        self.got: list[int] = []

    def push(self, op_id: str, seq: int, payload: str) -> None:
        assert payload == f"p{seq}"
        self.got.append(seq)

    def finish(self, op_id: str, errors: list[dict[str, Any]] | None = None) -> None:
        raise AssertionError("not finished")


async def test_replayer_reads_each_page_once_renders_each_event_once_and_bounds_db_use() -> None:
    log = FakeLog(head=1000, holes=frozenset({5, 333, 334, 700}))
    replayer = Replayer(log, page_size=100, db_slots=2)  # type: ignore[arg-type]
    group = FakeGroup()
    sinks = []
    replays = []
    log.gate.clear()
    for n in range(300):
        after = (0, 37, 150, 420)[n % 4]
        sink = ListSink()
        subscriber = Subscriber(sink, "1", group, min_seq=after)  # type: ignore[arg-type]
        group.members[id(subscriber)] = subscriber
        sinks.append((sink, after))
        replays.append(replayer.replay(group, subscriber, after, 1000))  # type: ignore[arg-type]
    running = asyncio.gather(*replays)
    await asyncio.sleep(0)
    log.gate.set()
    await asyncio.wait_for(running, 5)
    for sink, after in sinks:
        assert sink.got == [s for s in range(after + 1, 1001) if s % 3 and s not in log.holes]
    assert sorted(log.reads) == [(lo, lo + 100) for lo in range(0, 1000, 100)]
    assert replayer.page_reads == 10
    assert sorted(group.rendered) == sorted(set(group.rendered))  # each event rendered once
    assert log.most_in_flight <= 2
    # A later replay to a newer head re-reads only the last, partial page.
    log.head = 1050
    late = ListSink()
    subscriber = Subscriber(late, "2", group, min_seq=980)  # type: ignore[arg-type]
    group.members[id(subscriber)] = subscriber
    await asyncio.wait_for(replayer.replay(group, subscriber, 980, 1050), 5)  # type: ignore[arg-type]
    assert late.got == [s for s in range(981, 1051) if s % 3]
    assert log.reads[10:] == [(1000, 1050)]
    await replayer.close()


async def test_replayer_keeps_a_groups_renders_for_subscribers_that_resume_one_by_one() -> None:
    log = FakeLog(head=250)
    replayer = Replayer(log, page_size=100)  # type: ignore[arg-type]
    group = FakeGroup()
    for after in (0, 30, 120, 0, 249):
        sink = ListSink()
        subscriber = Subscriber(sink, "1", group, min_seq=after)  # type: ignore[arg-type]
        group.members[id(subscriber)] = subscriber
        await asyncio.wait_for(replayer.replay(group, subscriber, after, 250), 5)  # type: ignore[arg-type]
        assert sink.got == [s for s in range(after + 1, 251) if s % 3]
        del group.members[id(subscriber)]
    assert len(group.rendered) == len(set(group.rendered)) == len([s for s in range(1, 251) if s % 3])
    assert replayer.page_reads == 3
    await replayer.close()


async def test_rendering_events_does_not_grow_the_group_executor(server: Server, http: httpx.AsyncClient) -> None:
    ws = await subscribed(server, "1", SUB)
    await post_many(http, [("r1", f"m{i}") for i in range(20)])
    assert len([await ws.recv() for _ in range(20)]) == 20
    (group,) = server.tidings.dispatcher.groups.values()
    # graphql-core memoizes subfields per executor, keyed by lists made anew for every event:
    # on the group's long-lived executor that memo would hold every event ever rendered.
    assert len(group.executor._relevant_sub_fields) <= 2
    await ws.close()


async def test_replay_of_a_page_pruned_meanwhile_is_cursor_expired() -> None:
    log = FakeLog(head=300)
    replayer = Replayer(log, page_size=100)  # type: ignore[arg-type]
    group = FakeGroup()
    sink = ListSink()
    subscriber = Subscriber(sink, "1", group, min_seq=120)  # type: ignore[arg-type]
    group.members[id(subscriber)] = subscriber
    log.pruned = 150  # retention deleted up to 150 after the subscriber's cursor was checked
    with pytest.raises(CursorExpired) as caught:
        await asyncio.wait_for(replayer.replay(group, subscriber, 120, 300), 5)  # type: ignore[arg-type]
    assert caught.value.extensions == {"code": "CURSOR_EXPIRED", "oldestSeq": "151"}
    assert sink.got == []  # nothing of a partial replay was sent
    await replayer.close()
