"""Live queries (query @live) over real WebSockets and SSE: full result, then JSON patches."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.authdemo import COLLECTIONS as AUTH_COLLECTIONS
from tests.support.servers import Server, gql_post, make_server
from tests.support.wsclient import WS
from tests.test_auth import SECRET, call, create_note, token
from tests.test_readme import at, the_block
from tests.test_realtime_sse import read_events
from tests.test_realtime_ws import create, delete, update

LIVE = """query Board($limit: Int) @live {
  tasks(where: {status: {eq: "open"}}, orderBy: [{priority: DESC}], limit: $limit) { id title priority }
  openCount: tasksCount(where: {status: {eq: "open"}})
}"""
PLAIN = LIVE.replace(" @live", "")


def apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """RFC 6902 add/remove/replace, as fast-json-patch applies them on the client."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        if isinstance(parent, list):
            if op["op"] == "add":
                parent.insert(int(last), op["value"])
            elif op["op"] == "remove":
                del parent[int(last)]
            else:
                parent[int(last)] = op["value"]
        elif op["op"] == "remove":
            del parent[last]
        else:
            parent[last] = op["value"]
    return doc


class LiveClient:
    """Keeps the patched result of one live operation, checking revisions as the npm client does."""

    def __init__(self) -> None:
        self.data: Any = None
        self.revision = 0
        self.seq = 0

    def take(self, payload: dict[str, Any]) -> None:
        assert payload["revision"] == self.revision + 1, payload
        if payload["revision"] == 1:
            self.data = payload["data"]
        else:
            self.data = apply_patch(self.data, payload["patch"])
        self.revision = payload["revision"]
        seq = int(payload["extensions"]["seq"])
        assert seq >= self.seq
        assert payload["extensions"]["cursor"].endswith(f":{seq}")
        self.seq = seq


async def fresh(http: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None) -> Any:
    body = await gql_post(http, query, variables)
    assert "errors" not in body, body
    return body["data"]


async def ws_live(server: Server, query: str, variables: dict[str, Any], protocol: str) -> tuple[WS, LiveClient]:
    ws = await WS.open(server.ws_url, subprotocol=protocol)
    assert (await ws.init())["type"] == "connection_ack"
    await ws.subscribe("1", query, variables)
    client = LiveClient()
    client.take((await ws.recv())["payload"])
    return ws, client


async def catch_up(ws: WS, client: LiveClient, expected: Any, protocol: str) -> None:
    """Read patches until the client's result equals ``expected`` (each must come in order)."""
    while client.data != expected:
        message = await ws.recv()
        assert message["type"] == ("next" if protocol == "graphql-transport-ws" else "data"), message
        assert message["id"] == "1"
        client.take(message["payload"])


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_live_list_and_count_patched_equal_a_fresh_query_after_every_change(
    server: Server, http: httpx.AsyncClient, protocol: str
) -> None:
    a = await create(http, title="a", status="open", priority=1)
    await create(http, title="b", status="open", priority=5)
    ws, client = await ws_live(server, LIVE, {"limit": 3}, protocol)
    assert client.data == await fresh(http, PLAIN, {"limit": 3})
    assert client.data["openCount"] == 2
    c = await create(http, title="c", status="open", priority=3)
    d = await create(http, title="d", status="open", priority=9)
    steps = [
        lambda: create(http, title="closed", status="closed", priority=7),  # not in view: no message
        lambda: update(http, a, priority=10),  # moves to the top
        lambda: update(http, d, title="d2"),  # in place
        lambda: delete(http, a),  # a slot empties: refilled from the database
        lambda: update(http, c, status="closed"),  # leaves the view
        lambda: create(http, title="e", status="open", priority=0),  # below the window: the count only
    ]
    await catch_up(ws, client, await fresh(http, PLAIN, {"limit": 3}), protocol)
    for step in steps:
        before = client.data
        await step()
        after = await fresh(http, PLAIN, {"limit": 3})
        if after == before:
            assert await ws.no_message()
        else:
            await catch_up(ws, client, after, protocol)
    assert client.revision >= 6
    await ws.close()


