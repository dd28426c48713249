"""Channel rules through relations (``read:<Collection>``) over a real server of the rooms example
(examples/rooms/collections.toml), on SQLite and PostgreSQL: a room's channel, presence and typing
for its members only, over WebSocket (both subprotocols) and SSE, re-checked as membership changes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.backends import fresh_database
from tests.support.servers import Server, gql_post, make_server, until
from tests.support.wsclient import WS
from tests.test_auth import SECRET, token
from tests.test_channels import EVENTS, PRESENCE, PUBLISH
from tests.test_readme import the_block
from tests.test_realtime_sse import read_events
from tidings import Channel, create_app
from tidings.auth.channel_rules import ChannelAction
from tidings.auth.principal import Principal
from tidings.auth.rules import Action, Authorizer
from tidings.config import Settings
from tidings.errors import ConfigurationError
from tidings.model.loading import load_channels, load_collections
from tidings.realtime.channel_access import OWN_ID, Ticket, record_plan

EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples" / "rooms" / "collections.toml")


# -- declarations ------------------------------------------------------------------------------


def test_python_toml_and_the_readme_declare_the_same_record_rule(tmp_path: Path) -> None:
    python = Channel("room:{id}", subscribe="read:Room", publish="read:Room", presence="read:Room")
    assert load_channels(EXAMPLE) == [python]
    assert python.record_collections == {"subscribe": "Room", "publish": "Room", "presence": "Room"}
    assert eval(the_block("Relations", "python", "read:Room"), {"Channel": Channel}) == python
    (tmp_path / "c.toml").write_text(the_block("Relations", "toml", "read:Room"))
    assert load_channels(str(tmp_path / "c.toml")) == [python]


def test_what_a_change_tells_about_the_records_to_recheck() -> None:
    authorizer = Authorizer(load_collections(EXAMPLE), multi_tenant=True)
    ann = Principal(sub="ann", account="acme")
    # Room: the changed room; Membership: the rooms its old and new rows name.
    assert record_plan("Room", authorizer.guard("Room", ann, Action.READ)) == {
        "Room": (OWN_ID,),
        "Membership": ("room_id",),
    }
    # Message reaches Room through a reference and Membership two levels down: any message.
    assert record_plan("Message", authorizer.guard("Message", ann, Action.READ)) == {
        "Message": (OWN_ID,),
        "Room": None,
        "Membership": None,
    }


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        (Channel("room:{id}", subscribe="read:Rom"), "rule 'read:Rom' names unknown collection 'Rom'; declared: "),
        ({"pattern": "room:*", "subscribe": "read:Room"}, "'read:Room' needs a {id} segment naming the record"),
        ({"pattern": "room:{room}"}, "unknown placeholder '{room}'; the record segment is {id}"),
        ({"pattern": "room:{id}:{id}"}, "{id} may appear once, got 2"),
        ({"pattern": "room:{id}", "publish": "read:"}, "is not public, authenticated, role:<a,b>, read:<Collection>"),
    ],
)
def test_a_wrong_record_rule_is_refused_at_startup_in_one_line(
    channel: Channel | dict[str, str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        if isinstance(channel, dict):
            channel = Channel(**channel)
        settings = Settings(db=f"sqlite:///{tmp_path / 'x.db'}", jwt_secret=SECRET)
        create_app([*load_collections(EXAMPLE), channel], settings)
    assert message in str(refused.value) and "\n" not in str(refused.value)


# -- over a real server ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("channel-relations")
    url = asyncio.run(fresh_database(request.param, tmp))
    s = make_server(tmp, [*load_collections(EXAMPLE), *load_channels(EXAMPLE)], db=url, jwt_secret=SECRET)
    yield s
    s.stop()


def client(server: Server, sub: str, account: str = "acme") -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token(sub, account)}"})


async def ok(http: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    body = await gql_post(http, query, variables)
    assert "errors" not in body, body
    return body["data"]  # type: ignore[no-any-return]


async def room_with(server: Server, *members: str) -> tuple[str, dict[str, str]]:
    """A room ann owns, and the membership id of each of ``members``."""
    async with client(server, "ann") as ann:
        room = (await ok(ann, 'mutation { r: createRoom(input: {name: "lobby"}) { id } }'))["r"]["id"]
        memberships = {}
        for sub in members:
            made = await ok(
                ann,
                "mutation($r: ID!, $u: String!) { m: createMembership(input: {roomId: $r, userId: $u}) { id } }",
                r=room,
                u=sub,
            )
            memberships[sub] = made["m"]["id"]
    return room, memberships


async def remove(server: Server, membership: str) -> None:
    async with client(server, "ann") as ann:
        await ok(ann, "mutation($id: ID!) { deleteMembership(id: $id) { id } }", id=membership)


async def add(server: Server, room: str, sub: str) -> str:
    async with client(server, "ann") as ann:
        made = await ok(
            ann,
            "mutation($r: ID!, $u: String!) { m: createMembership(input: {roomId: $r, userId: $u}) { id } }",
            r=room,
            u=sub,
        )
    return str(made["m"]["id"])


async def as_user(server: Server, sub: str, subprotocol: str = "graphql-transport-ws") -> WS:
    ws = await WS.open(server.ws_url, subprotocol)
    ack = await ws.init({"authorization": f"Bearer {token(sub, 'acme')}"})
    assert ack["type"] == "connection_ack", ack
    return ws


async def recv_op(ws: WS, op_id: str) -> dict[str, Any]:
    """The next message of operation ``op_id`` (those of others kept for their turn)."""
    backlog: list[dict[str, Any]] = ws.__dict__.setdefault("backlog", [])
    for i, message in enumerate(backlog):
        if message.get("id") == op_id:
            return backlog.pop(i)
    while True:
        message = await ws.recv()
        if message.get("id") == op_id:
            return message
        backlog.append(message)


async def forbidden(ws: WS, op_id: str) -> str:
    """The operation's end: an ``error`` carrying FORBIDDEN (its message returned)."""
    message = await recv_op(ws, op_id)
    assert message["type"] == "error", message
    assert [e["extensions"]["code"] for e in message["payload"]] == ["FORBIDDEN"], message
    return str(message["payload"][0]["message"])


