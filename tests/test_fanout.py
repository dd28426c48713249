"""Fan-out correctness: grouped execution, and the bounded queue's slow-consumer close.

Speed is measured by bench/, not here. These tests show that sharing one execution
among identical subscriptions never changes what any subscriber receives, and that a
client that stops reading is cut off without holding the others back.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets

from tests.support.servers import Server, make_server, until, wait_subscribers
from tests.support.wsclient import WS
from tidings import Rules, collection

SECRET = "fanout-test-secret-0123456789-abcdefghij"


@collection(rules=Rules(read={"OR": [{"public": {"eq": True}}, {"owner": {"eq": "$sub"}}]}))
class Card:
    title: str
    board: str
    owner: str | None = None
    public: bool = False
    points: int = 0


@dataclass(frozen=True)
class User:
    sub: str
    account: str
    role: str = "member"

    @property
    def token(self) -> str:
        now = int(time.time())
        claims = {"sub": self.sub, "account": self.account, "role": self.role, "iat": now, "exp": now + 600}
        return jwt.encode(claims, SECRET, algorithm="HS256")

    def may_read(self, record: dict[str, Any]) -> bool:
        if self.role == "root":
            return True
        return record["account"] == self.account and (record["public"] or record["owner"] == self.sub)


ALICE, BOB, CAROL, ROOT = (
    User("alice", "acme"),
    User("bob", "acme"),
    User("carol", "globex"),
    User("root", "ops", "root"),
)


@dataclass(frozen=True)
class Change:
    seq: int
    operation: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    changed: tuple[str, ...]


# Three ways to ask for the same events: plain, aliased, and through fragments.
# Each maps an event, as the subscriber may see it, to the exact `data` it must get.
def plain(c: Change, match: str, record: dict[str, Any], previous: dict[str, Any], changed: list[str]) -> Any:
    return {
        "cardEvents": {
            "operation": c.operation,
            "seq": str(c.seq),
            "match": match,
            "record": {"id": record["id"], "title": record["title"], "points": record["points"]},
        }
    }


def aliased(c: Change, match: str, record: dict[str, Any], previous: dict[str, Any], changed: list[str]) -> Any:
    return {
        "e": {
            "op": c.operation,
            "n": str(c.seq),
            "r": {"t": record["title"], "p": record["points"], "o": record["owner"]},
        }
    }


def fragments(c: Change, match: str, record: dict[str, Any], previous: dict[str, Any], changed: list[str]) -> Any:
    return {
        "cardEvents": {
            "match": match,
            "record": {"title": record["title"], "public": record["public"]},
            "previous": {"points": previous.get("points"), "public": previous.get("public")},
            "changedFields": changed,
        }
    }


DOCUMENTS: dict[str, tuple[str, Callable[..., Any]]] = {
    "plain": (
        "subscription($b: String!) { cardEvents(where: {board: {eq: $b}}) "
        "{ operation seq match record { id title points } } }",
        plain,
    ),
    "aliased": (
        "subscription Aliased($b: String!) { e: cardEvents(where: {board: {eq: $b}}) "
        "{ op: operation n: seq r: record { t: title p: points o: owner } } }",
        aliased,
    ),
    "fragments": (
        "fragment C on Card { title public } "
        "fragment E on CardEvent { changedFields previous { points public } } "
        "subscription Frag($b: String!) { cardEvents(where: {board: {eq: $b}}) "
        "{ ... on CardEvent { match } record { ...C } ...E } }",
        fragments,
    ),
}


def expected_data(doc: str, board: str, user: User, change: Change) -> Any | None:
    """What one subscriber must receive for one change, worked out from first principles."""

    def in_view(r: dict[str, Any] | None) -> bool:
        return r is not None and user.may_read(r) and r["board"] == board

    was, now = in_view(change.before), in_view(change.after)
    if not (was or now):
        return None
    match = "STAYED" if was and now else "ENTERED" if now else "LEFT"
    record = change.after if change.after is not None else change.before
    assert record is not None
    previous = {k: change.before[k] for k in change.changed} if change.before and change.operation == "UPDATED" else {}
    changed = list(change.changed)
    if match == "LEFT" and change.after is not None and not user.may_read(change.after):
        # Lost read permission: the subscriber sees the last state it was allowed to see, nothing newer.
        record, previous, changed = change.before or record, {}, []
    return DOCUMENTS[doc][1](change, match, record, previous, changed)


FIELDS = ("title", "board", "owner", "public", "points")  # changedFields come in declaration order


class Board:
    """Makes the changes over HTTP, each as a given user, and remembers them."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.records: dict[str, dict[str, Any]] = {}
        self.changes: list[Change] = []

    async def _call(self, user: User, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.post(
            "/graphql", json={"query": query, "variables": variables}, headers={"authorization": f"Bearer {user.token}"}
        )
        body = r.json()
        assert r.status_code == 200 and "errors" not in body, body
        return dict(next(iter(body["data"].values())))

    def _record(self, data: dict[str, Any], user: User) -> dict[str, Any]:
        return {**data, "account": user.account}

    async def create(self, user: User, **values: Any) -> str:
        data = await self._call(
            user,
            "mutation($i: CreateCardInput!) { createCard(input: $i) { id title board owner public points } }",
            {"i": values},
        )
        after = self._record(data, user)
        self.records[after["id"]] = after
        self.changes.append(Change(len(self.changes) + 1, "CREATED", None, after, FIELDS))
        return str(after["id"])

    async def update(self, user: User, id_: str, **values: Any) -> None:
        before = self.records[id_]
        data = await self._call(
            user,
            "mutation($id: ID!, $i: UpdateCardInput!) { updateCard(id: $id, input: $i) "
            "{ id title board owner public points } }",
            {"id": id_, "i": values},
        )
        after = {**self._record(data, user), "account": before["account"]}
        self.records[id_] = after
        self.changes.append(
            Change(
                len(self.changes) + 1,
                "UPDATED",
                before,
                after,
                tuple(k for k in FIELDS if k in values and before[k] != values[k]),
            )
        )

    async def delete(self, user: User, id_: str) -> None:
        await self._call(user, "mutation($id: ID!) { deleteCard(id: $id) { id } }", {"id": id_})
        before = self.records.pop(id_)
        self.changes.append(Change(len(self.changes) + 1, "DELETED", before, None, ()))


@pytest.fixture
def card_server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path, [Card], jwt_secret=SECRET, admin_role="root")
    yield s
    s.stop()


