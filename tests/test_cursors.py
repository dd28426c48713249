"""Resume cursors carry the event log's identity: one from another database, or ahead
of the head, is refused with CURSOR_INVALID instead of silently delivering nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import Server, gql_post, make_server, wait_subscribers
from tests.support.wsclient import WS
from tests.test_realtime_sse import read_events
from tests.test_realtime_ws import create

SUB = """subscription($after: String) {
  taskEvents(where: {status: {eq: "open"}}, after: $after) { seq cursor record { title } }
}"""
INVALID = {"code": "CURSOR_INVALID"}


async def _cursor_after_writes(server: Server, titles: list[str]) -> str:
    """Write ``titles``, then query: the response's cursor is the head."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        for title in titles:
            await create(http, title=title, status="open")
        result = await gql_post(http, "{ tasks { id } }")
    seq = result["extensions"]["seq"]
    assert result["extensions"]["cursor"] == f"{server.tidings.store.epoch}:{seq}"
    return str(result["extensions"]["cursor"])


async def _ws_error(server: Server, after: str) -> Any:
    ws = await WS.open(server.ws_url)
    try:
        await ws.init()
        await ws.subscribe("1", SUB, {"after": after})
        message = await ws.recv()
        assert message["type"] == "error", message
        return message["payload"][0]
    finally:
        await ws.close()


async def _sse_events(server: Server, count: int, *, after: str | None = None, last_event_id: str | None = None) -> Any:
    headers = {"accept": "text/event-stream"}
    if last_event_id is not None:
        headers["last-event-id"] = last_event_id
    variables = json.dumps({"after": after})
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        client.stream("GET", "/graphql", params={"query": SUB, "variables": variables}, headers=headers) as response,
    ):
        return await read_events(response, count)


async def test_cursor_from_another_database_is_refused_on_ws_and_sse(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = make_server(tmp_path / "a"), make_server(tmp_path / "b")
    try:
        assert a.tidings.store.epoch != b.tidings.store.epoch
        foreign = await _cursor_after_writes(a, ["a1", "a2"])
        await _cursor_after_writes(b, ["b1", "b2", "b3"])  # b's head is past the seq: only the epoch tells
        error = await _ws_error(b, foreign)
        assert error["extensions"] == INVALID
        assert "re-query" in error["message"]
        for events in (await _sse_events(b, 2, after=foreign), await _sse_events(b, 2, last_event_id=foreign)):
            assert [e.event for e in events] == ["next", "complete"]
            assert json.loads(events[0].data)["errors"][0]["extensions"] == INVALID
        assert b.tidings.dispatcher.subscriber_count == 0
    finally:
        a.stop()
        b.stop()


async def test_plain_seq_or_cursor_ahead_of_the_head_is_refused(server: Server) -> None:
    cursor = await _cursor_after_writes(server, ["x", "y"])
    epoch = server.tidings.store.epoch
    assert cursor == f"{epoch}:2"
    for after in ("5000", f"{epoch}:3"):
        error = await _ws_error(server, after)
        assert error["extensions"] == INVALID
        events = await _sse_events(server, 2, last_event_id=after)
        assert json.loads(events[0].data)["errors"][0]["extensions"] == INVALID
    # The head itself, and a plain seq up to it, are fine (older clients send plain seqs).
    for after, replayed in ((cursor, []), ("2", []), ("1", ["y"])):
        ws = await WS.open(server.ws_url)
        await ws.init()
        await ws.subscribe("1", SUB, {"after": after})
        got = [(await ws.recv())["payload"]["data"]["taskEvents"]["record"]["title"] for _ in replayed]
        assert got == replayed
        assert await ws.no_message()
        await ws.close()


async def test_valid_cursor_resumes_exactly_then_goes_live(server: Server, http: httpx.AsyncClient) -> None:
    cursor = await _cursor_after_writes(server, ["before"])
    epoch = server.tidings.store.epoch
    await create(http, title="missed 1", status="open")
    await create(http, title="closed", status="closed")
    await create(http, title="missed 2", status="open")
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("1", SUB, {"after": cursor})
    got = [(await ws.recv())["payload"]["data"]["taskEvents"] for _ in range(2)]
    assert [(e["seq"], e["cursor"], e["record"]["title"]) for e in got] == [
        ("2", f"{epoch}:2", "missed 1"),
        ("4", f"{epoch}:4", "missed 2"),
    ]
    await wait_subscribers(server, 1)
    await create(http, title="live", status="open")
    live = (await ws.recv())["payload"]["data"]["taskEvents"]
    assert (live["cursor"], live["record"]["title"]) == (f"{epoch}:5", "live")
    assert await ws.no_message()
    await ws.close()


async def test_sse_last_event_id_cursor_resumes(server: Server, http: httpx.AsyncClient) -> None:
    epoch = server.tidings.store.epoch
    for title in ("a", "b", "c"):
        await create(http, title=title, status="open")
    events = await _sse_events(server, 2, last_event_id=f"{epoch}:1")
    assert [e.id for e in events] == [f"{epoch}:2", f"{epoch}:3"]
    assert [json.loads(e.data)["data"]["taskEvents"]["record"]["title"] for e in events] == ["b", "c"]


async def test_cursor_survives_a_restart_on_the_same_database(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    try:
        cursor = await _cursor_after_writes(server, ["one"])
        epoch = server.tidings.store.epoch
    finally:
        server.stop()
    server = make_server(tmp_path)
    try:
        assert server.tidings.store.epoch == epoch
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            await create(http, title="two", status="open")
        ws = await WS.open(server.ws_url)
        await ws.init()
        await ws.subscribe("1", SUB, {"after": cursor})
        event = (await ws.recv())["payload"]["data"]["taskEvents"]
        assert (event["cursor"], event["record"]["title"]) == (f"{epoch}:2", "two")
        await ws.close()
    finally:
        server.stop()
