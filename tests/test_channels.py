"""Channels and presence: publish/channelEvents, presence diffs, rules, limits, over real servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.backends import fresh_database, service_url
from tests.support.processes import RedisProcess, serving
from tests.support.servers import Server, gql_post, make_server, wait_channel_subscribers
from tests.support.wsclient import WS
from tests.test_auth import SECRET, token
from tests.test_realtime_sse import read_events
from tidings import Channel, collection
from tidings.auth.channel_rules import ChannelAction, ChannelRules
from tidings.auth.principal import ANONYMOUS, Principal
from tidings.errors import BadUserInput, Forbidden, Unauthenticated
from tidings.events import PresenceKind
from tidings.limits import Limits, Rate
from tidings.model.demo import COLLECTIONS
from tidings.pubsub import broker_from_url
from tidings.pubsub.channel_store import Entry
from tidings.realtime.presence import PresenceRegistry

EVENTS = "subscription($c: [String!]!, $t: [String!], $a: String) { channelEvents(channels: $c, types: $t, after: $a) { channel type data sender { sub } seq } }"  # noqa: E501
PRESENCE = """subscription($ch: String!, $meta: JSON) { presence(channel: $ch, meta: $meta) {
  kind count members { sub connections meta } member { sub connection connections meta } } }"""
PUBLISH = (
    "mutation($ch: String!, $t: String!, $d: JSON, $e: Boolean) { publish(channel: $ch, type: $t, data: $d, echo: $e) }"
)
UPDATE = "mutation($ch: String!, $meta: JSON) { updatePresence(channel: $ch, meta: $meta) }"

ALICE, BOB = Principal(sub="alice", account="a"), Principal(sub="bob", account="a")


# -- pure: the presence registry -----------------------------------------------------------


def test_two_connections_of_one_user_are_one_member_that_leaves_with_the_last() -> None:
    reg = PresenceRegistry()
    first = reg.join("k", Entry("p.1", "alice", {"x": 1}))
    assert first is not None and first.kind is PresenceKind.JOIN and first.count == 1
    second = reg.join("k", Entry("p.2", "alice", {"x": 2}))
    assert second is not None and second.kind is PresenceKind.UPDATE and second.member.connections == 2
    assert [(m.sub, m.connections, m.meta) for m in reg.members("k")] == [("alice", 2, {"x": 2})]
    gone = reg.leave("k", "p.2")
    assert gone is not None and gone.kind is PresenceKind.UPDATE and gone.member.meta == {"x": 1}
    last = reg.leave("k", "p.1")
    assert last is not None and last.kind is PresenceKind.LEAVE and last.count == 0
    assert reg.members("k") == [] and len(reg) == 0


def test_registry_changes_are_idempotent_and_anonymous_connections_are_members() -> None:
    reg = PresenceRegistry()
    assert reg.join("k", Entry("p.1", None, None)) is not None
    assert reg.join("k", Entry("p.1", None, None)) is None  # the broker brings our own join back
    assert reg.join("k", Entry("p.2", None, None)).kind is PresenceKind.JOIN  # type: ignore[union-attr]
    update = reg.join("k", Entry("p.1", None, {"cursor": 3}))
    assert update is not None and update.kind is PresenceKind.UPDATE and update.count == 2
    assert reg.leave("k", "p.9") is None
    assert reg.leave("k", "p.1").kind is PresenceKind.LEAVE  # type: ignore[union-attr]
    assert reg.leave("k", "p.1") is None
    assert reg.processes("k") == {"p"}


# -- pure: channel rules ---------------------------------------------------------------------


def test_channel_rules_patterns_claims_roles_and_tenants() -> None:
    rules = ChannelRules(
        [
            Channel("room:*", publish="role:member"),
            Channel("user:$sub"),
            Channel("news:*", subscribe="public", publish="none", scope="global"),
        ],
        auth_enabled=True,
        admin_role="root",
    )
    a = rules.resolve("room:42", ALICE, ChannelAction.SUBSCRIBE)
    other_tenant = rules.resolve("room:42", Principal(sub="carol", account="b"), ChannelAction.SUBSCRIBE)
    assert a.key != other_tenant.key  # room:42 of account a is not room:42 of account b
    assert (
        rules.resolve("news:1", ALICE, ChannelAction.SUBSCRIBE).key
        == rules.resolve("news:1", Principal(sub="c", account="b"), ChannelAction.SUBSCRIBE).key
    )
    assert rules.resolve("news:1", ANONYMOUS, ChannelAction.SUBSCRIBE).channel == "news:1"
    with pytest.raises(Forbidden):
        rules.resolve("news:1", ALICE, ChannelAction.PUBLISH)
    rules.resolve("news:1", Principal(sub="r", role="root"), ChannelAction.PUBLISH)  # the admin role may
    with pytest.raises(Forbidden):
        rules.resolve("room:42", Principal(sub="x", account="a", role="guest"), ChannelAction.PUBLISH)
    with pytest.raises(Unauthenticated):
        rules.resolve("room:42", ANONYMOUS, ChannelAction.SUBSCRIBE)
    rules.resolve("user:alice", ALICE, ChannelAction.PRESENCE)
    with pytest.raises(Forbidden):
        rules.resolve("user:alice", BOB, ChannelAction.SUBSCRIBE)
    with pytest.raises(Forbidden):
        rules.resolve("elsewhere:1", ALICE, ChannelAction.SUBSCRIBE)  # undeclared namespace
    with pytest.raises(BadUserInput):
        rules.resolve("has space", ALICE, ChannelAction.SUBSCRIBE)
    demo = ChannelRules([], auth_enabled=False)
    assert demo.resolve("anything:1", ANONYMOUS, ChannelAction.PUBLISH).channel == "anything:1"


# -- integration ---------------------------------------------------------------------------------


async def open_ws(server: Server, bearer: str | None = None) -> WS:
    ws = await WS.open(server.ws_url)
    ack = await ws.init({"Authorization": f"Bearer {bearer}"} if bearer else None)
    assert ack["type"] == "connection_ack"
    return ws


async def recv_for(ws: WS, op_id: str) -> dict[str, Any]:
    """The next message of ``op_id``; messages of other operations wait their turn."""
    stash: list[dict[str, Any]] = ws.__dict__.setdefault("stash", [])
    for i, message in enumerate(stash):
        if message.get("id") == op_id:
            return stash.pop(i)
    while True:
        message = await ws.recv()
        if message.get("id") == op_id:
            return message
        stash.append(message)


async def call(ws: WS, op_id: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    await ws.subscribe(op_id, query, variables)
    message = await recv_for(ws, op_id)
    if message["type"] == "next":
        assert (await recv_for(ws, op_id))["type"] == "complete"
        return message["payload"]  # type: ignore[no-any-return]
    return {"errors": message["payload"]}


async def next_data(ws: WS, op_id: str, field: str) -> Any:
    message = await recv_for(ws, op_id)
    assert message["type"] == "next", message
    return message["payload"]["data"][field]


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(
        tmp_path,
        [*COLLECTIONS, Channel("room:*", history=5), Channel("user:$sub")],
        jwt_secret=SECRET,
        rate_publish=5.0,
        rate_publish_burst=5,
        channel_max_payload=200,
    )
    yield s
    s.stop()


async def test_publish_reaches_subscribers_of_the_channel_not_the_echo_when_asked(server: Server) -> None:
    alice, bob = await open_ws(server), await open_ws(server)
    try:
        await alice.subscribe("a", EVENTS, {"c": ["room:1"]})
        await bob.subscribe("b", EVENTS, {"c": ["room:1", "room:2"], "t": ["typing"]})
        await wait_channel_subscribers(server, 2)
        sent = await call(alice, "p1", PUBLISH, {"ch": "room:1", "t": "typing", "d": {"on": True}, "e": False})
        assert "errors" not in sent
        got = await next_data(bob, "b", "channelEvents")
        assert got == {
            "channel": "room:1",
            "type": "typing",
            "data": {"on": True},
            "sender": None,
            "seq": sent["data"]["publish"],
        }
        await call(bob, "p2", PUBLISH, {"ch": "room:2", "t": "message", "d": "hi"})  # not a type bob asked for
        await call(bob, "p3", PUBLISH, {"ch": "room:1", "t": "message", "d": "hello"})
        got = await next_data(alice, "a", "channelEvents")
        assert (got["type"], got["data"]) == ("message", "hello")  # alice's own typing was not echoed
        assert await bob.no_message(0.2)
        assert await alice.no_message(0.1)
    finally:
        await alice.close()
        await bob.close()


async def test_presence_sync_join_update_and_leave_with_two_tabs(server: Server) -> None:
    watcher, tab1, tab2 = await open_ws(server), await open_ws(server), await open_ws(server)
    try:
        await watcher.subscribe("w", PRESENCE, {"ch": "doc:7", "meta": {"name": "w"}})
        sync = await next_data(watcher, "w", "presence")
        assert sync["kind"] == "SYNC" and sync["count"] == 1 and sync["members"][0]["meta"] == {"name": "w"}
        await tab1.subscribe("t", PRESENCE, {"ch": "doc:7", "meta": {"line": 1}})
        first = await next_data(tab1, "t", "presence")
        assert first["kind"] == "SYNC" and first["count"] == 2
        joined = await next_data(watcher, "w", "presence")
        assert joined["kind"] == "JOIN" and joined["member"]["meta"] == {"line": 1} and joined["count"] == 2
        await tab1.subscribe("u", UPDATE, {"ch": "doc:7", "meta": {"line": 10}})
        replies = [await tab1.recv() for _ in range(3)]  # its own presence sees the update too
        assert sorted((m["id"], m["type"]) for m in replies) == [("t", "next"), ("u", "complete"), ("u", "next")]
        assert next(m for m in replies if m["id"] == "u")["payload"] == {"data": {"updatePresence": True}}
        change = await next_data(watcher, "w", "presence")
        assert (change["kind"], change["member"]["meta"]) == ("UPDATE", {"line": 10})
        assert change["member"]["connection"] == joined["member"]["connection"]
        not_joined = await call(tab2, "u2", UPDATE, {"ch": "doc:7", "meta": {}})
        assert not_joined["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        await tab1.send({"id": "t", "type": "complete"})
        left = await next_data(watcher, "w", "presence")
        assert left["kind"] == "LEAVE" and left["count"] == 1
        await tab2.subscribe("t2", PRESENCE, {"ch": "doc:7"})
        await next_data(tab2, "t2", "presence")
        assert (await next_data(watcher, "w", "presence"))["kind"] == "JOIN"
        await tab2.close()  # losing the connection leaves too
        left = await next_data(watcher, "w", "presence")
        assert left["kind"] == "LEAVE" and left["count"] == 1
    finally:
        for ws in (watcher, tab1, tab2):
            await ws.close()


async def test_one_user_in_two_tabs_is_one_member(auth_server: Server) -> None:
    alice = token("alice", "acme")
    watcher, tab1, tab2 = (
        await open_ws(auth_server, token("bob", "acme")),
        await open_ws(auth_server, alice),
        await open_ws(auth_server, alice),
    )
    try:
        await watcher.subscribe("w", PRESENCE, {"ch": "room:1"})
        await next_data(watcher, "w", "presence")
        await tab1.subscribe("t", PRESENCE, {"ch": "room:1", "meta": {"tab": 1}})
        await next_data(tab1, "t", "presence")
        assert (await next_data(watcher, "w", "presence"))["kind"] == "JOIN"
        await tab2.subscribe("t", PRESENCE, {"ch": "room:1", "meta": {"tab": 2}})
        sync = await next_data(tab2, "t", "presence")
        assert sync["count"] == 2
        assert {(m["sub"], m["connections"]) for m in sync["members"]} == {("bob", 1), ("alice", 2)}
        second = await next_data(watcher, "w", "presence")
        assert (second["kind"], second["member"]["sub"], second["member"]["connections"]) == ("UPDATE", "alice", 2)
        await tab1.close()
        one_left = await next_data(watcher, "w", "presence")
        assert (one_left["kind"], one_left["member"]["connections"]) == ("UPDATE", 1)
        await tab2.close()
        assert (await next_data(watcher, "w", "presence"))["kind"] == "LEAVE"
    finally:
        for ws in (watcher, tab1, tab2):
            await ws.close()


async def test_rules_tenants_rate_and_size_limits(auth_server: Server) -> None:
    acme, other = (
        await open_ws(auth_server, token("alice", "acme")),
        await open_ws(auth_server, token("carol", "globex")),
    )
    try:
        await other.subscribe("o", EVENTS, {"c": ["room:1"]})
        await wait_channel_subscribers(auth_server, 1)
        await acme.subscribe("own", EVENTS, {"c": ["room:1"]})
        await wait_channel_subscribers(auth_server, 2)
        forbidden = await call(acme, "x", EVENTS, {"c": ["lobby"]})
        assert forbidden["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        not_yours = await call(acme, "y", EVENTS, {"c": ["user:carol"]})
        assert not_yours["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        too_big = await call(acme, "big", PUBLISH, {"ch": "room:1", "t": "x", "d": "x" * 300})
        assert too_big["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        codes = []
        for i in range(6):
            reply = await call(acme, f"p{i}", PUBLISH, {"ch": "room:1", "t": "typing"})
            codes.append(reply["errors"][0]["extensions"]["code"] if "errors" in reply else "ok")
        assert codes == ["ok"] * 5 + ["RATE_LIMITED"]
        for _ in range(5):
            got = await next_data(acme, "own", "channelEvents")
            assert got["sender"] == {"sub": "alice"}
        assert await other.no_message(0.2)  # globex's room:1 is another channel
    finally:
        await acme.close()
        await other.close()


async def test_history_lets_after_resume_one_channel(auth_server: Server) -> None:
    ws = await open_ws(auth_server, token("alice", "acme"))
    try:
        seqs = []
        for i in range(3):
            reply = await call(ws, f"p{i}", PUBLISH, {"ch": "room:9", "t": "msg", "d": i})
            seqs.append(reply["data"]["publish"])
        await ws.subscribe("r", EVENTS, {"c": ["room:9"], "a": seqs[0]})
        assert [(await next_data(ws, "r", "channelEvents"))["data"] for _ in range(2)] == [1, 2]
        await call(ws, "p3", PUBLISH, {"ch": "room:9", "t": "msg", "d": 3})
        assert (await next_data(ws, "r", "channelEvents"))["data"] == 3
        both = await call(ws, "m", EVENTS, {"c": ["room:9", "room:8"], "a": "1"})
        assert both["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    finally:
        await ws.close()


async def test_channel_events_and_presence_over_sse(server: Server, http: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        reserved = await client.put("/graphql")
        stream_token = reserved.text
        headers = {"x-graphql-event-stream-token": stream_token}
        async with client.stream(
            "GET", "/graphql", params={"token": stream_token}, headers={"accept": "text/event-stream"}
        ) as stream:
            body = {
                "query": PRESENCE,
                "variables": {"ch": "doc:1", "meta": {"line": 1}},
                "extensions": {"operationId": "pr"},
            }
            assert (await client.post("/graphql", json=body, headers=headers)).status_code == 202
            sync = json.loads((await read_events(stream, 1))[0].data)
            assert sync["id"] == "pr" and sync["payload"]["data"]["presence"]["kind"] == "SYNC"
            events = {"query": EVENTS, "variables": {"c": ["doc:1"]}, "extensions": {"operationId": "ev"}}
            assert (await client.post("/graphql", json=events, headers=headers)).status_code == 202
            await wait_channel_subscribers(server, 2)
            update = {
                "query": UPDATE,
                "variables": {"ch": "doc:1", "meta": {"line": 2}},
                "extensions": {"operationId": "up"},
            }
            assert (await client.post("/graphql", json=update, headers=headers)).status_code == 202
            sent = await gql_post(http, PUBLISH, {"ch": "doc:1", "t": "typing", "d": {"who": "http"}})
            assert sent["data"]["publish"]
            received = [json.loads(e.data) for e in await read_events(stream, 4) if e.event == "next"]
            by_op = {m["id"]: m["payload"]["data"] for m in received}
            assert by_op["up"] == {"updatePresence": True}
            assert by_op["pr"]["presence"]["kind"] == "UPDATE"
            assert by_op["pr"]["presence"]["member"]["meta"] == {"line": 2}
            assert by_op["ev"]["channelEvents"]["data"] == {"who": "http"}
        over_http = await gql_post(http, UPDATE, {"ch": "doc:1", "meta": {}})
        assert over_http["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_server_code_publishes_to_an_accounts_channel(auth_server: Server) -> None:
    ws = await open_ws(auth_server, token("alice", "acme"))
    try:
        await ws.subscribe("s", EVENTS, {"c": ["user:alice"]})
        await wait_channel_subscribers(auth_server, 1)
        tidings = auth_server.tidings
        auth_server.call(tidings.publish("user:alice", "notice", {"n": 1}, account="globex"))
        auth_server.call(tidings.publish("user:alice", "notice", {"n": 2}, account="acme"))
        got = await next_data(ws, "s", "channelEvents")
        assert (got["data"], got["sender"]) == ({"n": 2}, None)
    finally:
        await ws.close()


# -- across processes (Redis, PostgreSQL) ----------------------------------------------------------


async def shared_backend(backend: str, tmp_path: Path) -> tuple[str, str]:
    """The --db and --broker of processes sharing channels through ``backend``."""
    if backend == "redis":
        return f"sqlite:///{tmp_path / 'shared.db'}", service_url("TIDINGS_TEST_REDIS_URL", "Redis")
    db = await fresh_database("postgresql", tmp_path)
    return db, db


@pytest.mark.parametrize("backend", ["redis", "postgresql"])
async def test_two_processes_share_events_and_presence_and_a_killed_ones_members_leave(
    tmp_path: Path, backend: str
) -> None:
    db, broker_url = await shared_backend(backend, tmp_path)
    topic = f"tidings:test:{uuid.uuid4().hex}"
    flags = ("--broker", broker_url, "--channel", topic, "--presence-ttl", "1.5")
    near = make_server(tmp_path, db=db, broker=broker_from_url(broker_url), channel=topic, presence_ttl=1.5)
    try:
        async with serving(tmp_path, db, *flags) as far:
            here, there = await open_ws(near), await WS.open(far.ws_url)
            assert (await there.init())["type"] == "connection_ack"
            try:
                await here.subscribe("ev", EVENTS, {"c": ["doc:1"]})
                await here.subscribe("pr", PRESENCE, {"ch": "doc:1", "meta": {"at": "near"}})
                assert (await next_data(here, "pr", "presence"))["count"] == 1
                await there.subscribe("pr", PRESENCE, {"ch": "doc:1", "meta": {"at": "far"}})
                sync = await next_data(there, "pr", "presence")
                assert sync["count"] == 2 and {m["meta"]["at"] for m in sync["members"]} == {"near", "far"}
                joined = await next_data(here, "pr", "presence")
                assert (joined["kind"], joined["member"]["meta"]) == ("JOIN", {"at": "far"})
                sent = await call(there, "p", PUBLISH, {"ch": "doc:1", "t": "typing", "d": {"from": "far"}})
                got = await next_data(here, "ev", "channelEvents")
                assert (got["data"], got["seq"]) == ({"from": "far"}, sent["data"]["publish"])
                far.proc.kill()  # SIGKILL: no graceful leave, its heartbeat just stops
                killed = time.monotonic()
                left = await asyncio.wait_for(next_data(here, "pr", "presence"), 6)
                assert (left["kind"], left["member"]["meta"], left["count"]) == ("LEAVE", {"at": "far"}, 1)
                assert time.monotonic() - killed < 1.5 * 2 + 1
            finally:
                await here.close()
                with contextlib.suppress(Exception):
                    await there.close()
    finally:
        near.stop()


async def test_two_processes_on_one_postgresql_share_numbers_history_and_presence(tmp_path: Path) -> None:
    # --workers --broker postgres: two apps on one database, each with its own LISTEN and pool.
    db = await fresh_database("postgresql", tmp_path)
    declared = [*COLLECTIONS, Channel("room:*", history=50)]
    settings = dict(db=db, channel=f"test-channels-{uuid.uuid4().hex}", presence_ttl=1.5)
    a, b = (make_server(tmp_path, declared, broker_from_url("postgres", db=db), **settings) for _ in range(2))
    on_a, on_b = await open_ws(a), await open_ws(b)
    try:
        for ws, server in ((on_a, a), (on_b, b)):
            await ws.subscribe("ev", EVENTS, {"c": ["room:1"]})
            await wait_channel_subscribers(server, 1)
        published: dict[int, Any] = {}  # seq -> data
        for i in range(6):  # one after the other, in turn on each process
            reply = await call((on_a, on_b)[i % 2], f"p{i}", PUBLISH, {"ch": "room:1", "t": "m", "d": i})
            published[int(reply["data"]["publish"])] = i
        assert len(published) == 6, f"seqs {sorted(published)}: each process numbered on its own"
        async with (  # and at once on both
            httpx.AsyncClient(base_url=a.url, timeout=10) as to_a,
            httpx.AsyncClient(base_url=b.url, timeout=10) as to_b,
        ):
            replies = await asyncio.gather(
                *(gql_post((to_a, to_b)[i % 2], PUBLISH, {"ch": "room:1", "t": "m", "d": 100 + i}) for i in range(20))
            )
        for i, reply in enumerate(replies):
            published[int(reply["data"]["publish"])] = 100 + i
        assert len(published) == 26
        in_order = sorted(published)
        for ws in (on_a, on_b):  # every subscriber, on either process, sees one increasing sequence
            got = [await next_data(ws, "ev", "channelEvents") for _ in range(26)]
            assert [int(g["seq"]) for g in got] == in_order
            assert [g["data"] for g in got] == [published[seq] for seq in in_order]
        cursor = in_order[2]
        for ws in (on_a, on_b):  # whichever process published, after: resumes from the shared history
            await ws.subscribe("r", EVENTS, {"c": ["room:1"], "a": str(cursor)})
            got = [await next_data(ws, "r", "channelEvents") for _ in range(23)]
            assert [int(g["seq"]) for g in got] == in_order[3:]
            assert [g["data"] for g in got] == [published[seq] for seq in in_order[3:]]
            assert await ws.no_message(0.2)
        await on_a.subscribe("pr", PRESENCE, {"ch": "doc:1", "meta": {"at": "a"}})
        assert (await next_data(on_a, "pr", "presence"))["count"] == 1
        await on_b.subscribe("pr", PRESENCE, {"ch": "doc:1", "meta": {"at": "b"}})
        sync = await next_data(on_b, "pr", "presence")
        assert (sync["kind"], sync["count"]) == ("SYNC", 2)
        assert {m["meta"]["at"] for m in sync["members"]} == {"a", "b"}
        joined = await next_data(on_a, "pr", "presence")
        assert (joined["kind"], joined["member"]["meta"]) == ("JOIN", {"at": "b"})
    finally:
        await on_a.close()
        await on_b.close()
        a.stop()
        b.stop()


@collection(name="Note", channels=["room:{room}", "author:{author}"])
class RoomNote:
    room: str
    author: str | None = None
    body: str = ""


async def test_a_collection_write_fans_out_to_its_declared_channels(tmp_path: Path) -> None:
    server = make_server(tmp_path, [RoomNote])
    try:
        ws = await open_ws(server)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            await ws.subscribe("r", EVENTS, {"c": ["room:7"]})
            await wait_channel_subscribers(server, 1)
            create = "mutation($i: CreateNoteInput!) { createNote(input: $i) { id } }"
            await gql_post(http, create, {"i": {"room": "8", "body": "elsewhere"}})
            made = await gql_post(http, create, {"i": {"room": "7", "body": "hello"}})  # no author: that template skips
            got = await next_data(ws, "r", "channelEvents")
            assert (got["channel"], got["type"]) == ("room:7", "note.created")
            assert got["data"]["id"] == made["data"]["createNote"]["id"]
            assert got["data"]["record"]["body"] == "hello"
            assert await ws.no_message(0.2)
        await ws.close()
    finally:
        server.stop()


def test_readme_channel_declarations_run_as_written(tmp_path: Path) -> None:
    from tests.test_readme import readme_blocks
    from tidings.model.toml import load_channels

    (python,) = readme_blocks("Channels and presence", "python")
    namespace: dict[str, Any] = {}
    exec(compile(python, "README.md", "exec"), namespace)
    tidings = namespace["app"].state.tidings
    assert [c.namespace.pattern for c in tidings.channels.rules.namespaces] == ["room:*", "user:$sub", "news:*"]
    assert tidings.collections[0].channels == ("room:{room}",)
    (toml,) = readme_blocks("Channels and presence", "toml")
    path = tmp_path / "channels.toml"
    path.write_text(toml)
    (room,) = load_channels(path)
    assert (room.pattern, room.publish, room.history) == ("room:*", "role:member", 100)


@pytest.mark.parametrize("backend", ["redis", "postgresql"])
async def test_shared_history_resumes_and_says_when_events_are_gone(tmp_path: Path, backend: str) -> None:
    db, broker_url = await shared_backend(backend, tmp_path)
    topic = f"tidings:test:{uuid.uuid4().hex}"
    server = make_server(
        tmp_path,
        [*COLLECTIONS, Channel("room:*", history=3)],
        db=db,
        broker=broker_from_url(broker_url),
        channel=topic,
    )
    try:
        ws = await open_ws(server)
        seqs = [
            (await call(ws, f"p{i}", PUBLISH, {"ch": "room:1", "t": "m", "d": i}))["data"]["publish"] for i in range(5)
        ]
        assert seqs == ["1", "2", "3", "4", "5"]  # numbered per channel, in Redis or PostgreSQL
        gone = await call(ws, "old", EVENTS, {"c": ["room:1"], "a": "1"})  # only 3, 4 and 5 are kept
        assert gone["errors"][0]["extensions"]["code"] == "CURSOR_EXPIRED"
        await ws.subscribe("r", EVENTS, {"c": ["room:1"], "a": "2"})
        assert [(await next_data(ws, "r", "channelEvents"))["data"] for _ in range(3)] == [2, 3, 4]
        await ws.close()
    finally:
        server.stop()


async def test_publish_limits_count_per_connection_and_per_user_across_connections() -> None:
    off = Rate(0.0, 1)
    limits = Limits(
        subscribe=off,
        user_subscribe=off,
        mutations=off,
        queries=off,
        events=off,
        publish=Rate(1.0, 2),
        user_publish=Rate(1.0, 3),
        clock=lambda: 0.0,
    )

    class Conn:  # a connection object, weakly referenceable like the transports'
        pass

    tab1, tab2, other = Conn(), Conn(), Conn()
    assert await limits.check_publish(ALICE, tab1) is None
    assert await limits.check_publish(ALICE, tab1) is None
    per_connection = await limits.check_publish(ALICE, tab1)
    assert per_connection is not None and per_connection.code.value == "RATE_LIMITED"
    assert await limits.check_publish(ALICE, tab2) is None  # the user's third
    per_user = await limits.check_publish(ALICE, tab2)
    assert per_user is not None and "user" in per_user.message and per_user.details["retryAfter"] == 1.0
    assert await limits.check_publish(BOB, other) is None


async def test_a_publish_while_redis_is_down_is_answered_and_logged_as_a_warning(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    redis = redis_server
    server = make_server(tmp_path, broker=broker_from_url(redis.url), presence_ttl=60.0)
    try:
        ws = await open_ws(server)
        assert "errors" not in await call(ws, "ok", PUBLISH, {"ch": "room:1", "t": "m"})
        redis.kill()
        down = await call(ws, "down", PUBLISH, {"ch": "room:1", "t": "m"})
        assert down["errors"][0]["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
        assert "broker is unreachable" in down["errors"][0]["message"]
        await ws.close()
    finally:
        server.stop()
