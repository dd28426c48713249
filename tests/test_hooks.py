"""tidings.Hooks over a real server: connect, subscribe, writes, commits and publishes, over WS, SSE and HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.support.servers import Server, gql_post, make_server, subscribed, wait_channel_subscribers
from tests.support.wsclient import WS
from tidings import (
    BadUserInput,
    ChangeEvent,
    Channel,
    ConnectionInfo,
    Hooks,
    OperationInfo,
    Principal,
    PublishInfo,
    WriteInfo,
)
from tidings.model.demo import COLLECTIONS

pytestmark = pytest.mark.timeout(30)

SECRET = "test-secret-please-change-it-now-0123456789"
CREATE = "mutation($t: String!) { createTask(input: {title: $t}) { id title } }"
EVENTS = "subscription Watch($w: TaskWhere) { taskEvents(where: $w) { seq record { title } } }"


def token(sub: str, account: str = "acme", ttl: float = 600) -> str:
    now = int(time.time())
    claims = {"sub": sub, "account": account, "role": "member", "iat": now, "exp": now + ttl}
    return jwt.encode(claims, SECRET, algorithm="HS256")


class Recorder:
    """Hook calls, from the server's thread to the test's loop, in the order they ran."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.calls: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def record(self, name: str, arg: Any) -> None:
        self.loop.call_soon_threadsafe(self.calls.put_nowait, (name, arg))

    async def next(self, name: str | None = None, timeout: float = 5.0) -> Any:
        while True:
            got, arg = await asyncio.wait_for(self.calls.get(), timeout)
            if name is None or got == name:
                return arg

    def all(self, name: str) -> list[Any]:
        found: list[Any] = []
        while not self.calls.empty():
            got, arg = self.calls.get_nowait()
            if got == name:
                found.append(arg)
        return found


def recording_hooks(recorder: Recorder) -> Hooks:
    hooks = Hooks()

    @hooks.on_connect
    async def connected(conn: ConnectionInfo) -> None:
        recorder.record("connect", conn)

    @hooks.on_disconnect
    async def disconnected(conn: ConnectionInfo) -> None:
        recorder.record("disconnect", conn)

    @hooks.on_subscribe
    async def subscribed(op: OperationInfo) -> None:
        recorder.record("subscribe", op)

    @hooks.on_unsubscribe
    async def unsubscribed(op: OperationInfo) -> None:
        recorder.record("unsubscribe", op)

    @hooks.before_write
    async def check(write: WriteInfo) -> None:
        recorder.record("write", write)
        title = write.input.get("title")
        if title == "refused":
            raise BadUserInput("No refused titles here", field="title")
        if title == "boom":
            raise RuntimeError("the hook itself is broken")

    @hooks.after_commit
    async def committed(event: ChangeEvent) -> None:
        recorder.record("commit", event)

    return hooks


@pytest.fixture
async def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def hooked(tmp_path: Path, recorder: Recorder) -> Iterator[Server]:
    s = make_server(tmp_path, jwt_secret=SECRET, jwt_leeway=0, hooks=recording_hooks(recorder))
    yield s
    s.stop()


async def test_connection_and_subscription_hooks_over_websocket(hooked: Server, recorder: Recorder) -> None:
    ws = await WS.open(hooked.ws_url)
    assert (await ws.init({"Authorization": f"Bearer {token('alice')}"}))["type"] == "connection_ack"
    conn = await recorder.next("connect")
    assert (conn.transport, conn.principal.sub, conn.principal.account) == ("ws", "alice", "acme")
    assert conn.id is not None

    await ws.subscribe("op-1", EVENTS, {"w": {"title": {"eq": "x"}}})
    op = await recorder.next("subscribe")
    assert (op.op_id, op.query, op.variables, op.operation_name) == (
        "op-1",
        EVENTS,
        {"w": {"title": {"eq": "x"}}},
        None,
    )
    assert op.connection.id == conn.id and op.connection.principal.sub == "alice"

    await ws.send({"id": "op-1", "type": "complete"})
    ended = await recorder.next("unsubscribe")
    assert (ended.op_id, ended.query) == ("op-1", EVENTS)

    await ws.subscribe("op-2", EVENTS)
    await recorder.next("subscribe")
    await ws.close()
    # The connection's end stops its operations first: unsubscribe, then disconnect.
    assert (await recorder.next()).op_id == "op-2"
    gone = await recorder.next()
    assert isinstance(gone, ConnectionInfo) and gone.id == conn.id and gone.principal.sub == "alice"