async def data(ws: WS, op_id: str) -> dict[str, Any]:
    message = await recv_op(ws, op_id)
    assert message["type"] in ("next", "data"), message
    return next(iter(message["payload"]["data"].values()))  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def sse(server: Server, sub: str, query: str, variables: dict[str, Any]) -> AsyncIterator[httpx.Response]:
    headers = {"accept": "text/event-stream", "authorization": f"Bearer {token(sub, 'acme')}"}
    params = {"query": query, "variables": json.dumps(variables)}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as http,
        http.stream("GET", "/graphql", params=params, headers=headers) as stream,
    ):
        assert stream.status_code == 200
        yield stream


async def sse_forbidden(stream: httpx.Response) -> str:
    first, last = await read_events(stream, 2)
    assert (first.event, last.event) == ("next", "complete")
    errors = json.loads(first.data)["errors"]
    assert [e["extensions"]["code"] for e in errors] == ["FORBIDDEN"], errors
    return str(errors[0]["message"])


async def settled(server: Server) -> None:
    """Every committed change dispatched in this process, and its re-checks done."""
    tidings = server.tidings
    head = server.call(tidings.store.last_seq())
    await until(lambda: tidings.dispatcher.position >= head and not tidings.channels.access.busy)


async def test_a_non_member_is_refused_on_subscribe_publish_and_presence(server: Server) -> None:
    room, _ = await room_with(server, "bob")
    channel = f"room:{room}"
    cy = await as_user(server, "cy")
    bob = await as_user(server, "bob")
    try:
        await cy.subscribe("e", EVENTS, {"c": [channel]})
        await cy.subscribe("p", PRESENCE, {"ch": channel})
        await forbidden(cy, "e")
        await forbidden(cy, "p")
        async with client(server, "cy") as http:
            published = await gql_post(http, PUBLISH, {"ch": channel, "t": "typing"})
        assert published["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        async with sse(server, "cy", EVENTS, {"c": [channel]}) as stream:
            await sse_forbidden(stream)
        async with sse(server, "cy", PRESENCE, {"ch": channel}) as stream:
            await sse_forbidden(stream)
        # A member (and the owner) may: bob joins, publishes, and hears his own typing.
        await bob.subscribe("p", PRESENCE, {"ch": channel, "meta": {"name": "Bob"}})
        sync = await data(bob, "p")
        assert sync["kind"] == "SYNC" and [m["sub"] for m in sync["members"]] == ["bob"]
        await bob.subscribe("e", EVENTS, {"c": [channel]})
        await until(lambda: server.tidings.channels.access.tracked == 2)
        async with client(server, "bob") as http:
            await ok(http, PUBLISH, ch=channel, t="typing", d={"on": True})
        got = await data(bob, "e")
        assert (got["type"], got["sender"]) == ("typing", {"sub": "bob"})
        assert await cy.no_message(0.1)  # nothing of the room reached the refused ones
    finally:
        await cy.close()
        await bob.close()
        await until(lambda: server.tidings.channels.access.tracked == 0)


async def test_a_hostile_client_cannot_tell_a_missing_room_from_an_unreadable_one(server: Server) -> None:
    room, _ = await room_with(server)
    async with client(server, "eve", "globex") as other:
        foreign = (await ok(other, 'mutation { r: createRoom(input: {name: "theirs"}) { id } }'))["r"]["id"]
    missing = uuid.uuid4().hex
    cy = await as_user(server, "cy")
    try:
        answers = []
        for record in (room, foreign, missing):
            await cy.subscribe(record, EVENTS, {"c": [f"room:{record}"]})
            answers.append((await forbidden(cy, record)).replace(record, "ID"))
            async with client(server, "cy") as http:
                published = await gql_post(http, PUBLISH, {"ch": f"room:{record}", "t": "x"})
            answers.append(published["errors"][0]["message"].replace(record, "ID"))
            async with sse(server, "cy", PRESENCE, {"ch": f"room:{record}"}) as stream:
                answers.append((await sse_forbidden(stream)).replace(record, "ID"))
        assert answers[0:3] == answers[3:6] == answers[6:9], answers
        assert len(set(answers)) == 3  # one sentence per action, nothing about the record
    finally:
        await cy.close()


async def test_removing_a_member_ends_their_presence_and_channel_events_with_forbidden(server: Server) -> None:
    room, memberships = await room_with(server, "bob", "dan")
    channel = f"room:{room}"
    access = server.tidings.channels.access
    ann, dan = await as_user(server, "ann"), await as_user(server, "dan")
    bob, legacy = await as_user(server, "bob"), await as_user(server, "bob", "graphql-ws")
    try:
        await ann.subscribe("p", PRESENCE, {"ch": channel, "meta": {"name": "Ann"}})
        assert (await data(ann, "p"))["kind"] == "SYNC"
        await dan.subscribe("e", EVENTS, {"c": [channel]})
        await bob.subscribe("p", PRESENCE, {"ch": channel, "meta": {"name": "Bob"}})
        assert (await data(bob, "p"))["kind"] == "SYNC"
        await bob.subscribe("e", EVENTS, {"c": [channel]})
        await legacy.subscribe("e", EVENTS, {"c": [channel]})
        joined = await data(ann, "p")
        assert (joined["kind"], joined["member"]["sub"]) == ("JOIN", "bob")
        async with sse(server, "bob", EVENTS, {"c": [channel]}) as stream:
            await until(lambda: access.tracked == 6)
            await settled(server)
            reads, rechecked, skipped = access.reads, access.rechecked, access.skipped
            await remove(server, memberships["bob"])
            for ws in (bob, legacy):
                message = await forbidden(ws, "e")
                assert message == f"Channel {channel!r}: subscribe is for those who may read Room {room}"
            assert (await forbidden(bob, "p")).startswith(f"Channel {channel!r}: presence is for")
            assert await sse_forbidden(stream) == message
            left = await data(ann, "p")
            assert (left["kind"], left["member"]["sub"], left["count"]) == ("LEAVE", "bob", 1)
            await settled(server)
        # Bob's membership cannot change what ann's and dan's guards admit (the rule reads the
        # member's own row): their two operations are not read; bob's four are, in one query.
        assert access.reads - reads == 1 and access.rechecked - rechecked == 4
        assert access.skipped - skipped == 2
        assert access.tracked == 2  # ann's presence and dan's events go on
        async with client(server, "dan") as http:
            await ok(http, PUBLISH, ch=channel, t="typing")
        assert (await data(dan, "e"))["type"] == "typing"
        assert await bob.no_message(0.1)
        # Added again, bob may subscribe again.
        await add(server, room, "bob")
        await bob.subscribe("p2", PRESENCE, {"ch": channel})
        assert {m["sub"] for m in (await data(bob, "p2"))["members"]} == {"ann", "bob"}
        rejoined = await data(ann, "p")
        assert (rejoined["kind"], rejoined["member"]["sub"]) == ("JOIN", "bob")
    finally:
        for ws in (ann, dan, bob, legacy):
            await ws.close()
        await until(lambda: access.tracked == 0)


async def test_only_changes_a_rule_reads_and_only_to_tracked_rooms_are_rechecked(server: Server) -> None:
    room, _ = await room_with(server, "bob")
    other, _ = await room_with(server)
    access = server.tidings.channels.access
    bob = await as_user(server, "bob")
    try:
        await bob.subscribe("p", PRESENCE, {"ch": f"room:{room}"})
        await data(bob, "p")
        await settled(server)
        reads, rechecked = access.reads, access.rechecked
        async with client(server, "bob") as http, client(server, "ann") as ann:
            # Message is no collection Room's read rule reads: nothing to re-check.
            await ok(http, 'mutation($r: ID!) { createMessage(input: {roomId: $r, body: "hi"}) { id } }', r=room)
            # A membership of another room, and that room renamed: no operation of theirs here.
            await add(server, other, "bob")
            await ok(ann, 'mutation($r: ID!) { updateRoom(id: $r, input: {name: "x"}) { id } }', r=other)
            await settled(server)
            assert (access.reads, access.rechecked) == (reads, rechecked)
            # This room renamed: its one operation re-checked (one read), and still admitted.
            await ok(ann, 'mutation($r: ID!) { updateRoom(id: $r, input: {name: "y"}) { id } }', r=room)
            await settled(server)
        assert (access.reads - reads, access.rechecked - rechecked) == (1, 1)
        assert access.tracked == 1 and await bob.no_message(0.1)
    finally:
        await bob.close()
        await until(lambda: access.tracked == 0)


async def test_many_read_guards_are_checked_fifty_to_a_query(server: Server) -> None:
    room, _ = await room_with(server, "u7")
    access = server.tidings.channels.access
    authorizer = server.tidings.authorizer
    scopes = [
        ("Room", authorizer.guard("Room", Principal(sub=f"u{i}", account="acme"), Action.READ), [room, "nope"])
        for i in range(60)
    ]
    reads = access.reads
    assert server.call(access._readable(scopes)) == {(7, room)}
    assert access.reads - reads == 2  # 60 read guards: 50 in one query, 10 in the next


class Operation:
    """An operation as a transport holds it: what ending it sent, and whether it was closed."""

    def __init__(self) -> None:
        self.op_id = "op"
        self.sink = self
        self.ended: list[Any] = []
        self.closed = False

    def push(self, op_id: str, seq: int, payload: str) -> None:
        raise AssertionError("nothing is pushed")

    def finish(self, op_id: str, errors: list[dict[str, Any]] | None = None) -> None:
        self.ended.append(errors)

    def close(self) -> None:
        self.closed = True


async def test_a_membership_change_between_admission_and_tracking_is_rechecked(server: Server) -> None:
    room, memberships = await room_with(server, "bob", "dan")
    access, rules = server.tidings.channels.access, server.tidings.channels.rules
    bob, dan = Principal(sub="bob", account="acme", role="member"), Principal(sub="dan", account="acme")

    def admit(principal: Principal) -> Ticket:
        resolved = rules.resolve(f"room:{room}", principal, ChannelAction.PRESENCE)
        return server.call(access.admit(principal, resolved, ChannelAction.PRESENCE))  # type: ignore[no-any-return]

    async def track(operation: Operation, ticket: Ticket) -> None:
        access.track(operation, [ticket])

    admitted, unchanged = admit(bob), admit(dan)
    # Removed after the admission's read, before the operation was tracked: no change goes unseen.
    await remove(server, memberships["bob"])
    await settled(server)
    removed, kept = Operation(), Operation()
    server.call(track(removed, admitted))
    await until(lambda: removed.closed)
    assert [e["extensions"]["code"] for e in removed.ended[0]] == ["FORBIDDEN"]
    reads = access.reads
    server.call(track(kept, unchanged))  # dan's room changed too: his is re-checked, and stays
    await settled(server)
    assert access.reads == reads + 1 and not kept.ended and not kept.closed
    server.call(_untrack(access, kept))
    assert access.tracked == 0


async def _untrack(access: Any, operation: Operation) -> None:
    access.untrack(operation)
