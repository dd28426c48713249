"""Order, ids, connections and aggregates over a real server, on SQLite and PostgreSQL: creation
order by default, time-ordered record ids, events with ids of their own, lists cut at
--max-limit saying so, keyset connections that neither skip nor repeat a row while others
write, aggregates in SQL and live under read rules and tenants."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.authdemo import COLLECTIONS as AUTH_COLLECTIONS
from tests.support.backends import fresh_database
from tests.support.servers import Server, gql_post, make_server, wait_subscribers
from tests.support.wsclient import WS
from tests.test_auth import SECRET, call, create_note, token
from tests.test_live import LiveClient
from tests.test_readme import readme_blocks
from tests.test_realtime_ws import create, delete, update

MAX_LIMIT = 12
PAGE = """query Page($first: Int, $after: String, $last: Int, $before: String, $where: TaskWhere,
                     $orderBy: [TaskOrderBy!]) {
  tasksConnection(first: $first, after: $after, last: $last, before: $before, where: $where, orderBy: $orderBy) {
    edges { cursor node { id title priority } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    totalCount
  }
}"""
AGGREGATE = """query Figures($where: TaskWhere, $groupBy: [TaskGroupField!]) {
  tasksAggregate(where: $where, groupBy: $groupBy) {
    groups { key { status } count sum { priority } avg { priority } min { priority dueAt } max { priority dueAt } }
  }
}"""


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp_path = tmp_path_factory.mktemp(f"pages-{request.param}")
    url = asyncio.run(fresh_database(request.param, tmp_path))
    s = make_server(tmp_path, db=url, max_limit=MAX_LIMIT)
    yield s
    s.stop()


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


async def ok(http: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None) -> Any:
    body = await gql_post(http, query, variables)
    assert "errors" not in body, body
    return body


def tag() -> str:
    """A status of this test's own: the module's server is shared."""
    return uuid.uuid4().hex[:8]


# -- order and ids ----------------------------------------------------------------------


async def test_lists_and_connections_default_to_creation_order(server: Server, http: httpx.AsyncClient) -> None:
    status = tag()
    made = [await create(http, title=title, status=status) for title in ("third-made-first", "b", "a")]
    where = {"status": {"eq": status}}
    body = await ok(http, "query($w: TaskWhere) { tasks(where: $w) { id } }", {"w": where})
    assert [t["id"] for t in body["data"]["tasks"]] == made
    page = await ok(http, PAGE, {"where": where})
    assert [e["node"]["id"] for e in page["data"]["tasksConnection"]["edges"]] == made
    # New ids are UUIDv7: their order is their creation order too.
    assert all(uuid.UUID(i).version == 7 for i in made) and made == sorted(made)


async def test_events_have_ids_of_their_own_and_the_record_keeps_its_id(
    server: Server, http: httpx.AsyncClient
) -> None:
    ws = await WS.open(server.ws_url)
    assert (await ws.init())["type"] == "connection_ack"
    status = tag()
    await ws.subscribe(
        "1",
        "subscription($w: TaskWhere) { taskEvents(where: $w) { id cursor record { id } } }",
        {"w": {"status": {"eq": status}}},
    )
    await wait_subscribers(server, 1)
    record_id = await create(http, title="x", status=status)
    event = (await ws.recv())["payload"]["data"]["taskEvents"]
    await ws.close()
    assert event["record"]["id"] == record_id
    assert event["id"] == f"TaskEvent:{event['cursor']}" != record_id


async def test_a_list_cut_at_max_limit_says_so_in_extensions(server: Server, http: httpx.AsyncClient) -> None:
    status = tag()
    where = {"status": {"eq": status}}
    for i in range(MAX_LIMIT):
        await create(http, title=f"t{i}", status=status)
    query = "query($w: TaskWhere, $l: Int) { tasks(where: $w, limit: $l) { id } mine: tasks(where: $w) { id } }"
    body = await ok(http, query, {"w": where})
    assert len(body["data"]["mine"]) == MAX_LIMIT and "truncated" not in body["extensions"]  # all of them
    await create(http, title="one too many", status=status)
    body = await ok(http, query, {"w": where})
    assert len(body["data"]["tasks"]) == len(body["data"]["mine"]) == MAX_LIMIT
    cut = sorted(body["extensions"]["truncated"], key=lambda t: t["path"])
    assert cut == [{"path": ["mine"], "limit": MAX_LIMIT}, {"path": ["tasks"], "limit": MAX_LIMIT}]
    body = await ok(http, query, {"w": where, "l": MAX_LIMIT})  # a limit given is what was asked for
    assert body["extensions"]["truncated"] == [{"path": ["mine"], "limit": MAX_LIMIT}]


# -- connections --------------------------------------------------------------------------


async def _pages(
    http: httpx.AsyncClient, where: dict[str, Any], order: list[dict[str, str]] | None, size: int, *, backward: bool
) -> list[dict[str, Any]]:
    """Every page, first to last (or last to first), as a client pages through."""
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        variables: dict[str, Any] = {"where": where, "orderBy": order}
        variables.update({"last": size, "before": cursor} if backward else {"first": size, "after": cursor})
        page = (await ok(http, PAGE, variables))["data"]["tasksConnection"]
        pages.append(page)
        info = page["pageInfo"]
        if not (info["hasPreviousPage"] if backward else info["hasNextPage"]):
            return pages
        cursor = info["startCursor"] if backward else info["endCursor"]


@pytest.mark.parametrize(
    "order", [None, [{"priority": "DESC"}], [{"assignedTo": "ASC"}, {"title": "DESC"}], [{"dueAt": "ASC"}]]
)
async def test_paging_forward_and_backward_gives_the_list_in_order_once(
    server: Server, http: httpx.AsyncClient, order: list[dict[str, str]] | None
) -> None:
    status = tag()
    where = {"status": {"eq": status}}
    base = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    for i in range(11):
        await create(
            http,
            title=f"t{i % 4}",
            status=status,
            priority=[0, 1, 2][i % 4 % 3],
            assignedTo=[None, "ann", "bob"][i % 3],
            dueAt=None if i % 5 == 0 else (base + dt.timedelta(hours=i % 3)).isoformat(),
        )
    listed = (
        await ok(
            http,
            "query($w: TaskWhere, $o: [TaskOrderBy!]) { tasks(where: $w, orderBy: $o) { id } }",
            {"w": where, "o": order},
        )
    )["data"]["tasks"]
    ids = [t["id"] for t in listed]
    forward = await _pages(http, where, order, 3, backward=False)
    assert [e["node"]["id"] for p in forward for e in p["edges"]] == ids
    assert [p["pageInfo"]["hasPreviousPage"] for p in forward] == [False] + [True] * (len(forward) - 1)
    assert all(p["totalCount"] == 11 for p in forward)
    backward = await _pages(http, where, order, 4, backward=True)
    assert [e["node"]["id"] for p in reversed(backward) for e in p["edges"]] == ids
    assert [p["pageInfo"]["hasNextPage"] for p in backward] == [False] + [True] * (len(backward) - 1)
    first = forward[0]
    assert first["pageInfo"]["startCursor"] == first["edges"][0]["cursor"]
    assert first["pageInfo"]["endCursor"] == first["edges"][-1]["cursor"]


async def test_connection_arguments_are_checked(server: Server, http: httpx.AsyncClient) -> None:
    where = {"status": {"eq": tag()}}
    await create(http, title="a", status=where["status"]["eq"])
    cursor = (await ok(http, PAGE, {"where": where, "first": 1}))["data"]["tasksConnection"]["pageInfo"]["endCursor"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"first": 1, "last": 1}, "last"),
        ({"first": MAX_LIMIT + 1}, "first"),
        ({"last": -1}, "last"),
        ({"after": "garbage!"}, "after"),
        ({"after": cursor, "orderBy": [{"priority": "DESC"}]}, "after"),  # made for another order
        ({"last": 1, "before": cursor[:-2]}, "before"),
    ]
    for variables, field in cases:
        body = await gql_post(http, PAGE, {"where": where, **variables})
        assert body["data"] is None
        error = body["errors"][0]
        assert (error["extensions"]["code"], error["extensions"]["field"]) == ("BAD_USER_INPUT", field), variables
    # Neither first nor last: a page of --max-limit rows, and hasNextPage says whether more follow.
    page = (await ok(http, PAGE, {"where": where}))["data"]["tasksConnection"]
    assert len(page["edges"]) == 1 and page["pageInfo"]["hasNextPage"] is False


async def _page_while_writing(http: httpx.AsyncClient, rng: random.Random, order: Any) -> None:
    status = tag()
    where = {"status": {"eq": status}}
    initial = [
        await create(http, title=f"t{rng.randrange(5)}", status=status, priority=rng.randrange(4)) for _ in range(30)
    ]
    doomed = set(rng.sample(initial, 10))
    stayed = [i for i in initial if i not in doomed]
    stop = asyncio.Event()
    pending = list(doomed)  # the initial rows the writers delete, and those they create
    writes = 0

    async def write() -> None:
        nonlocal writes
        while not stop.is_set():
            if pending and rng.random() < 0.5:
                await delete(http, pending.pop(rng.randrange(len(pending))))
            else:
                pending.append(
                    await create(http, title=f"t{rng.randrange(5)}", status=status, priority=rng.randrange(4))
                )
            writes += 1

    writers = [asyncio.create_task(write()) for _ in range(2)]
    seen: list[str] = []
    cursor = None
    try:
        while True:
            variables = {"where": where, "orderBy": order, "first": 4, "after": cursor}
            page = (await ok(http, PAGE, variables))["data"]["tasksConnection"]
            seen += [e["node"]["id"] for e in page["edges"]]
            await asyncio.sleep(0)  # let the writers in between pages
            if not page["pageInfo"]["hasNextPage"]:
                break
            cursor = page["pageInfo"]["endCursor"]
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert writes > 5, "the writers hardly wrote while the reader paged"
    assert len(seen) == len(set(seen)), "a row was seen twice"
    assert set(stayed) <= set(seen), "a row that existed throughout was skipped"


async def test_paging_while_others_insert_and_delete_sees_every_row_that_stayed_exactly_once(
    server: Server, http: httpx.AsyncClient
) -> None:
    """The keyset property, on random data: a reader pages through while two writers insert and
    delete around it (the rows it pages over included)."""
    rng = random.Random(27)
    for order in (None, [{"priority": "ASC"}], [{"title": "DESC"}, {"priority": "DESC"}]):
        await _page_while_writing(http, rng, order)


# -- aggregates ---------------------------------------------------------------------------


async def test_aggregate_grouped_and_whole_in_sql(server: Server, http: httpx.AsyncClient) -> None:
    status = tag()
    base = dt.datetime(2032, 5, 1, tzinfo=dt.UTC)
    rows = [("open", 3, 1), ("open", 4, 2), ("open", 5, None), ("done", 1, 4)]
    for state, priority, day in rows:
        await create(
            http,
            title="x",
            status=f"{status}-{state}",
            priority=priority,
            dueAt=None if day is None else (base + dt.timedelta(days=day)).isoformat(),
        )
    where = {"status": {"startsWith": status}}
    body = await ok(http, AGGREGATE, {"where": where, "groupBy": ["status"]})
    day = lambda n: (base + dt.timedelta(days=n)).isoformat()  # noqa: E731
    assert body["data"]["tasksAggregate"]["groups"] == [
        {
            "key": {"status": f"{status}-done"},
            "count": 1,
            "sum": {"priority": 1.0},
            "avg": {"priority": 1.0},
            "min": {"priority": 1, "dueAt": day(4)},
            "max": {"priority": 1, "dueAt": day(4)},
        },
        {
            "key": {"status": f"{status}-open"},
            "count": 3,
            "sum": {"priority": 12.0},
            "avg": {"priority": 4.0},
            "min": {"priority": 3, "dueAt": day(1)},
            "max": {"priority": 5, "dueAt": day(2)},
        },
    ]
    whole = await ok(http, AGGREGATE, {"where": where})
    assert [(g["key"], g["count"], g["sum"]) for g in whole["data"]["tasksAggregate"]["groups"]] == [
        ({"status": None}, 4, {"priority": 13.0})
    ]
    nothing = await ok(http, AGGREGATE, {"where": {"status": {"eq": tag()}}})
    assert nothing["data"]["tasksAggregate"]["groups"] == [
        {
            "key": {"status": None},
            "count": 0,
            "sum": {"priority": None},
            "avg": {"priority": None},
            "min": {"priority": None, "dueAt": None},
            "max": {"priority": None, "dueAt": None},
        }
    ]


LIVE_FIGURES = """query Figures($where: TaskWhere) @live {
  byStatus: tasksAggregate(where: $where, groupBy: [status]) {
    groups { key { status } count sum { priority } avg { priority } max { priority } }
  }
  n: tasksCount(where: $where)
  page: tasksConnection(where: $where, first: 2, orderBy: [{priority: DESC}]) {
    edges { cursor node { id priority } } pageInfo { hasNextPage hasPreviousPage endCursor } totalCount
  }
}"""


async def test_live_aggregate_and_connection_follow_every_change_reading_only_when_the_max_leaves(
    server: Server, http: httpx.AsyncClient
) -> None:
    status = tag()
    where = {"status": {"startsWith": status}}
    plain = LIVE_FIGURES.replace(" @live", "")
    a = await create(http, title="a", status=f"{status}-x", priority=5)
    ws = await WS.open(server.ws_url)
    assert (await ws.init())["type"] == "connection_ack"
    await ws.subscribe("1", LIVE_FIGURES, {"where": where})
    client = LiveClient()
    client.take((await ws.recv())["payload"])
    group = next(g for g in server.tidings.engine.live_hub.groups.values() if g.members)

    async def settle(expect_reads: int) -> None:
        expected = (await ok(http, plain, {"where": where}))["data"]
        while client.data != expected:
            client.take((await ws.recv())["payload"])
        assert group.reads == expect_reads

    assert client.data == (await ok(http, plain, {"where": where}))["data"]
    b = await create(http, title="b", status=f"{status}-x", priority=2)
    await settle(0)
    c = await create(http, title="c", status=f"{status}-y", priority=9)
    await settle(0)
    await update(http, b, priority=3)  # not an extreme: sums move, no read
    await settle(0)
    await update(http, c, status=f"{status}-x")  # moves group: y goes, x's max becomes 9
    await settle(0)
    await delete(http, b)  # sums and the page follow; the max (9) stays: no read
    await settle(0)
    await delete(http, c)  # the max of x left: read again (one bounded query)
    await settle(1)
    await delete(http, a)  # the group's last row: it goes, no read
    await settle(1)
    assert client.data["byStatus"]["groups"] == [] and client.data["n"] == 0
    await ws.close()


async def test_aggregates_and_connections_keep_to_read_rules_and_tenants(tmp_path: Path) -> None:
    server = make_server(tmp_path, AUTH_COLLECTIONS, jwt_secret=SECRET, admin_role="root", jwt_leeway=0)
    try:
        ann, bob = token("ann", "acme"), token("bob", "globex")
        for title in ("a1", "a2"):
            await create_note(server, ann, title)
        await create_note(server, bob, "b1")
        await create_note(server, ann, "a3", secret=True)
        query = """{ notesAggregate(groupBy: [secret]) { groups { key { secret } count } }
                     notesConnection(first: 10) { edges { node { title } } totalCount } }"""
        for who, tok, groups, titles in (
            ("ann", ann, [({"secret": False}, 2), ({"secret": True}, 1)], ["a1", "a2", "a3"]),
            ("bob", bob, [({"secret": False}, 1)], ["b1"]),
        ):
            body = (await call(server, tok, query)).json()
            assert "errors" not in body, (who, body)
            assert [(g["key"], g["count"]) for g in body["data"]["notesAggregate"]["groups"]] == groups
            assert [e["node"]["title"] for e in body["data"]["notesConnection"]["edges"]] == titles
            assert body["data"]["notesConnection"]["totalCount"] == len(titles)
        anonymous = (await call(server, None, query)).json()
        assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    finally:
        server.stop()


@pytest.mark.parametrize("section", ["Pagination", "Aggregates"])
async def test_readme_queries_run_as_written(server: Server, http: httpx.AsyncClient, section: str) -> None:
    await create(http, title="shown", status="open", priority=2, dueAt="2030-01-01T00:00:00+00:00")
    blocks = readme_blocks(section, "graphql")
    assert blocks
    for block in blocks:
        data = (await ok(http, block))["data"]
        assert data and all(value is not None for value in data.values()), block