async def test_a_connection_refused_at_init_gets_neither_connect_nor_disconnect(
    hooked: Server, recorder: Recorder
) -> None:
    ws = await WS.open(hooked.ws_url)
    await ws.send({"type": "connection_init", "payload": {"Authorization": "Bearer not-a-token"}})
    assert (await ws.closed())[0] == 4403
    ws2 = await WS.open(hooked.ws_url)
    assert (await ws2.init({"Authorization": f"Bearer {token('bob')}"}))["type"] == "connection_ack"
    assert (await recorder.next()).principal.sub == "bob"  # the first call of all: nothing for the refused one
    await ws2.close()


async def test_connection_and_subscription_hooks_over_sse(hooked: Server, recorder: Recorder) -> None:
    headers = {"accept": "text/event-stream", "authorization": f"Bearer {token('carol')}"}
    async with httpx.AsyncClient(base_url=hooked.url, timeout=10) as client:
        async with client.stream("GET", "/graphql", params={"query": EVENTS}, headers=headers) as response:
            assert response.status_code == 200
            conn = await recorder.next("connect")
            assert (conn.transport, conn.principal.sub) == ("sse", "carol")
            op = await recorder.next("subscribe")
            assert (op.query, op.connection.id) == (EVENTS, conn.id)
        assert (await recorder.next("unsubscribe")).query == EVENTS
        assert (await recorder.next("disconnect")).id == conn.id