async def test_identical_live_queries_share_one_kept_result(server: Server, http: httpx.AsyncClient) -> None:
    await create(http, title="a", status="open", priority=1)
    first, one = await ws_live(server, LIVE, {"limit": 2}, "graphql-transport-ws")
    second, two = await ws_live(server, LIVE, {"limit": 2}, "graphql-transport-ws")
    hub = server.tidings.engine.live_hub
    assert len(hub.groups) == 1 and hub.member_count == 2
    await create(http, title="b", status="open", priority=2)
    for ws, client in ((first, one), (second, two)):
        client.take((await ws.recv())["payload"])
        assert client.data == await fresh(http, PLAIN, {"limit": 2})
        assert client.revision == 2
    # Inserts and moves are applied without reading the database.
    group = next(iter(hub.groups.values()))
    assert group.reads == 0
    await first.close()
    await second.close()


async def test_removal_from_a_full_window_refills_with_one_read(server: Server, http: httpx.AsyncClient) -> None:
    ids = [await create(http, title=f"t{i}", status="open", priority=i) for i in range(4)]
    ws, client = await ws_live(server, LIVE, {"limit": 2}, "graphql-transport-ws")
    assert [t["title"] for t in client.data["tasks"]] == ["t3", "t2"]
    await delete(http, ids[3])
    client.take((await ws.recv())["payload"])
    assert [t["title"] for t in client.data["tasks"]] == ["t2", "t1"]
    assert client.data["openCount"] == 3
    group = next(iter(server.tidings.engine.live_hub.groups.values()))
    assert group.reads == 1
    await ws.close()


async def test_single_record_and_multi_root_live(server: Server, http: httpx.AsyncClient) -> None:
    tid = await create(http, title="one", status="open")
    query = "query($id: ID!) @live { task(id: $id) { title status } tasksCount messagesCount }"
    ws, client = await ws_live(server, query, {"id": tid}, "graphql-transport-ws")
    assert client.data == {"task": {"title": "one", "status": "open"}, "tasksCount": 1, "messagesCount": 0}
    await update(http, tid, title="renamed")
    client.take((await ws.recv())["payload"])
    assert client.data["task"] == {"title": "renamed", "status": "open"}
    await fresh(http, 'mutation { createMessage(input: {room: "r", author: "x", body: "hi"}) { id } }')
    client.take((await ws.recv())["payload"])
    assert client.data["messagesCount"] == 1
    await delete(http, tid)
    client.take((await ws.recv())["payload"])
    assert client.data == {"task": None, "tasksCount": 0, "messagesCount": 1}
    await ws.close()


async def test_count_is_a_plain_query_field(server: Server, http: httpx.AsyncClient) -> None:
    await create(http, title="a", status="open")
    await create(http, title="b", status="closed")
    body = await gql_post(http, '{ all: tasksCount open: tasksCount(where: {status: {eq: "open"}}) }')
    assert body["data"] == {"all": 2, "open": 1}


async def test_live_query_over_sse_distinct_mode(server: Server, http: httpx.AsyncClient) -> None:
    await create(http, title="a", status="open", priority=1)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as stream_client,
        stream_client.stream(
            "POST",
            "/graphql",
            json={"query": LIVE, "variables": {"limit": 5}},
            headers={"accept": "text/event-stream"},
        ) as response,
    ):
        assert response.status_code == 200
        client = LiveClient()
        first = (await read_events(response, 1))[0]
        client.take(json.loads(first.data))
        assert first.id == f"{server.tidings.store.epoch}:{client.seq}"
        await create(http, title="b", status="open", priority=2)
        second = (await read_events(response, 1))[0]
        client.take(json.loads(second.data))
        assert client.data == await fresh(http, PLAIN, {"limit": 5})
        assert client.revision == 2
    # A reconnect (EventSource sends Last-Event-ID) starts again: a full result, revision 1.
    await create(http, title="c", status="open", priority=3)
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as stream_client,
        stream_client.stream(
            "POST",
            "/graphql",
            json={"query": LIVE, "variables": {"limit": 5}},
            headers={"accept": "text/event-stream", "last-event-id": second.id},
        ) as response,
    ):
        again = LiveClient()
        again.take(json.loads((await read_events(response, 1))[0].data))
        assert again.data == await fresh(http, PLAIN, {"limit": 5})
        assert again.seq == 3


