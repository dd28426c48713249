"""A change to a related row moves records into or out of an event subscription's view: the
project is archived, a member leaves the room. Over a real server on SQLite and PostgreSQL,
over WebSocket and SSE, live and on resume."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.backends import fresh_database
from tests.support.servers import Server, make_server, wait_subscribers
from tests.support.wsclient import WS
from tests.test_auth import SECRET, token
from tests.test_relations import COLLECTIONS, POST, authorized_ws, client, new, ok


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("related-changes")
    url = asyncio.run(fresh_database(request.param, tmp))
    s = make_server(tmp, COLLECTIONS, db=url, jwt_secret=SECRET, admin_role="root", jwt_leeway=0)
    yield s
    s.stop()


ARCHIVE = "mutation($id: ID!, $a: Boolean!) { updateProject(id: $id, input: {archived: $a}) { id } }"
OPEN_TASKS = """subscription($after: String) {
  taskEvents(where: {project: {archived: {eq: false}}}, after: $after) {
    id operation match seq cursor changedFields record { title project { name } }
  }
}"""
ROOM_MESSAGES = """subscription($r: ID, $after: String) {
  messageEvents(where: {roomId: {eq: $r}}, after: $after) { id operation match cursor record { body } }
}"""
LEAVE = "mutation($id: ID!) { deleteMembership(id: $id) { id } }"


async def frames(ws: WS, n: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        message = await ws.recv()
        assert message["type"] == "next", message
        out.append(next(iter(message["payload"]["data"].values())))
    return out


async def test_archiving_a_project_moves_its_tasks_out_of_view_and_back(server: Server) -> None:
    async with client(server) as http:
        apollo = await new(http, "Project", name="Apollo")
        gemini = await new(http, "Project", name="Gemini")
        await new(http, "Task", title="a1", projectId=apollo)
        await new(http, "Task", title="a2", projectId=apollo)
        await new(http, "Task", title="g1", projectId=gemini)
        ws = await authorized_ws(server)
        try:
            await ws.subscribe("t", OPEN_TASKS)
            await wait_subscribers(server, 1)
            await ok(http, ARCHIVE, id=apollo, a=True)
            head = server.call(server.tidings.store.last_seq())
            left = await frames(ws, 2)
            assert sorted(f["record"]["title"] for f in left) == ["a1", "a2"]
            assert {(f["operation"], f["match"]) for f in left} == {("UPDATED", "LEFT")}
            assert all(f["changedFields"] == [] for f in left)
            # One cause, one seq and cursor: the project's update; each frame its own id.
            assert len({f["seq"] for f in left}) == 1 and len({f["id"] for f in left}) == 2
            assert left[0]["seq"] == str(head)
            # The tasks left with the project as it is now (archived is not selected, its name is).
            assert left[0]["record"]["project"] == {"name": "Apollo"}
            assert await ws.no_message(0.3)  # gemini's task did not move
            await ok(http, ARCHIVE, id=apollo, a=False)
            entered = await frames(ws, 2)
            assert sorted(f["record"]["title"] for f in entered) == ["a1", "a2"]
            assert {f["match"] for f in entered} == {"ENTERED"}
            assert int(entered[0]["seq"]) > int(left[0]["seq"])
            # A task's own change in an archived project stays out of view; in an open one it is news.
            await ok(http, ARCHIVE, id=gemini, a=True)
            assert [f["match"] for f in await frames(ws, 1)] == ["LEFT"]
            await ok(http, 'mutation { createTask(input: {title: "nobody sees"}) { id } }')
            assert await ws.no_message(0.3)
        finally:
            await ws.close()


async def rooms(http: httpx.AsyncClient, name: str, members: list[str], messages: int) -> tuple[str, dict[str, str]]:
    room = await new(http, "Room", name=name)
    memberships = {user: await new(http, "Membership", roomId=room, userId=user) for user in members}
    for i in range(messages):
        await ok(http, POST, r=room, b=f"{name}-{i}")
    return room, memberships


async def sse_frames(stream: Any, n: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    buffer = ""
    async for chunk in stream.aiter_text():
        buffer += chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            data = [line[5:].strip() for line in block.splitlines() if line.startswith("data:")]
            if data and data[0]:
                body = orjson.loads("".join(data))
                if "data" in body:
                    out.append(next(iter(body["data"].values())))
        if len(out) >= n:
            return out
    return out


async def test_a_member_removed_from_a_room_sees_its_messages_leave_over_websocket_and_sse(server: Server) -> None:
    async with client(server, "ann") as ann:
        room, memberships = await rooms(ann, "leaving", ["ann", "bob"], 3)
        bob_ws = await authorized_ws(server, "bob")
        ann_ws = await authorized_ws(server, "ann")
        headers = {"accept": "text/event-stream", "authorization": f"Bearer {token('bob', 'acme')}"}
        try:
            await bob_ws.subscribe("b", ROOM_MESSAGES, {"r": room})
            await ann_ws.subscribe("a", ROOM_MESSAGES, {"r": room})
            async with (
                httpx.AsyncClient(base_url=server.url, timeout=10) as sse,
                sse.stream(
                    "POST", "/graphql", json={"query": ROOM_MESSAGES, "variables": {"r": room}}, headers=headers
                ) as stream,
            ):
                await wait_subscribers(server, 3)
                await ok(ann, LEAVE, id=memberships["bob"])
                left = await frames(bob_ws, 3)
                assert [(f["record"]["body"], f["match"]) for f in sorted(left, key=lambda f: f["record"]["body"])] == [
                    ("leaving-0", "LEFT"),
                    ("leaving-1", "LEFT"),
                    ("leaving-2", "LEFT"),
                ]
                over_sse = await sse_frames(stream, 3)
                assert sorted(f["id"] for f in over_sse) == sorted(f["id"] for f in left)
                # ann stays a member: her view did not change.
                assert await ann_ws.no_message(0.3)
                # bob no longer gets the room's messages; ann does.
                await ok(ann, POST, r=room, b="after bob")
                assert [f["record"]["body"] for f in await frames(ann_ws, 1)] == ["after bob"]
                assert await bob_ws.no_message(0.3)
                # Re-added, he sees the room's messages enter, the new one among them.
                await new(ann, "Membership", roomId=room, userId="bob")
                entered = await frames(bob_ws, 4)
                assert sorted(f["record"]["body"] for f in entered) == [
                    "after bob",
                    "leaving-0",
                    "leaving-1",
                    "leaving-2",
                ]
                assert {f["match"] for f in entered} == {"ENTERED"}
        finally:
            await bob_ws.close()
            await ann_ws.close()


async def test_resuming_after_a_membership_change_replays_what_it_moved_exactly(server: Server) -> None:
    async with client(server, "ann") as ann:
        room, memberships = await rooms(ann, "resume", ["ann", "bob"], 2)
        ws = await authorized_ws(server, "bob")
        try:
            await ws.subscribe("b", ROOM_MESSAGES, {"r": room})
            await wait_subscribers(server, 1)
            await ok(ann, POST, r=room, b="seen live")
            cursor = (await frames(ws, 1))[0]["cursor"]
        finally:
            await ws.close()
        # While bob is away: he leaves the room, a message he may not see is posted, he comes back.
        await ok(ann, LEAVE, id=memberships["bob"])
        await ok(ann, POST, r=room, b="while away")
        await new(ann, "Membership", roomId=room, userId="bob")
        ws = await authorized_ws(server, "bob")
        try:
            await ws.subscribe("b", ROOM_MESSAGES, {"r": room, "after": cursor})
            replayed = await frames(ws, 3 + 4)
            # As of now (he is a member again), the leave moved three messages out of view, and
            # the return moved all four in; in seq order, each cause's frames under its cursor.
            causes = [f["cursor"] for f in replayed]
            assert causes == sorted(causes, key=lambda c: int(c.split(":")[1]))
            by_cause: dict[str, list[tuple[str, str]]] = {}
            for f in replayed:
                by_cause.setdefault(f["cursor"], []).append((f["match"], f["record"]["body"]))
            assert [sorted(v) for v in by_cause.values()] == [
                [("LEFT", "resume-0"), ("LEFT", "resume-1"), ("LEFT", "seen live")],
                [
                    ("ENTERED", "resume-0"),
                    ("ENTERED", "resume-1"),
                    ("ENTERED", "seen live"),
                    ("ENTERED", "while away"),
                ],
            ]
            assert await ws.no_message(0.3)
            last = replayed[-1]["cursor"]
        finally:
            await ws.close()
        # Resuming after the last cursor repeats nothing.
        ws = await authorized_ws(server, "bob")
        try:
            await ws.subscribe("b", ROOM_MESSAGES, {"r": room, "after": last})
            await wait_subscribers(server, 1)
            assert await ws.no_message(0.3)
        finally:
            await ws.close()


async def test_a_membership_change_reads_only_for_the_member_it_concerns(server: Server) -> None:
    users = [f"u{i}" for i in range(8)]
    async with client(server, "ann") as ann:
        room, memberships = await rooms(ann, "crowd", ["ann", *users], 2)
        sockets = {user: await authorized_ws(server, user) for user in users}
        try:
            for user, ws in sockets.items():
                await ws.subscribe(user, ROOM_MESSAGES, {"r": room})  # one group each: the rule has $sub
            await wait_subscribers(server, len(users))
            store = server.tidings.store
            # The snapshots of a SQLite file read on an engine of their own: only the dispatch reads there.
            seen, stop = count_selects_of(store._reads.engine if store._reads is not None else None)
            try:
                await ok(ann, LEAVE, id=memberships["u3"])
                assert {f["match"] for f in await frames(sockets["u3"], 2)} == {"LEFT"}
            finally:
                stop()
            for user, ws in sockets.items():
                if user != "u3":
                    assert await ws.no_message(0.05), user
            if store._reads is not None:
                # Eight groups follow memberships; seven are told apart by the changed row alone
                # (it is not their member's). The walk back from it reads the room's messages once,
                # and u3's group decides each message twice (as the row was, as it is): one read of
                # the membership each time.
                assert sum("FROM messages" in s for s in seen) == 1, seen
                assert sum("FROM memberships" in s for s in seen) == 2, seen
        finally:
            for ws in sockets.values():
                await ws.close()


def count_selects_of(engine: Any) -> tuple[list[str], Any]:
    import sqlalchemy as sa

    seen: list[str] = []
    if engine is None:
        return seen, lambda: None

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    return seen, lambda: sa.event.remove(engine, "before_cursor_execute", record)


PROJECT_TASKS = """query($p: ID) @live {
  tasks(where: {projectId: {eq: $p}, project: {archived: {eq: false}}}, orderBy: [{title: ASC}], limit: 3) {
    title project { name }
  }
}"""


async def test_a_live_list_applies_its_own_changes_without_reading_the_window_again(server: Server) -> None:
    from tests.test_relations import follow, live_client

    async with client(server) as http:
        project = await new(http, "Project", name="Incremental")
        await new(http, "Task", title="b", projectId=project)
        ws, live = await live_client(server, PROJECT_TASKS, {"p": project})
        try:
            hub = server.tidings.engine.live_hub
            (group,) = [g for g in list(hub.groups.values()) if project in str(g.key)]
            fresh = PROJECT_TASKS.replace(" @live", "")
            steps = [
                lambda: new(http, "Task", title="a", projectId=project),  # enters first
                lambda: new(http, "Task", title="z", projectId=project),  # enters last
                lambda: new(http, "Task", title="c", projectId=project),  # enters, z leaves the window
                lambda: ok(
                    http, 'mutation($p: ID!) { updateProject(id: $p, input: {name: "Renamed"}) { id } }', p=project
                ),
                lambda: new(http, "Task", title="0", projectId=project),
                lambda: ok(
                    http, "mutation($p: ID!) { updateProject(id: $p, input: {archived: true}) { id } }", p=project
                ),
            ]
            reloads = []
            for step in steps:
                await step()
                await follow(ws, live, await ok(http, fresh, p=project))
                reloads.append(group.reloads)
            assert live.data == {"tasks": []}
            # Its own collection's changes: each task read with its project, applied to the window
            # (z leaving is a fill); the project's changes read the window again, once each.
            assert reloads == [0, 0, 0, 1, 1, 2], reloads
        finally:
            await ws.close()


async def test_many_members_resuming_at_once_each_get_their_replay(server: Server) -> None:
    users = [f"r{i}" for i in range(30)]
    async with client(server, "ann") as ann:
        start = str(server.call(server.tidings.store.last_seq()))
        room, _ = await rooms(ann, "storm", ["ann", *users], 10)
        sockets = [await authorized_ws(server, user) for user in users]
        try:
            # Thirty groups (the rule names each member), each replaying from before the room
            # existed: their reads queue for the replay's database slots.
            await asyncio.gather(*(ws.subscribe("s", ROOM_MESSAGES, {"r": room, "after": start}) for ws in sockets))
            got = await asyncio.gather(*(frames(ws, 10) for ws in sockets))
            for received in got:
                assert [(f["operation"], f["record"]["body"]) for f in received] == [
                    ("CREATED", f"storm-{i}") for i in range(10)
                ]
            assert all([await ws.no_message(0.05) for ws in sockets])
        finally:
            for ws in sockets:
                await ws.close()


async def test_a_resume_renders_nested_records_as_of_each_commit(server: Server) -> None:
    nested = """subscription($p: ID, $after: String) {
      taskEvents(where: {projectId: {eq: $p}}, after: $after) {
        record { title project { name tasks(orderBy: [{title: ASC}], limit: 2) { title } } }
      }
    }"""
    async with client(server) as http:
        project = await new(http, "Project", name="Then")
        after = str(server.call(server.tidings.store.last_seq()))
        await new(http, "Task", title="m", projectId=project)
        await new(http, "Task", title="c", projectId=project)
        await new(http, "Task", title="a", projectId=project)
        await ok(http, 'mutation($p: ID!) { updateProject(id: $p, input: {name: "Now"}) { id } }', p=project)
        ws = await authorized_ws(server)
        try:
            await ws.subscribe("s", nested, {"p": project, "after": after})
            got = [f["record"] for f in await frames(ws, 3)]
            # Each as the database was right after its commit: the project's name then, and its
            # first two tasks then (the page cut after the rows later commits added are undone).
            assert got == [
                {"title": "m", "project": {"name": "Then", "tasks": [{"title": "m"}]}},
                {"title": "c", "project": {"name": "Then", "tasks": [{"title": "c"}, {"title": "m"}]}},
                {"title": "a", "project": {"name": "Then", "tasks": [{"title": "a"}, {"title": "c"}]}},
            ]
            # Live, after the rename: as it is.
            await new(http, "Task", title="b", projectId=project)
            live = (await frames(ws, 1))[0]["record"]
            assert live == {"title": "b", "project": {"name": "Now", "tasks": [{"title": "a"}, {"title": "b"}]}}
        finally:
            await ws.close()


async def test_a_message_posted_to_a_room_is_read_once_for_every_members_live_query(server: Server) -> None:
    from tests.test_live import LiveClient
    from tests.test_relations import follow

    users = [f"m{i}" for i in range(8)]
    live_room = """query($r: ID!) @live {
      messages(where: {roomId: {eq: $r}}, orderBy: [{createdAt: DESC}], limit: 3) { body }
    }"""
    async with client(server, "ann") as ann:
        room, _ = await rooms(ann, "busy", ["ann", *users], 2)
        watchers: list[tuple[WS, Any]] = []
        try:
            for user in users:  # eight groups: the rule names each member
                ws = await authorized_ws(server, user)
                await ws.subscribe("1", live_room, {"r": room})
                live = LiveClient()
                live.take((await ws.recv())["payload"])
                watchers.append((ws, live))
            hub = server.tidings.engine.live_hub
            groups = [g for g in list(hub.groups.values()) if room in str(g.key)]
            assert len(groups) == len(users)
            shared, reads = hub.prepare.reads, sum(g.reads for g in groups)
            store = server.tidings.store
            seen, stop = count_selects_of(store._reads.engine if store._reads is not None else None)
            try:
                await ok(ann, POST, r=room, b="for all")
                expected = {"messages": [{"body": "for all"}, {"body": "busy-1"}, {"body": "busy-0"}]}
                for ws, live in watchers:
                    await follow(ws, live, expected)
            finally:
                stop()
            # One read of the message's room and memberships for the eight groups, none of their own.
            assert hub.prepare.reads - shared == 1
            assert sum(g.reads for g in groups) == reads
            if store._reads is not None:
                assert sum("FROM memberships" in s for s in seen) == 1, seen
        finally:
            for ws, _ in watchers:
                await ws.close()
