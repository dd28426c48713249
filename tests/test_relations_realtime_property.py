"""Relations in realtime, by property: random interleaved writes to three related collections
(projects, their members, their tasks) under rules that follow relations, watched by several
users at once, each with an event subscription and a live query over one WebSocket. After every
commit, for every user:

- the event stream received so far, replayed (ENTERED and STAYED put the record, LEFT takes it
  out), equals a fresh query by that user;
- the live query's result, patched revision by revision, equals a fresh query by that user.

Now and then a user goes away for a few commits and comes back, resuming the event subscription
after the last cursor it saw: its replay, read as of each event's commit, must bring the view to
the same place.

On SQLite and PostgreSQL, over a real server. A fence (a write every user's connection sees,
after everything before it) tells when a commit's frames have all arrived.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.backends import fresh_database
from tests.support.servers import Server, gql_post, make_server, until, wait_subscribers
from tests.support.wsclient import WS
from tests.test_auth import SECRET, token
from tests.test_live import LiveClient
from tidings import Many, Ref, Rules, collection, many, ref

MEMBER = {"members": {"some": {"userId": {"eq": "$sub"}}}}


@collection(rules=Rules(read=MEMBER))
class Project:
    name: str
    members: Many[Membership] = many(via="project")
    tasks: Many[Task] = many(via="project")


@collection(rules=Rules(read={"userId": {"eq": "$sub"}}))
class Membership:
    user_id: str
    project: Ref[Project] = ref(on_delete="cascade")


@collection(rules=Rules(read={"project": MEMBER}))
class Task:
    title: str
    status: str = "open"
    project: Ref[Project] = ref(on_delete="cascade")


@collection
class Fence:
    n: int


USERS = ("ann", "bob", "cy")
SEED = {"sqlite": 25_001, "postgresql": 25_002}
STEPS = 45

EVENTS = """subscription {
  taskEvents(where: {status: {eq: "open"}}, after: "RESUME") {
    match operation cursor record { id title status projectId }
  }
}"""
FRESH_EVENTS_VIEW = """{ tasks(where: {status: {eq: "open"}}, limit: 1000) { id title status projectId } }"""
LIVE = """query @live {
  tasks(where: {status: {eq: "open"}}, orderBy: [{title: ASC}], limit: 4) { id title project { name } }
}"""
FENCES = "subscription { fenceEvents { cursor record { n } } }"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("relations-property")
    url = asyncio.run(fresh_database(request.param, tmp))
    s = make_server(tmp, [Project, Membership, Task, Fence], db=url, jwt_secret=SECRET, admin_role="root")
    s.database = request.param  # type: ignore[attr-defined]
    yield s
    s.stop()


class Watcher:
    """One user's connection: an event subscription replayed into a view, a live query, fences."""

    def __init__(self, user: str, ws: WS, http: httpx.AsyncClient) -> None:
        self.user = user
        self.ws = ws
        self.http = http
        self.view: dict[str, dict[str, Any]] = {}
        self.live = LiveClient()
        self.cursors: list[str] = []  # of the events
        self.last = "0"  # the last cursor seen, event or fence
        self.away = 0  # commits left before it comes back

    async def connect(self, server: Server) -> None:
        """Subscribe (again): events after the last cursor seen, fences, and the live query."""
        self.ws = await WS.open(server.ws_url)
        assert (await self.ws.init(headers(self.user)))["type"] == "connection_ack"
        await self.ws.subscribe("events", EVENTS.replace("RESUME", self.last))
        await self.ws.subscribe("fence", FENCES)
        await self.ws.subscribe("live", LIVE)
        self.live = LiveClient()
        while self.live.data is None:
            self.take(await self.ws.recv(30))  # a fence may come first
        # A fence for the replay: a fence event is delivered live, and may overtake the replay
        # still under way (whose live events wait in the subscriber's buffer until it ends).
        dispatcher = server.tidings.dispatcher

        def replayed() -> bool:
            mine = [
                member
                for group in list(dispatcher.groups.values())
                if f"value='{self.user}'" in repr(group.selection.guard)
                for member in list(group.members.values())
            ]
            return bool(mine) and all(member.buffer is None for member in mine)

        await until(replayed, timeout=30)

    def take(self, message: dict[str, Any]) -> int | None:
        """Apply one frame; the fence number when it is a fence."""
        assert message["type"] == "next", (self.user, message)
        payload = message["payload"]

        if message["id"] == "live":
            self.live.take(payload)
            return None
        data = next(iter(payload["data"].values()))
        if message["id"] == "fence":
            self.last = data["cursor"]
            return int(data["record"]["n"])
        assert message["id"] == "events", message
        record = data["record"]
        if data["match"] == "LEFT":
            self.view.pop(record["id"], None)
        else:
            self.view[record["id"]] = record
        self.cursors.append(data["cursor"])
        self.last = data["cursor"]
        return None

    async def until_fence(self, n: int) -> None:
        while True:
            if self.take(await self.ws.recv(30)) == n:
                return

    async def until_live(self, expected: Any) -> None:
        while self.live.data != expected:
            self.take(await self.ws.recv(30))

    async def until_view(self, expected: Any) -> None:
        """Back from away: the replay may still be arriving after the first fence."""
        while self.view != expected:
            self.take(await self.ws.recv(30))


