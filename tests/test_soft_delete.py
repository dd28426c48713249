"""Soft delete and restore: the store over SQLite and PostgreSQL, then over a real server (WS, SSE)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.support.backends import fresh_database
from tests.support.servers import Server, gql_post, make_server, subscribed, wait_subscribers
from tests.support.wsclient import WS
from tests.test_auth import SECRET, token
from tests.test_realtime_sse import read_events, sse_stream
from tests.test_realtime_ws import create, delete, mutate, update
from tidings import Rules, collection
from tidings.errors import ConfigurationError, NotFound
from tidings.events import Operation
from tidings.filters import MATCH_ALL, parse_filter
from tidings.model.collection import collections_from
from tidings.model.toml import _collections
from tidings.realtime import doorbell
from tidings.store import Store


@collection(soft_delete=True)
class Task:
    title: str
    status: str = "open"
    priority: int = 0


@collection
class Message:
    body: str


@collection(soft_delete=True, rules=Rules(read="owner:owner", delete="owner:owner", restore="role:editor"))
class Card:
    title: str
    owner: str | None = None


TASK, MESSAGE = collections_from([Task, Message])
COLLECTIONS = [Task, Message]

EVENTS = """subscription($where: TaskWhere, $after: String) {
  taskEvents(where: $where, after: $after) { operation match seq cursor record { id title status } }
}"""


def summary(message: dict[str, Any]) -> tuple[str, str, str]:
    event = message["payload"]["data"]["taskEvents"]
    return event["operation"], event["match"], event["record"]["title"]


# -- the store, over SQLite and PostgreSQL ---------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    url = await fresh_database(request.param, tmp_path)
    s = Store(url, [TASK, MESSAGE])
    await s.start()
    yield s
    await s.close()


async def test_store_soft_delete_hides_and_restore_brings_back_as_it_was(store: Store) -> None:
    record, _ = await store.create(TASK, {"title": "a"}, account=None, actor=None)
    other, _ = await store.create(TASK, {"title": "b"}, account=None, actor=None)
    rid = record["id"]
    deleted, [gone] = await store.delete(TASK, rid, guard=MATCH_ALL, actor="ann")
    assert deleted == record and "deleted_at" not in deleted
    assert gone.operation is Operation.DELETED and gone.record == record
    assert await store.get(TASK, rid) is None
    async with store.reader() as reader:
        assert [r["id"] for r in await reader.list(TASK, MATCH_ALL)] == [other["id"]]
    with pytest.raises(NotFound):
        await store.update(TASK, rid, {"title": "x"}, expected_version=None, guard=MATCH_ALL, actor=None)
    with pytest.raises(NotFound):
        await store.delete(TASK, rid, guard=MATCH_ALL, actor=None)
    with pytest.raises(NotFound):
        await store.restore(TASK, other["id"], guard=MATCH_ALL, actor=None)  # not deleted: nothing to restore
    title_b = parse_filter({"title": {"eq": "b"}}, TASK.filter_fields)
    with pytest.raises(NotFound):
        await store.restore(TASK, rid, guard=title_b, actor=None)  # outside the guard
    assert await store.get_deleted(TASK, rid) == record
    restored, back = await store.restore(TASK, rid, guard=MATCH_ALL, actor="bob")
    assert restored == record
    assert back.operation is Operation.RESTORED and back.record == record and back.actor == "bob"
    assert back.before() is None and back.after() == record  # views see it enter, like a created record
    assert await store.get(TASK, rid) == record
    assert await store.get_deleted(TASK, rid) is None
    with pytest.raises(NotFound):
        await store.restore(TASK, rid, guard=MATCH_ALL, actor=None)
    log = await store.read_events(0)
    assert [e.operation for e in log] == [Operation.CREATED, Operation.CREATED, Operation.DELETED, Operation.RESTORED]
    assert log[-1] == back
    assert doorbell.decode(doorbell.encode(back), store.collections) == (back.seq, back)


async def test_store_prune_purges_rows_soft_deleted_before_the_window(store: Store) -> None:
    old, _ = await store.create(TASK, {"title": "old"}, account=None, actor=None)
    recent, _ = await store.create(TASK, {"title": "recent"}, account=None, actor=None)
    kept, _ = await store.create(TASK, {"title": "kept"}, account=None, actor=None)
    await store.delete(TASK, old["id"], guard=MATCH_ALL, actor=None)
    window_start = dt.datetime.now(dt.UTC)
    await store.delete(TASK, recent["id"], guard=MATCH_ALL, actor=None)
    await store.prune(keep_after=window_start)
    table = store.tables.by_collection["Task"]
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(table.c.title).order_by(table.c.title))).scalars().all()
    assert rows == ["kept", "recent"]
    with pytest.raises(NotFound):
        await store.restore(TASK, old["id"], guard=MATCH_ALL, actor=None)
    await store.restore(TASK, recent["id"], guard=MATCH_ALL, actor=None)
    assert await store.get(TASK, kept["id"]) == kept


async def test_store_without_soft_delete_deletes_the_row(store: Store) -> None:
    table = store.tables.by_collection["Message"]
    assert "deleted_at" not in table.c and "deleted_at" in store.tables.by_collection["Task"].c
    record, _ = await store.create(MESSAGE, {"body": "hi"}, account=None, actor=None)
    await store.delete(MESSAGE, record["id"], guard=MATCH_ALL, actor=None)
    async with store.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar() == 0
    assert await store.get_deleted(MESSAGE, record["id"]) is None
    with pytest.raises(NotFound):
        await store.restore(MESSAGE, record["id"], guard=MATCH_ALL, actor=None)


def test_toml_soft_delete_setting() -> None:
    fields = {"title": "String!"}
    (on,) = _collections({"collections": {"Task": {"soft_delete": True, "fields": fields}}})
    (off,) = _collections({"collections": {"Task": {"fields": fields}}})
    assert on.soft_delete and not off.soft_delete
    with pytest.raises(ConfigurationError, match="soft_delete must be true or false"):
        _collections({"collections": {"Task": {"soft_delete": "yes", "fields": fields}}})
    (ruled,) = _collections({"collections": {"Task": {"fields": fields, "rules": {"restore": "role:admin"}}}})
    assert ruled.rules is not None and ruled.rules.restore == "role:admin"


# -- over a real server ------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path, COLLECTIONS)
    yield s
    s.stop()


async def restore(http: httpx.AsyncClient, id_: str) -> dict[str, Any]:
    data = await mutate(http, "mutation($id: ID!) { restoreTask(id: $id) { id title status } }", {"id": id_})
    return data["restoreTask"]  # type: ignore[no-any-return]


async def error_code(http: httpx.AsyncClient, query: str, variables: dict[str, Any]) -> str:
    body = await gql_post(http, query, variables)
    assert body.get("data") is None or None in body["data"].values(), body
    return str(body["errors"][0]["extensions"]["code"])


async def test_soft_delete_hides_from_get_and_list_and_subscribers_get_deleted(
    server: Server, http: httpx.AsyncClient
) -> None:
    ws = await subscribed(server, "open", EVENTS, {"where": {"status": {"eq": "open"}}})
    tid = await create(http, title="a")
    await create(http, title="b")
    await delete(http, tid)
    assert [summary(await ws.recv()) for _ in range(3)] == [
        ("CREATED", "ENTERED", "a"),
        ("CREATED", "ENTERED", "b"),
        ("DELETED", "LEFT", "a"),
    ]
    body = await gql_post(http, "query($id: ID!) { task(id: $id) { id } tasks { title } }", {"id": tid})
    assert body["data"] == {"task": None, "tasks": [{"title": "b"}]}
    upd = 'mutation($id: ID!) { updateTask(id: $id, input: {title: "x"}) { id } }'
    assert await error_code(http, upd, {"id": tid}) == "NOT_FOUND"
    assert await error_code(http, "mutation($id: ID!) { deleteTask(id: $id) { id } }", {"id": tid}) == "NOT_FOUND"
    assert await ws.no_message()
    await ws.close()


async def test_restore_sends_restored_to_subscribers_whose_filter_matches(
    server: Server, http: httpx.AsyncClient
) -> None:
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("open", EVENTS, {"where": {"status": {"eq": "open"}}})
    await ws.subscribe("closed", EVENTS, {"where": {"status": {"eq": "closed"}}})
    sse_query = "subscription { taskEvents { operation match record { title } } }"
    async with sse_stream(server.url, sse_query) as stream:
        await wait_subscribers(server, 3)
        tid = await create(http, title="a")
        await delete(http, tid)
        assert await restore(http, tid) == {"id": tid, "title": "a", "status": "open"}
        assert [summary(await ws.recv()) for _ in range(3)] == [
            ("CREATED", "ENTERED", "a"),
            ("DELETED", "LEFT", "a"),
            ("RESTORED", "ENTERED", "a"),
        ]
        sse = [json.loads(e.data)["data"]["taskEvents"] for e in await read_events(stream, 3)]
        assert [(e["operation"], e["match"]) for e in sse] == [
            ("CREATED", "ENTERED"),
            ("DELETED", "LEFT"),
            ("RESTORED", "ENTERED"),
        ]
    assert await ws.no_message()  # "closed" never matched the record
    body = await gql_post(http, "query($id: ID!) { task(id: $id) { title } tasks { title } }", {"id": tid})
    assert body["data"] == {"task": {"title": "a"}, "tasks": [{"title": "a"}]}
    again = "mutation($id: ID!) { restoreTask(id: $id) { id } }"
    assert await error_code(http, again, {"id": tid}) == "NOT_FOUND"  # restoring a live record
    assert await error_code(http, again, {"id": "nope"}) == "NOT_FOUND"
    await update(http, tid, status="closed")
    both = {m["id"]: summary(m) for m in [await ws.recv() for _ in range(2)]}
    assert both == {"open": ("UPDATED", "LEFT", "a"), "closed": ("UPDATED", "ENTERED", "a")}
    await ws.close()


async def test_operations_filter_names_restored(server: Server, http: httpx.AsyncClient) -> None:
    ws = await WS.open(server.ws_url)
    await ws.init()
    query = "subscription { taskEvents(operations: [RESTORED]) { operation record { title } } }"
    await ws.subscribe("r", query)
    await wait_subscribers(server, 1)
    tid = await create(http, title="a")
    await delete(http, tid)
    await restore(http, tid)
    message = await ws.recv()
    assert message["payload"]["data"]["taskEvents"] == {"operation": "RESTORED", "record": {"title": "a"}}
    assert await ws.no_message()
    await ws.close()


async def test_replay_after_a_cursor_spans_delete_and_restore(server: Server, http: httpx.AsyncClient) -> None:
    tid = await create(http, title="a")
    cursor = (await gql_post(http, "{ tasks { id } }"))["extensions"]["cursor"]
    await delete(http, tid)
    await restore(http, tid)
    await update(http, tid, title="a2")
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("resume", EVENTS, {"where": {"status": {"eq": "open"}}, "after": cursor})
    replayed = [summary(await ws.recv()) for _ in range(3)]
    assert replayed == [("DELETED", "LEFT", "a"), ("RESTORED", "ENTERED", "a"), ("UPDATED", "STAYED", "a2")]
    await delete(http, tid)
    assert summary(await ws.recv()) == ("DELETED", "LEFT", "a2")
    assert await ws.no_message()
    await ws.close()


async def test_retention_pass_purges_old_soft_deleted_rows(tmp_path: Path) -> None:
    server = make_server(tmp_path, COLLECTIONS, retention_seconds=3600)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            old, recent = await create(http, title="old"), await create(http, title="recent")
            await delete(http, old)
            await delete(http, recent)
            store = server.tidings.store
            table = store.tables.by_collection["Task"]
            two_hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)

            async def age_old_row() -> None:
                async with store.engine.begin() as conn:
                    await conn.execute(table.update().where(table.c.id == old).values(deleted_at=two_hours_ago))

            server.call(age_old_row())
            server.call(server.tidings.prune())
            restore_q = "mutation($id: ID!) { restoreTask(id: $id) { id } }"
            assert await error_code(http, restore_q, {"id": old}) == "NOT_FOUND"
            assert (await restore(http, recent))["title"] == "recent"
    finally:
        server.stop()


async def test_hard_delete_is_unchanged_without_the_setting(server: Server, http: httpx.AsyncClient) -> None:
    data = await mutate(http, 'mutation { createMessage(input: {body: "hi"}) { id } }')
    mid = data["createMessage"]["id"]
    await mutate(http, "mutation($id: ID!) { deleteMessage(id: $id) { id } }", {"id": mid})
    store = server.tidings.store
    table = store.tables.by_collection["Message"]
    assert "deleted_at" not in table.c

    async def count() -> int:
        async with store.engine.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())

    assert server.call(count()) == 0
    body = await gql_post(http, "mutation($id: ID!) { restoreMessage(id: $id) { id } }", {"id": mid})
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


# -- rules: who may restore, and who hears of it -------------------------------------


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path, [Card], jwt_secret=SECRET, admin_role="root", jwt_leeway=0)
    yield s
    s.stop()


async def as_user(server: Server, tok: str, query: str, variables: dict[str, Any]) -> Any:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        return await gql_post(client, query, variables, headers={"authorization": f"Bearer {tok}"})


CARD_EVENTS = "subscription { cardEvents { operation match record { title owner } } }"
RESTORE_CARD = "mutation($id: ID!) { restoreCard(id: $id) { id title } }"
DELETE_CARD = "mutation($id: ID!) { deleteCard(id: $id) { id } }"


async def card_subscriber(server: Server, tok: str) -> WS:
    ws = await WS.open(server.ws_url)
    assert (await ws.init({"authorization": f"Bearer {tok}"}))["type"] == "connection_ack"
    await ws.subscribe("s", CARD_EVENTS)
    return ws


def card(message: dict[str, Any]) -> tuple[str, str, str]:
    event = message["payload"]["data"]["cardEvents"]
    return event["operation"], event["match"], event["record"]["title"]


async def test_restore_of_a_record_that_left_your_read_guard_is_not_leaked(auth_server: Server) -> None:
    alice, bob, root = token("alice", "acme"), token("bob", "acme"), token("root", "acme", role="root")
    made = await as_user(auth_server, alice, 'mutation { createCard(input: {title: "c"}) { id } }', {})
    cid = made["data"]["createCard"]["id"]
    ws_alice, ws_bob = await card_subscriber(auth_server, alice), await card_subscriber(auth_server, bob)
    await wait_subscribers(auth_server, 2)
    give = 'mutation($id: ID!) { updateCard(id: $id, input: {owner: "bob"}) { id } }'
    assert "errors" not in await as_user(auth_server, root, give, {"id": cid})
    assert card(await ws_alice.recv()) == ("UPDATED", "LEFT", "c")
    assert card(await ws_bob.recv()) == ("UPDATED", "ENTERED", "c")
    assert "errors" not in await as_user(auth_server, root, DELETE_CARD, {"id": cid})
    assert "errors" not in await as_user(auth_server, root, RESTORE_CARD, {"id": cid})
    assert [card(await ws_bob.recv()) for _ in range(2)] == [("DELETED", "LEFT", "c"), ("RESTORED", "ENTERED", "c")]
    # A marker alice may see: her next message is it, not the restore.
    await as_user(auth_server, alice, 'mutation { createCard(input: {title: "marker"}) { id } }', {})
    assert card(await ws_alice.recv()) == ("CREATED", "ENTERED", "marker")
    assert await ws_alice.no_message()
    await ws_alice.close()
    await ws_bob.close()


async def test_restore_rule_decides_who_may_restore(auth_server: Server) -> None:
    alice, bob = token("alice", "acme"), token("bob", "acme")
    editor, stranger = token("eve", "acme", role="editor"), token("mallory", "globex", role="editor")
    made = await as_user(auth_server, alice, 'mutation { createCard(input: {title: "c"}) { id } }', {})
    cid = made["data"]["createCard"]["id"]
    assert "errors" not in await as_user(auth_server, alice, DELETE_CARD, {"id": cid})

    async def code(tok: str) -> str:
        body = await as_user(auth_server, tok, RESTORE_CARD, {"id": cid})
        return str(body["errors"][0]["extensions"]["code"])

    assert await code(alice) == "FORBIDDEN"  # she may read the deleted card, not restore it
    assert await code(bob) == "NOT_FOUND"  # he could never read it: learns nothing
    assert await code(stranger) == "NOT_FOUND"  # another account
    restored = await as_user(auth_server, editor, RESTORE_CARD, {"id": cid})
    assert restored["data"] == {"restoreCard": {"id": cid, "title": "c"}}
    seen = await as_user(auth_server, alice, "query($id: ID!) { card(id: $id) { title } }", {"id": cid})
    assert seen["data"] == {"card": {"title": "c"}}
