"""Live queries across relations read again only the groups a related change concerns: a renamed
project, the windows showing it; a membership, the member it is of (tidings/realtime/relevance.py).
The decisions alone, then over a real server on SQLite and PostgreSQL, counting each group's reads."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.backends import fresh_database
from tests.support.servers import Server, make_server
from tests.test_auth import SECRET
from tests.test_relations import COLLECTIONS, authorized_ws, client, follow, new, ok
from tidings.events import ChangeEvent, Operation
from tidings.filters import MATCH_ALL, Compare, FieldKind, Filter, Op, Quantifier, Related
from tidings.realtime.live import LiveGroup
from tidings.realtime.relevance import Relevance
from tidings.realtime.window import Window

# -- the decisions ------------------------------------------------------------------------------


def event(operation: Operation, record: dict[str, Any], previous: dict[str, Any] | None = None) -> ChangeEvent:
    now = dt.datetime.now(dt.UTC)
    rid = record["id"]
    return ChangeEvent(1, "memberships", operation, rid, "acme", record, previous or {}, (), now, None)


def is_(column: str, value: Any) -> Compare:
    return Compare(column, FieldKind.STRING, Op.EQ, value)


def members(quantifier: Quantifier, item: Filter) -> Related:
    return Related("members", quantifier, "id", "memberships", "room_id", False, MATCH_ALL, item)


def loaded() -> Window:
    kept = Window([], 0, 10, lambda r: True)
    kept.load([])  # read: no longer stale (a stale value is read again whatever the event)
    return kept


BOB_IN_R1 = {"id": "m1", "user_id": "bob", "room_id": "r1"}
DAN_IN_R1 = {"id": "m2", "user_id": "dan", "room_id": "r1"}


@pytest.mark.parametrize(
    ("quantifier", "change", "expected"),
    [
        # some and none: only a row matching the filter, before or after, counts
        (Quantifier.SOME, event(Operation.CREATED, DAN_IN_R1), False),
        (Quantifier.SOME, event(Operation.CREATED, BOB_IN_R1), True),
        (Quantifier.SOME, event(Operation.DELETED, BOB_IN_R1), True),
        (Quantifier.SOME, event(Operation.UPDATED, {**DAN_IN_R1, "room_id": "r2"}, {"room_id": "r1"}), False),
        (Quantifier.SOME, event(Operation.UPDATED, {**BOB_IN_R1, "room_id": "r2"}, {"room_id": "r1"}), True),
        (Quantifier.SOME, event(Operation.UPDATED, {**DAN_IN_R1, "user_id": "bob"}, {"user_id": "dan"}), True),
        (Quantifier.NONE, event(Operation.DELETED, DAN_IN_R1), False),
        (Quantifier.NONE, event(Operation.DELETED, BOB_IN_R1), True),
        # a row that counts alike before and after, under the same parent, moves nothing
        (Quantifier.SOME, event(Operation.UPDATED, {**BOB_IN_R1, "note": "b"}, {"note": "a"}), False),
        # every: a row failing the filter decides
        (Quantifier.EVERY, event(Operation.CREATED, DAN_IN_R1), True),
    ],
)
def test_a_related_row_matters_when_it_counts_before_or_after(
    quantifier: Quantifier, change: ChangeEvent, expected: bool
) -> None:
    relevance = Relevance(members(quantifier, is_("user_id", "bob")), (), "messages")
    assert relevance.may_change(change, loaded()) is expected


def test_to_one_matters_when_its_answer_changes() -> None:
    archived = Related("project", Quantifier.ONE, "project_id", "memberships", "id", False, MATCH_ALL, is_("x", "y"))
    relevance = Relevance(archived, (), "tasks")
    kept = loaded()
    same = event(Operation.UPDATED, {"id": "p", "x": "y", "name": "new"}, {"name": "old"})
    moved = event(Operation.UPDATED, {"id": "p", "x": "z"}, {"x": "y"})
    assert not relevance.may_change(same, kept)
    assert relevance.may_change(moved, kept)
    assert relevance.may_change(event(Operation.DELETED, {"id": "p", "x": "y"}), kept)


@pytest.mark.parametrize(
    "node",
    [
        members(Quantifier.SOME, members(Quantifier.SOME, MATCH_ALL)),  # relations below: not told either
        members(Quantifier.SOME, Compare("updated_at", FieldKind.DATETIME, Op.GT, dt.datetime.now(dt.UTC))),
    ],
)
def test_what_the_event_cannot_tell_always_matters(node: Related) -> None:
    relevance = Relevance(node, (), "messages")
    assert relevance.may_change(event(Operation.CREATED, DAN_IN_R1), loaded())


# -- over a real server -------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("relevance")
    url = asyncio.run(fresh_database(request.param, tmp))
    s = make_server(tmp, COLLECTIONS, db=url, jwt_secret=SECRET, jwt_leeway=0)
    yield s
    s.stop()


async def live(server: Server, query: str, variables: dict[str, Any], sub: str = "ann") -> tuple[Any, Any, LiveGroup]:
    """A live operation, its client and its group (the one its variables name)."""
    from tests.test_live import LiveClient

    ws = await authorized_ws(server, sub)
    await ws.subscribe("1", query, variables)
    kept = LiveClient()
    kept.take((await ws.recv())["payload"])
    newest = list(server.tidings.engine.live_hub.groups.values())[-1]  # groups are kept in creation order
    return ws, kept, newest


BOARD = """query($p: ID!) @live {
  tasks(where: {projectId: {eq: $p}}, orderBy: [{createdAt: DESC}], limit: 5) { title project { name } }
}"""
PROJECT = (
    """query($id: ID!) @live { project(id: $id) { name tasks(orderBy: [{createdAt: DESC}], limit: 3) { title } } }"""
)
ROOM = (
    """query($r: ID!) @live { messages(where: {roomId: {eq: $r}}, orderBy: [{createdAt: ASC}], limit: 10) { body } }"""
)
RENAME = "mutation($id: ID!, $n: String!) { updateProject(id: $id, input: {name: $n}) { id } }"
POST = "mutation($r: ID!, $b: String!) { createMessage(input: {roomId: $r, body: $b}) { id } }"


async def test_a_renamed_project_reads_again_only_the_windows_showing_it(server: Server) -> None:
    async with client(server) as http:
        a, b = await new(http, "Project", name="A"), await new(http, "Project", name="B")
        await new(http, "Task", title="a1", projectId=a)
        await new(http, "Task", title="b1", projectId=b)
        ws_a, live_a, group_a = await live(server, BOARD, {"p": a})
        ws_b, live_b, group_b = await live(server, BOARD, {"p": b})
        try:
            assert group_a is not group_b
            await ok(http, RENAME, id=b, n="B2")
            await follow(ws_b, live_b, await ok(http, BOARD.replace(" @live", ""), p=b))
            assert live_b.data["tasks"] == [{"title": "b1", "project": {"name": "B2"}}]
            # A's window applies its own task (which reaches it after the rename, in seq order)
            # with the project its other row shows: no read at all.
            await new(http, "Task", title="a2", projectId=a)
            await follow(ws_a, live_a, await ok(http, BOARD.replace(" @live", ""), p=a))
            assert (group_a.reads, group_a.reloads, group_b.reloads) == (0, 0, 1)
            await ok(http, RENAME, id=a, n="A2")
            await follow(ws_a, live_a, await ok(http, BOARD.replace(" @live", ""), p=a))
            assert {t["project"]["name"] for t in live_a.data["tasks"]} == {"A2"}
            assert (group_a.reloads, group_b.reloads) == (1, 1)
        finally:
            await ws_a.close()
            await ws_b.close()


async def test_a_task_elsewhere_reads_no_project_with_its_tasks_again(server: Server) -> None:
    async with client(server) as http:
        a, b = await new(http, "Project", name="PA"), await new(http, "Project", name="PB")
        ws, kept, group = await live(server, PROJECT, {"id": a})
        try:
            await new(http, "Task", title="elsewhere", projectId=b)
            await new(http, "Task", title="here", projectId=a)
            await follow(ws, kept, await ok(http, PROJECT.replace(" @live", ""), id=a))
            assert kept.data["project"]["tasks"] == [{"title": "here"}]
            assert group.reloads == 1  # for "here" only: its tasks are what the project shows
            reads = group.reads
            await ok(http, RENAME, id=a, n="PA2")  # its own change: its tasks as they were, no read
            await follow(ws, kept, {"project": {"name": "PA2", "tasks": [{"title": "here"}]}})
            assert group.reads == reads
        finally:
            await ws.close()


async def test_a_membership_reads_again_only_the_member_it_is_of(server: Server) -> None:
    async with client(server, "ann") as ann, client(server, "cy") as cy:
        room = await new(ann, "Room", name="relevance")
        bob = await new(ann, "Membership", roomId=room, userId="bob")
        await new(ann, "Membership", roomId=room, userId="cy")
        await ok(cy, POST, r=room, b="first")
        ws_b, live_b, group_b = await live(server, ROOM, {"r": room}, sub="bob")
        ws_c, live_c, group_c = await live(server, ROOM, {"r": room}, sub="cy")
        try:
            assert group_b is not group_c and live_b.data == live_c.data == {"messages": [{"body": "first"}]}
            await new(ann, "Membership", roomId=room, userId="dan")  # nobody live is dan
            await ok(cy, POST, r=room, b="second")  # a fence: applied by every member's window
            expected = {"messages": [{"body": "first"}, {"body": "second"}]}
            await follow(ws_b, live_b, expected)
            await follow(ws_c, live_c, expected)
            assert (group_b.reloads, group_c.reloads) == (0, 0)
            await ok(ann, "mutation($id: ID!) { deleteMembership(id: $id) { id } }", id=bob)
            await follow(ws_b, live_b, {"messages": []})
            assert group_b.reloads == 1
            await ok(cy, POST, r=room, b="third")  # a fence again: cy's window has seen bob leave
            await follow(ws_c, live_c, {"messages": [{"body": "first"}, {"body": "second"}, {"body": "third"}]})
            assert group_c.reloads == 0  # cy's view does not depend on bob's membership
        finally:
            await ws_b.close()
            await ws_c.close()


UPDATE = "mutation($id: ID!, $v: UpdateTaskInput!) { updateTask(id: $id, input: $v) { id } }"


@pytest.mark.parametrize(
    "nested",
    [
        "project { name }",  # its own changes applied, each read with its project
        "project { name tasks(orderBy: [{priority: DESC}], limit: 2) { title } }",  # leads back to tasks: re-read
    ],
)
async def test_a_window_nesting_relations_equals_a_fresh_query_after_random_changes(
    server: Server, nested: str
) -> None:
    rng = random.Random(25)
    query = f"""query($tag: String!) @live {{
      tasks(where: {{title: {{startsWith: $tag}}}}, orderBy: [{{priority: DESC}}], limit: 4, offset: 1) {{
        title priority {nested}
      }}
    }}"""
    async with client(server) as http:
        tag = f"r{id(http)}-"
        projects = [await new(http, "Project", name=f"P{i}") for i in range(4)]
        tasks = [await new(http, "Task", title=f"{tag}{i}", priority=i, projectId=projects[i % 4]) for i in range(8)]
        ws, kept, _ = await live(server, query, {"tag": tag})
        kinds = ["create"] * 2 + ["priority"] * 3 + ["move"] * 3 + ["unlink", "delete", "retitle"] + ["rename"] * 2
        try:
            for n in range(60):
                kind, task = rng.choice(kinds), rng.choice(tasks)
                project = rng.choice([*projects, None])
                if kind == "create" or len(tasks) < 4:
                    v = {"title": f"{tag}n{n}", "priority": rng.randint(0, 9), "projectId": project}
                    tasks.append(await new(http, "Task", **v))
                elif kind == "priority":
                    await ok(http, UPDATE, id=task, v={"priority": rng.randint(0, 9)})
                elif kind == "move":
                    await ok(http, UPDATE, id=task, v={"projectId": project or projects[0]})
                elif kind == "unlink":
                    await ok(http, UPDATE, id=task, v={"projectId": None})
                elif kind == "delete":
                    tasks.remove(task)
                    await ok(http, "mutation($id: ID!) { deleteTask(id: $id) { id } }", id=task)
                elif kind == "rename":
                    await ok(http, RENAME, id=rng.choice(projects), n=f"P{n}")
                else:  # leaves the view, or comes back
                    await ok(http, UPDATE, id=task, v={"title": rng.choice([tag, "x"]) + f"t{n}"})
                await follow(ws, kept, await ok(http, query.replace(" @live", ""), tag=tag))
        finally:
            await ws.close()
