"""Field-level change filters: taskEvents(changedFields: [...]) over WebSocket and SSE, live and replayed."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.support.servers import Server, gql_post, subscribed, wait_subscribers
from tests.support.wsclient import WS
from tests.test_realtime_sse import read_events, sse_stream
from tests.test_realtime_ws import create, delete, update

NARROWED = """subscription($fields: [TaskField!], $where: TaskWhere, $after: String) {
  taskEvents(changedFields: $fields, where: $where, after: $after) {
    operation match changedFields record { title status priority }
  }
}"""


def summary(message: dict[str, Any]) -> tuple[str, str, list[str], str]:
    event = message["payload"]["data"]["taskEvents"]
    return event["operation"], event["match"], event["changedFields"], event["record"]["title"]


async def changes(http: httpx.AsyncClient) -> None:
    """One record through creation, updates of other fields and of status, and deletion."""
    tid = await create(http, title="a", status="open")
    await update(http, tid, title="a2")  # not status: narrowed away
    await update(http, tid, priority=2, assignedTo="ann")  # not status
    await update(http, tid, status="done")
    await update(http, tid, title="a3", status="open")
    await delete(http, tid)


EXPECTED = [
    ("CREATED", "ENTERED", ["title", "status", "priority", "assignedTo", "dueAt", "tags"], "a"),
    ("UPDATED", "STAYED", ["status"], "a2"),
    ("UPDATED", "STAYED", ["title", "status"], "a3"),
    ("DELETED", "LEFT", [], "a3"),
]


async def test_changed_fields_narrows_updates_over_websocket_and_sse(server: Server, http: httpx.AsyncClient) -> None:
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("status", NARROWED, {"fields": ["status"]})
    await ws.subscribe("all", NARROWED)
    sse_query = "subscription { taskEvents(changedFields: [status, priority]) { operation changedFields } }"
    async with sse_stream(server.url, sse_query) as stream:
        await wait_subscribers(server, 3)
        await changes(http)
        got = [await ws.recv() for _ in range(10)]
        sse = [json.loads(e.data)["data"]["taskEvents"] for e in await read_events(stream, 5)]
    assert [summary(m) for m in got if m["id"] == "status"] == EXPECTED
    assert len([m for m in got if m["id"] == "all"]) == 6  # without the filter: every update
    assert [(e["operation"], e["changedFields"]) for e in sse] == [
        ("CREATED", ["title", "status", "priority", "assignedTo", "dueAt", "tags"]),
        ("UPDATED", ["priority", "assignedTo"]),
        ("UPDATED", ["status"]),
        ("UPDATED", ["title", "status"]),
        ("DELETED", []),
    ]
    assert await ws.no_message()
    await ws.close()


async def test_entering_or_leaving_the_view_passes_whatever_changed(server: Server, http: httpx.AsyncClient) -> None:
    ws = await subscribed(server, "s", NARROWED, {"fields": ["title"], "where": {"priority": {"lt": 5}}})
    tid = await create(http, title="a")
    await update(http, tid, status="done")  # stays in view, title unchanged: narrowed away
    await update(http, tid, priority=9)  # leaves the view: a client's copy must drop it
    await update(http, tid, priority=1)  # enters again
    await update(http, tid, title="b")
    assert [summary(await ws.recv())[:3] for _ in range(4)] == [
        ("CREATED", "ENTERED", ["title", "status", "priority", "assignedTo", "dueAt", "tags"]),
        ("UPDATED", "LEFT", ["priority"]),
        ("UPDATED", "ENTERED", ["priority"]),
        ("UPDATED", "STAYED", ["title"]),
    ]
    assert await ws.no_message()
    await ws.close()


async def test_replay_with_after_applies_the_same_narrowing(server: Server, http: httpx.AsyncClient) -> None:
    await changes(http)
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("replay", NARROWED, {"fields": ["status"], "after": "0"})
    assert [summary(await ws.recv()) for _ in range(4)] == EXPECTED
    assert await ws.no_message()
    await update(http, await create(http, title="live"), title="live2")
    assert summary(await ws.recv())[:2] == ("CREATED", "ENTERED")
    assert await ws.no_message()
    await ws.close()


async def test_changed_fields_must_name_declared_fields(server: Server, http: httpx.AsyncClient) -> None:
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("empty", NARROWED, {"fields": []})
    empty = await ws.recv()
    assert empty["type"] == "error"
    assert empty["payload"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "changedFields"}
    await ws.subscribe("system", "subscription { taskEvents(changedFields: [updatedAt]) { seq } }")
    system = await ws.recv()
    assert system["type"] == "error"
    assert system["payload"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    await ws.close()
    sdl = await gql_post(http, '{ __type(name: "TaskField") { enumValues { name } } }')
    names = [v["name"] for v in sdl["data"]["__type"]["enumValues"]]
    assert names == ["title", "status", "priority", "assignedTo", "dueAt", "tags"]