async def test_before_write_sees_every_write_and_refuses_one_caller(hooked: Server, recorder: Recorder) -> None:
    headers = {"authorization": f"Bearer {token('dave')}"}
    async with httpx.AsyncClient(base_url=hooked.url, timeout=10, headers=headers) as http:
        refused = await gql_post(http, CREATE, {"t": "refused"})
        assert refused["data"] is None
        assert refused["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert refused["errors"][0]["extensions"]["field"] == "title"
        broken = await gql_post(http, CREATE, {"t": "boom"})
        assert broken["errors"][0]["message"] == "Internal server error"  # the hook's text is never echoed
        assert broken["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
        created = await gql_post(http, CREATE, {"t": "fine"})
        assert "errors" not in created
        record_id = created["data"]["createTask"]["id"]
        # Neither refused write reached the store.
        listed = await gql_post(http, "{ tasks { title } }")
        assert listed["data"]["tasks"] == [{"title": "fine"}]
        update = 'mutation($id: ID!) { updateTask(id: $id, input: {status: "done"}) { status } }'
        assert "errors" not in await gql_post(http, update, {"id": record_id})
        assert "errors" not in await gql_post(
            http, "mutation($id: ID!) { deleteTask(id: $id) { id } }", {"id": record_id}
        )

    writes = [await recorder.next("write") for _ in range(5)]
    assert [(w.collection, w.action, w.id) for w in writes] == [
        ("Task", "create", None),
        ("Task", "create", None),
        ("Task", "create", None),
        ("Task", "update", record_id),
        ("Task", "delete", record_id),
    ]
    assert writes[2].input["title"] == "fine" and writes[2].principal.sub == "dave"
    assert writes[3].input == {"status": "done"}

    # Over a WebSocket, the same hook answers that one operation with its error; the next write works.
    ws = await WS.open(hooked.ws_url)
    assert (await ws.init({"Authorization": f"Bearer {token('dave')}"}))["type"] == "connection_ack"
    await ws.subscribe("w1", CREATE, {"t": "refused"})
    answer = await ws.recv()
    assert answer["payload"]["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert (await ws.recv())["type"] == "complete"
    await ws.subscribe("w2", CREATE, {"t": "over ws"})
    assert (await ws.recv())["payload"]["data"]["createTask"]["title"] == "over ws"
    await ws.close()


async def test_a_raising_after_commit_hook_does_not_affect_delivery(tmp_path: Path) -> None:
    recorder = Recorder()
    hooks = Hooks()

    @hooks.after_commit
    async def broken(event: ChangeEvent) -> None:
        recorder.record("commit", event)
        raise RuntimeError("after_commit is broken")

    server = make_server(tmp_path, hooks=hooks)
    try:
        ws = await subscribed(server, "s", EVENTS)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            for title in ("one", "two"):
                assert "errors" not in await gql_post(http, CREATE, {"t": title})
        titles = [(await ws.recv())["payload"]["data"]["taskEvents"]["record"]["title"] for _ in range(2)]
        assert titles == ["one", "two"]
        events = [await recorder.next("commit") for _ in range(2)]
        assert [(e.collection, e.operation.value, e.record["title"]) for e in events] == [
            ("Task", "CREATED", "one"),
            ("Task", "CREATED", "two"),
        ]
        await ws.close()
    finally:
        server.stop()


async def test_a_slow_after_commit_hook_does_not_delay_the_mutation_response(tmp_path: Path) -> None:
    recorder = Recorder()
    release = threading.Event()
    hooks = Hooks()

    @hooks.after_commit
    async def slow(event: ChangeEvent) -> None:
        recorder.record("commit", event)
        while not release.is_set():  # held until the test has its answer (a thread event: another loop)
            await asyncio.sleep(0.02)

    server = make_server(tmp_path, hooks=hooks)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            first = await gql_post(http, CREATE, {"t": "first"})
            assert "errors" not in first
            await recorder.next("commit")  # the hook is running, and will not return until released
            second = await asyncio.wait_for(gql_post(http, CREATE, {"t": "second"}), 5)
            assert second["data"]["createTask"]["title"] == "second"
        release.set()
        assert (await recorder.next("commit")).record["title"] == "second"
    finally:
        release.set()
        server.stop()


async def test_on_publish_may_rewrite_or_refuse(tmp_path: Path) -> None:
    recorder = Recorder()
    hooks = Hooks()

    @hooks.on_publish
    async def moderate(pub: PublishInfo) -> Any:
        recorder.record("publish", pub)
        if pub.type == "shout":
            raise BadUserInput("No shouting", field="type")
        if pub.type == "broken":
            raise KeyError("oops")
        return {**pub.data, "checked": True}

    server = make_server(tmp_path, [*COLLECTIONS, Channel("room:*")], hooks=hooks)
    publish = 'mutation($type: String!) { publish(channel: "room:1", type: $type, data: {text: "hi"}) }'
    try:
        ws = await WS.open(server.ws_url)
        await ws.init()
        await ws.subscribe("c", 'subscription { channelEvents(channels: ["room:1"]) { type data } }')
        await wait_channel_subscribers(server, 1)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            shout = await gql_post(http, publish, {"type": "shout"})
            assert shout["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
            broken = await gql_post(http, publish, {"type": "broken"})
            assert broken["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
            said = await gql_post(http, publish, {"type": "say"})
            assert "errors" not in said
        event = (await ws.recv())["payload"]["data"]["channelEvents"]
        assert event == {"type": "say", "data": {"text": "hi", "checked": True}}  # only the one let through
        seen = [await recorder.next("publish") for _ in range(3)]
        assert [(p.channel, p.type, p.data) for p in seen] == [
            ("room:1", "shout", {"text": "hi"}),
            ("room:1", "broken", {"text": "hi"}),
            ("room:1", "say", {"text": "hi"}),
        ]
        await ws.close()
    finally:
        server.stop()


def test_hooks_decorators_return_the_function_and_keep_order() -> None:
    hooks = Hooks()

    async def first(write: WriteInfo) -> None: ...

    async def second(write: WriteInfo) -> None: ...

    assert hooks.before_write(first) is first
    hooks.before_write(second)
    assert hooks.write == [first, second]


async def test_the_readme_hooks_snippet_registers_working_hooks() -> None:
    from tests.test_readme import the_block

    source = the_block("Hooks", "python", "hooks = Hooks()").replace("app = create_app(hooks=hooks)\n", "")
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    hooks = namespace["hooks"]
    assert [len(x) for x in (hooks.connect, hooks.subscribe, hooks.write, hooks.commit, hooks.publish)] == [1] * 5
    alice = Principal(sub="alice", account="acme")
    with pytest.raises(BadUserInput):
        await hooks.write[0](WriteInfo("Task", "create", {"title": "LOUD"}, alice, None))
    await hooks.write[0](WriteInfo("Task", "create", {"title": "quiet"}, alice, None))
    assert await hooks.publish[0](PublishInfo("room:1", "say", {"text": "hi"}, alice)) == {
        "text": "hi",
        "checked": True,
    }