async def test_live_window_over_the_row_bound_is_refused(tmp_path: Path) -> None:
    server = make_server(tmp_path, live_max_rows=10)
    try:
        ws = await WS.open(server.ws_url)
        await ws.init()
        await ws.subscribe("1", "query @live { tasks { id } }")
        message = await ws.recv()
        assert message["type"] == "error"
        assert message["payload"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "limit", "maxRows": 10}
        await ws.subscribe("2", "query @live { tasks(limit: 11) { id } }")
        message = await ws.recv()
        assert message["type"] == "error"
        assert message["payload"][0]["extensions"]["maxRows"] == 10
        await ws.subscribe("3", "query @live { tasks(limit: 10) { id } }")
        message = await ws.recv()
        assert message["type"] == "next" and message["payload"]["revision"] == 1
        await ws.close()
    finally:
        server.stop()


async def test_live_queries_count_against_the_operation_limit(tmp_path: Path) -> None:
    server = make_server(tmp_path, max_subscriptions=1)
    try:
        ws = await WS.open(server.ws_url)
        await ws.init()
        await ws.subscribe("1", "query @live { tasksCount }")
        assert (await ws.recv())["payload"]["data"] == {"tasksCount": 0}
        await ws.subscribe("2", "query @live { tasksCount }")
        message = await ws.recv()
        assert message["type"] == "error" and message["id"] == "2"
        assert message["payload"][0]["extensions"]["code"] == "RATE_LIMITED"
        await ws.send({"id": "1", "type": "complete"})
        await wait_live_members(server, 0)
        await ws.subscribe("3", "query @live { tasksCount }")
        assert (await ws.recv())["id"] == "3"
        await ws.close()
    finally:
        server.stop()


async def wait_live_members(server: Server, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while server.tidings.engine.live_hub.member_count != n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{server.tidings.engine.live_hub.member_count} live members, waiting for {n}")
        await asyncio.sleep(0.01)


async def test_live_results_hold_only_rows_a_plain_query_by_the_same_user_returns(tmp_path: Path) -> None:
    server = make_server(tmp_path, AUTH_COLLECTIONS, jwt_secret=SECRET, admin_role="root", jwt_leeway=0)
    ann, bob, editor = token("ann", "acme"), token("bob", "globex"), token("ed", "acme", role="editor")
    query = (
        "query @live { notes(orderBy: [{title: ASC}], limit: 5) { title owner } notesCount docs(limit: 5) { title } }"
    )
    plain = query.replace(" @live", "")
    try:
        await create_note(server, ann, "a1")
        await create_note(server, bob, "b1")
        views = {}
        for who, tok in (("ann", ann), ("bob", bob)):
            ws = await WS.open(server.ws_url)
            assert (await ws.init({"authorization": f"Bearer {tok}"}))["type"] == "connection_ack"
            await ws.subscribe("1", query)
            client = LiveClient()
            client.take((await ws.recv())["payload"])
            views[who] = (ws, client, tok)
        # One group per read scope: the guards differ by account.
        assert len(server.tidings.engine.live_hub.groups) == 2
        doc = (await call(server, editor, 'mutation { createDoc(input: {title: "d"}) { id } }')).json()
        doc_id = doc["data"]["createDoc"]["id"]
        await create_note(server, bob, "b2")
        await create_note(server, ann, "a0")
        hide = "mutation($id: ID!) { updateDoc(id: $id, input: {secret: true}) { id } }"
        assert "errors" not in (await call(server, editor, hide, {"id": doc_id})).json()
        for who, (ws, client, tok) in views.items():
            expected = (await call(server, tok, plain)).json()["data"]
            while client.data != expected:
                client.take((await ws.recv())["payload"])
            assert {n["owner"] for n in client.data["notes"]} == {who}
            assert client.data["docs"] == []
            await ws.close()
    finally:
        server.stop()


async def test_readme_curl_line_streams_a_live_result_then_patches(server: Server, http: httpx.AsyncClient) -> None:
    command = at(server, the_block("Live queries", "sh", "curl"))
    await create(http, title="a", priority=1)
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )

    async def next_data() -> Any:
        assert proc.stdout is not None
        while True:
            raw = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert raw, (await proc.stderr.read() if proc.stderr else b"").decode()
            if raw.startswith(b"data: "):
                return json.loads(raw[6:])

    try:
        client = LiveClient()
        client.take(await next_data())
        assert client.data == {"tasks": [{"title": "a", "priority": 1}], "tasksCount": 1}
        await create(http, title="b", priority=2)
        client.take(await next_data())
        assert client.data == {"tasks": [{"title": "b", "priority": 2}, {"title": "a", "priority": 1}], "tasksCount": 2}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 5)