async def test_grouped_delivery_gives_each_subscriber_what_it_alone_would_get(card_server: Server) -> None:
    users, boards = (ALICE, BOB, CAROL, ROOT), ("x", "y")
    combos = [(doc, board, user) for doc in DOCUMENTS for board in boards for user in users]
    # Two connections per user, each holding one subscription per (document, board):
    # every combination has two members, on different connections.
    conns: dict[tuple[User, int], WS] = {}
    for user in users:
        for copy in (0, 1):
            ws = await WS.open(card_server.ws_url)
            ack = await ws.init({"authorization": f"Bearer {user.token}"})
            assert ack["type"] == "connection_ack", ack
            conns[(user, copy)] = ws
            for doc, board, u in combos:
                if u == user:
                    await ws.subscribe(f"{doc}:{board}", DOCUMENTS[doc][0], {"b": board})
    await wait_subscribers(card_server, 2 * len(combos))
    # Identical (document, variables, permission) share a group; any difference splits:
    # alice and bob differ by the owner clause of the rule, carol by account, root by role.
    assert len(card_server.tidings.dispatcher.groups) == len(combos)

    async with httpx.AsyncClient(base_url=card_server.url, timeout=10) as http:
        b = Board(http)
        c1 = await b.create(ALICE, title="private", board="x", owner="alice", points=1)
        c2 = await b.create(BOB, title="shared", board="x", owner="bob", public=True)
        await b.update(ALICE, c1, public=True)  # bob: ENTERED (now readable)
        await b.update(BOB, c2, points=5)  # STAYED for acme readers of x
        await b.update(ALICE, c1, board="y")  # x: LEFT, y: ENTERED
        c3 = await b.create(CAROL, title="elsewhere", board="x", public=True)
        await b.update(BOB, c2, public=False, title="mine")  # alice: LEFT by permission, bob: STAYED
        await b.update(CAROL, c3, points=2)
        await b.delete(ALICE, c1)  # y: LEFT
        await b.delete(BOB, c2)  # bob and root: LEFT

    expected_total = 0
    for (user, copy), ws in conns.items():
        want: dict[str, list[Any]] = {}
        for doc, board, u in combos:
            if u == user:
                data = [expected_data(doc, board, user, c) for c in b.changes]
                want[f"{doc}:{board}"] = [d for d in data if d is not None]
        n = sum(len(v) for v in want.values())
        expected_total += n
        got: dict[str, list[Any]] = {k: [] for k in want}
        for _ in range(n):
            message = await ws.recv()
            assert message["type"] == "next", message
            assert "errors" not in message["payload"], message
            got[message["id"]].append(message["payload"]["data"])
        assert await ws.no_message(0.3)
        for key in want:
            assert got[key] == want[key], (user.sub, copy, key)
        await ws.close()
    # The scenario reaches every kind of subscriber, so the comparison above says something.
    assert expected_total > 4 * len(conns)


