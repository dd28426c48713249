"""Resume after reconnect: exact replay from the event log, then live; gap filling."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import Server, gql_post, make_server, subscribed, wait_subscribers
from tests.support.wsclient import WS
from tests.test_realtime_sse import read_events
from tests.test_realtime_ws import create
from tidings.pubsub import MemoryBroker

SUB = """subscription($after: String) {
  messageEvents(where: {room: {eq: "r1"}}, after: $after) { seq operation record { body } }
}"""
CREATE = (
    'mutation($room: String!, $body: String!) { createMessage(input: {room: $room, author: "a", body: $body}) { id } }'
)


async def post_many(
    http: httpx.AsyncClient,
    bodies: list[tuple[str, str]],
    concurrency: int = 8,
    first_written: asyncio.Event | None = None,
) -> None:
    """Create ``bodies`` as messages, ``concurrency`` at a time; ``first_written`` is set once one is acknowledged."""
    queue = list(bodies)

    async def worker() -> None:
        while queue:
            room, body = queue.pop(0)
            result = await gql_post(http, CREATE, {"room": room, "body": body})
            assert "errors" not in result, result
            if first_written is not None:
                first_written.set()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def events_of(messages: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [
        (int(m["payload"]["data"]["messageEvents"]["seq"]), m["payload"]["data"]["messageEvents"]["record"]["body"])
        for m in messages
    ]


async def test_reconnect_with_after_replays_exactly_what_was_missed_then_goes_live(
    server: Server, http: httpx.AsyncClient
) -> None:
    ws = await subscribed(server, "1", SUB)
    await post_many(http, [("r1", "first")])
    last_seen = int((await ws.recv())["payload"]["data"]["messageEvents"]["seq"])
    await ws.close()
    # 1,000 changes while away, a quarter of them in another room.
    await post_many(http, [("r2" if i % 4 == 0 else "r1", f"m{i}") for i in range(1000)])
    log = server.call(server.tidings.store.read_events(last_seen, None, 5000))
    expected = [(e.seq, e.record["body"]) for e in log if e.record["room"] == "r1"]
    assert len(expected) == 750
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("1", SUB, {"after": str(last_seen)})
    got = [await ws.recv() for _ in range(750)]
    assert events_of(got) == expected
    await post_many(http, [("r1", "live")])
    live = await ws.recv()
    assert events_of([live])[0][1] == "live"
    assert await ws.no_message()
    await ws.close()


async def test_resume_replays_only_the_subscriptions_own_collection(server: Server, http: httpx.AsyncClient) -> None:
    # The log holds every collection's events; a replay page is read whole.
    for i in range(3):
        await post_many(http, [("r1", f"m{i}")])
        await create(http, title=f"t{i}")
    ws = await WS.open(server.ws_url)
    await ws.init()
    everything = 'subscription { messageEvents(after: "0") { seq operation record { body } } }'
    await ws.subscribe("1", everything)
    got = events_of([await ws.recv() for _ in range(3)])
    assert [body for _, body in got] == ["m0", "m1", "m2"]
    assert await ws.no_message()
    await ws.close()


async def test_resume_while_writes_continue_has_no_gap_and_no_duplicate(
    server: Server, http: httpx.AsyncClient
) -> None:
    await post_many(http, [("r1", f"old{i}") for i in range(200)])
    writing = asyncio.Event()
    writer = asyncio.create_task(
        post_many(http, [("r1", f"new{i}") for i in range(300)], concurrency=4, first_written=writing)
    )
    await asyncio.wait_for(writing.wait(), 10)  # the writer has committed at least one change
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("1", SUB, {"after": "100"})
    assert not writer.done(), "the writes ended before the resume began: nothing ran concurrently"
    await writer
    got: list[dict[str, Any]] = []
    while len(got) < 400:
        got.append(await ws.recv())
    seqs = [s for s, _ in events_of(got)]
    assert seqs == list(range(101, 501))
    assert await ws.no_message()
    await ws.close()


async def test_query_seq_then_subscribe_after_misses_nothing(server: Server, http: httpx.AsyncClient) -> None:
    await post_many(http, [("r1", "before")])
    body = await gql_post(http, '{ messages(where: {room: {eq: "r1"}}) { body } }')
    seq = body["extensions"]["seq"]
    await post_many(http, [("r1", "between")])
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("1", SUB, {"after": seq})
    assert events_of([await ws.recv()])[0][1] == "between"
    await wait_subscribers(server, 1)
    await post_many(http, [("r1", "after")])
    assert events_of([await ws.recv()])[0][1] == "after"
    assert await ws.no_message()


async def test_sse_last_event_id_resumes_after_a_thousand_changes(server: Server, http: httpx.AsyncClient) -> None:
    await post_many(http, [("r1", "seen")])
    await post_many(http, [("r1" if i % 2 else "r2", f"m{i}") for i in range(1000)])
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=20) as client,
        client.stream(
            "GET", "/graphql", params={"query": SUB}, headers={"accept": "text/event-stream", "last-event-id": "1"}
        ) as response,
    ):
        events = await read_events(response, 500, timeout=20)
        log = server.call(server.tidings.store.read_events(1, None, 5000))
        expected = [(e.seq, e.record["body"]) for e in log if e.record["room"] == "r1"]
        bodies = [json.loads(e.data)["data"]["messageEvents"]["record"]["body"] for e in events]
        got = [(int(e.id.partition(":")[2]), body) for e, body in zip(events, bodies, strict=True)]  # id: epoch:seq
        assert got == expected
        await post_many(http, [("r1", "live")])
        live = await read_events(response, 1)
        assert json.loads(live[0].data)["data"]["messageEvents"]["record"]["body"] == "live"


async def test_lost_doorbells_are_filled_from_the_log(tmp_path: Path) -> None:
    counter = {"n": 0}

    def drop(_: bytes) -> bool:
        counter["n"] += 1
        return counter["n"] % 3 != 1  # lose two messages of every three, the last ones included

    server = make_server(tmp_path, broker=MemoryBroker(drop=drop), gap_check_interval=0.1)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            ws = await subscribed(server, "1", SUB)
            await post_many(http, [("r1", f"m{i}") for i in range(50)], concurrency=1)
            got = [await ws.recv() for _ in range(50)]
            assert [b for _, b in events_of(got)] == [f"m{i}" for i in range(50)]
            assert server.tidings.broker.dropped >= 30
            await ws.close()
    finally:
        server.stop()


async def test_cursor_older_than_retention_is_refused(tmp_path: Path) -> None:
    server = make_server(tmp_path, retention_events=5)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            await post_many(http, [("r1", f"m{i}") for i in range(20)], concurrency=1)
            assert server.call(server.tidings.prune()) == 15
            ws = await WS.open(server.ws_url)
            await ws.init()
            await ws.subscribe("old", SUB, {"after": "3"})
            err = await ws.recv()
            assert err["type"] == "error"
            assert err["payload"][0]["extensions"] == {"code": "CURSOR_EXPIRED", "oldestSeq": "16"}
            await ws.subscribe("ok", SUB, {"after": "15"})
            got = [await ws.recv() for _ in range(5)]
            assert [s for s, _ in events_of(got)] == [16, 17, 18, 19, 20]
            bad = await gql_post(http, "{ tasks { id } }")
            assert bad["data"] == {"tasks": []}
            await ws.close()
    finally:
        server.stop()


async def test_bad_after_is_bad_user_input(server: Server) -> None:
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("x", SUB, {"after": "12abc"})
    err = await ws.recv()
    assert err["payload"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "after"}
    await ws.close()
    _ = create