async def test_live_directive_over_plain_http_answers_once(http: httpx.AsyncClient) -> None:
    body = await gql_post(http, "query @live { tasksCount }")
    assert body["data"] == {"tasksCount": 0}


class _Unreachable:
    """A store whose reads fail, as a database that went away does."""

    epoch = "0"

    def reader(self) -> Any:
        raise OSError("database unreachable")


async def test_a_failed_refill_ends_the_live_query_with_an_error_and_the_next_one_starts_afresh(
    server: Server, http: httpx.AsyncClient
) -> None:
    ids = [await create(http, title=f"t{i}", status="open", priority=i) for i in range(3)]
    ws, _ = await ws_live(server, LIVE, {"limit": 2}, "graphql-transport-ws")
    group = next(iter(server.tidings.engine.live_hub.groups.values()))
    group.store = _Unreachable()  # type: ignore[assignment]
    await delete(http, ids[2])  # empties a slot: the refill read fails
    message = await ws.recv()
    assert message["type"] == "error" and message["id"] == "1", message
    assert message["payload"][0]["extensions"] == {"code": "INTERNAL_SERVER_ERROR"}
    await ws.subscribe("2", LIVE, {"limit": 2})
    again = LiveClient()
    again.take((await ws.recv())["payload"])
    assert again.data == await fresh(http, PLAIN, {"limit": 2})
    assert server.tidings.engine.live_hub.groups[group.key] is not group
    await ws.close()


async def test_an_event_reaches_only_the_live_groups_whose_view_it_may_touch(
    server: Server, http: httpx.AsyncClient
) -> None:
    room = "query($room: String!) @live { messages(where: {room: {eq: $room}}, limit: 5) { body } }"
    one, _ = await ws_live(server, room, {"room": "r1"}, "graphql-transport-ws")
    two, second = await ws_live(server, room, {"room": "r2"}, "graphql-transport-ws")
    hub = server.tidings.engine.live_hub
    r1 = next(g for g in hub.groups.values() if b'"r1"' in g.key[3])  # the key holds the variables
    await fresh(http, 'mutation { createMessage(input: {room: "r2", author: "a", body: "hi"}) { id } }')
    second.take((await two.recv())["payload"])
    assert second.data == {"messages": [{"body": "hi"}]}
    assert await one.no_message()
    assert r1.seq == 0  # never handed the r2 event: found by its room, not scanned
    await one.close()
    await two.close()