async def ok(http: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    body = await gql_post(http, query, variables)
    assert "errors" not in body, body
    return body["data"]  # type: ignore[no-any-return]


class World:
    """What the admin knows it wrote: enough to pick the next random write."""

    def __init__(self, rng: random.Random, admin: httpx.AsyncClient) -> None:
        self.rng = rng
        self.admin = admin
        self.projects: list[str] = []
        self.tasks: dict[str, str] = {}  # id -> project
        self.members: dict[tuple[str, str], str] = {}  # (user, project) -> membership id
        self.names = 0

    def name(self) -> str:
        self.names += 1
        return f"{self.rng.choice('abcdefgh')}{self.names:03d}"

    async def step(self) -> str:
        rng, admin = self.rng, self.admin
        choices = ["project"] * (3 if len(self.projects) < 3 else 1)
        if self.projects:
            choices += ["task"] * 4 + ["join"] * 3 + ["rename"]
        if self.tasks:
            choices += ["status", "title", "move", "drop"]
        if self.members:
            choices += ["leave"] * 2
        if len(self.projects) > 2:
            choices += ["delete project"]
        what = rng.choice(choices)
        if what == "project":
            data = await ok(admin, "mutation($n: String!) { createProject(input: {name: $n}) { id } }", n=self.name())
            self.projects.append(data["createProject"]["id"])
        elif what == "rename":
            await ok(
                admin,
                "mutation($id: ID!, $n: String!) { updateProject(id: $id, input: {name: $n}) { id } }",
                id=rng.choice(self.projects),
                n=self.name(),
            )
        elif what == "task":
            project = rng.choice(self.projects)
            data = await ok(
                admin,
                "mutation($p: ID!, $t: String!, $s: String!) "
                "{ createTask(input: {projectId: $p, title: $t, status: $s}) { id } }",
                p=project,
                t=self.name(),
                s=rng.choice(["open", "open", "done"]),
            )
            self.tasks[data["createTask"]["id"]] = project
        elif what in ("status", "title", "move"):
            task = rng.choice(sorted(self.tasks))
            values: dict[str, Any] = {
                "status": {"status": rng.choice(["open", "done"])},
                "title": {"title": self.name()},
                "move": {"projectId": rng.choice(self.projects)},
            }[what]
            await ok(
                admin,
                "mutation($id: ID!, $v: UpdateTaskInput!) { updateTask(id: $id, input: $v) { id } }",
                id=task,
                v=values,
            )
            if what == "move":
                self.tasks[task] = values["projectId"]
        elif what == "drop":
            task = rng.choice(sorted(self.tasks))
            await ok(admin, "mutation($id: ID!) { deleteTask(id: $id) { id } }", id=task)
            del self.tasks[task]
        elif what == "join":
            user, project = rng.choice(USERS), rng.choice(self.projects)
            if (user, project) not in self.members:
                data = await ok(
                    admin,
                    "mutation($u: String!, $p: ID!) { createMembership(input: {userId: $u, projectId: $p}) { id } }",
                    u=user,
                    p=project,
                )
                self.members[(user, project)] = data["createMembership"]["id"]
        elif what == "leave":
            key = rng.choice(sorted(self.members))
            await ok(admin, "mutation($id: ID!) { deleteMembership(id: $id) { id } }", id=self.members.pop(key))
        elif what == "delete project":
            project = self.projects.pop(rng.randrange(len(self.projects)))
            await ok(admin, "mutation($id: ID!) { deleteProject(id: $id) { id } }", id=project)  # cascades
            self.tasks = {t: p for t, p in self.tasks.items() if p != project}
            self.members = {k: m for k, m in self.members.items() if k[1] != project}
        return what


def headers(user: str, role: str = "member") -> dict[str, str]:
    return {"authorization": f"Bearer {token(user, 'acme', role)}"}


async def test_every_users_events_and_live_query_follow_random_related_writes(server: Server) -> None:
    # TIDINGS_PROPERTY_SEED walks another path (the fixed ones keep CI reproducible).
    seed = int(os.environ.get("TIDINGS_PROPERTY_SEED") or SEED[server.database])  # type: ignore[attr-defined]
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=server.url, headers=headers("admin", "root"), timeout=10) as admin:
        watchers: list[Watcher] = []
        try:
            for user in USERS:
                http = httpx.AsyncClient(base_url=server.url, headers=headers(user), timeout=10)
                watcher = Watcher(user, None, http)  # type: ignore[arg-type]
                watchers.append(watcher)
                await watcher.connect(server)
            await wait_subscribers(server, 2 * len(USERS))
            world = World(rng, admin)
            done: list[str] = []
            returns = 0
            largest: dict[str, int] = {}
            for n in range(1, STEPS + 1):
                done.append(await world.step())
                await ok(admin, "mutation($n: Int!) { createFence(input: {n: $n}) { id } }", n=n)
                for watcher in watchers:
                    if watcher.away > 1:
                        watcher.away -= 1
                        continue
                    back = watcher.away == 1
                    if back:
                        watcher.away = 0
                        returns += 1
                        await watcher.connect(server)
                    else:
                        await watcher.until_fence(n)
                    fresh = await ok(watcher.http, FRESH_EVENTS_VIEW)
                    expected = {t["id"]: t for t in fresh["tasks"]}
                    if back:
                        await watcher.until_view(expected)
                    assert watcher.view == expected, (seed, watcher.user, n, done)
                    largest[watcher.user] = max(largest.get(watcher.user, 0), len(expected))
                    await watcher.until_live(await ok(watcher.http, LIVE.replace(" @live", "")))
                    if not back and n < STEPS - 6 and rng.random() < 0.08:
                        watcher.away = rng.randint(3, 6)  # gone for that many commits
                        await watcher.ws.close()
            if seed == SEED[server.database]:  # type: ignore[attr-defined]
                # The fixed walks cover what they are about: memberships came and went, tasks
                # moved, users saw several tasks at once, went away and came back.
                assert {"join", "leave", "move", "status"} <= set(done), done
                assert returns >= 2, "nobody went away and came back: the walk proved little of resume"
                assert max(largest.values()) >= 2, ("nobody saw much: the walk proved little", largest)
            # Each user's stream kept seq order, several frames of one change under one cursor.
            for watcher in watchers:
                seqs = [int(c.split(":")[1]) for c in watcher.cursors]
                assert seqs == sorted(seqs)
        finally:
            for watcher in watchers:
                await watcher.ws.close()
                await watcher.http.aclose()