CREATE_MESSAGE = 'mutation($b: String!) { createMessage(input: {room: "r", author: "a", body: $b}) { id } }'


def _slow_socket(port: int) -> socket.socket:
    """A client socket with a tiny receive buffer, so an unread stream backs up fast."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_a_client_that_stops_reading_is_closed_4008_and_others_keep_receiving(tmp_path: Path) -> None:
    server = make_server(tmp_path, queue_messages=20, queue_bytes=200_000)
    try:
        query = 'subscription { messageEvents(where: {room: {eq: "r"}}) { seq record { body } } }'
        fast = [await WS.open(server.ws_url) for _ in range(2)]
        for ws in fast:
            assert (await ws.init())["type"] == "connection_ack"
            await ws.subscribe("1", query)
        slow_conn = await websockets.connect(
            server.ws_url,
            subprotocols=["graphql-transport-ws"],  # type: ignore[list-item]
            sock=_slow_socket(server.port),
            max_queue=1,
            max_size=2**22,
        )
        slow = WS(slow_conn)
        assert (await slow.init())["type"] == "connection_ack"
        await slow.subscribe("1", query)
        await wait_subscribers(server, 3)
        # From here on `slow` reads nothing, while the others read everything as it comes.
        # Each event is ~32 KB on the wire; the kernel buffers a few MB for `slow` before
        # its queue (20 messages, 200 KB) fills, so publish until the server drops it.
        got: list[list[int]] = [[] for _ in fast]

        async def read(ws: WS, seqs: list[int]) -> None:
            while True:
                message = await ws.recv(timeout=30)
                seqs.append(int(message["payload"]["data"]["messageEvents"]["seq"]))

        readers = [asyncio.create_task(read(ws, seqs)) for ws, seqs in zip(fast, got, strict=True)]
        body, published, after_drop = secrets.token_urlsafe(24_000), 0, None
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            while published < 1000 and (after_drop is None or published < after_drop + 10):
                r = await http.post("/graphql", json={"query": CREATE_MESSAGE, "variables": {"b": body}})
                assert "errors" not in r.json()
                published += 1
                if after_drop is None and server.tidings.dispatcher.subscriber_count == 2:
                    after_drop = published  # dropped: its subscription is gone; ten more for the others
            exposition = (await http.get("/metrics")).text
        assert after_drop is not None, "the slow client was never dropped"
        assert 'tidings_slow_consumers_dropped_total{transport="ws"} 1.0' in exposition.splitlines()
        # The others got every event, in order, before and after the slow one was cut off.
        for _ in range(500):
            if all(len(seqs) >= published for seqs in got):
                break
            await asyncio.sleep(0.02)
        for task in readers:
            task.cancel()
        for seqs in got:
            assert seqs == list(range(1, published + 1))
        # ...and when it reads again, once the server has dropped it (its 4008 close frame
        # waiting behind what the socket holds, the connection still open), it finds what it
        # was sent, then the close telling it to resume (not a reset, not a silent open connection).

        async def dropped_and_held() -> bool:
            conns = list(server.tidings.transport.connections)
            return any(getattr(conn, "close_code", None) == 4008 for conn in conns)

        await until(lambda: server.call(dropped_and_held()), timeout=10)
        received = []
        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                received.append(json.loads(await asyncio.wait_for(slow_conn.recv(), 10)))
        assert info.value.rcvd is not None, "the server aborted instead of closing"
        assert info.value.rcvd.code == 4008
        assert "resume" in info.value.rcvd.reason
        seqs = [int(m["payload"]["data"]["messageEvents"]["seq"]) for m in received if m["type"] == "next"]
        assert 0 < len(seqs) < after_drop and seqs == list(range(1, len(seqs) + 1))
        for ws in fast:
            await ws.close()
    finally:
        server.stop()
