"""Relations: references, back references and many-to-many through a collection of its own, over a
real server on SQLite and PostgreSQL: declarations (Python and TOML), nested reads in batches, the
on_delete policies with their events, filters across relations, and rules through relations."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.support.backends import fresh_database
from tests.support.servers import Server, gql_post, make_server, wait_subscribers
from tests.support.wsclient import WS
from tests.test_auth import SECRET, token
from tidings import Many, Ref, Rules, collection, many, ref
from tidings.errors import ConfigurationError
from tidings.model.collection import collections_from
from tidings.model.toml import _collections

MEMBER = {"members": {"some": {"userId": {"eq": "$sub"}}}}


@collection
class Project:
    name: str
    archived: bool = False
    tasks: Many[Task] = many(via="project")
    notes: Many[Note] = many(via="project")


@collection
class Task:
    title: str
    status: str = "open"
    priority: int = 0
    project: Ref[Project] | None = ref(on_delete="cascade")
    parent: Ref[Task] | None = ref(on_delete="cascade")


@collection
class Note:
    body: str
    project: Ref[Project] | None = ref(on_delete="set_null")


@collection
class Client:
    name: str
    invoices: Many[Invoice] = many(via="client")


@collection
class Invoice:
    amount: int
    client: Ref[Client] = ref()  # restrict, the default; required


OWNER_OR_MEMBER = {"OR": [{"owner": {"eq": "$sub"}}, MEMBER]}


@collection(rules=Rules(read=OWNER_OR_MEMBER, update="owner:owner", delete="owner:owner"))
class Room:
    name: str
    owner: str | None = None
    members: Many[Membership] = many(via="room")
    messages: Many[Message] = many(via="room")


# Only a room's owner adds and removes its members.
@collection(rules=Rules(create={"room": {"owner": {"eq": "$sub"}}}, delete={"room": {"owner": {"eq": "$sub"}}}))
class Membership:
    user_id: str
    room: Ref[Room] = ref(on_delete="cascade")


@collection(rules=Rules(read={"room": MEMBER}, create={"room": MEMBER}, update="owner:author", delete="owner:author"))
class Message:
    body: str
    author: str | None = None
    room: Ref[Room] = ref(on_delete="cascade")


COLLECTIONS = [Project, Task, Note, Client, Invoice, Room, Membership, Message]


# -- declarations --------------------------------------------------------------------


def test_python_and_toml_declare_the_same_relations() -> None:
    toml = _collections(
        {
            "collections": {
                "Project": {"fields": {"name": "String!", "tasks": {"many": "Task", "via": "project"}}},
                "Task": {
                    "fields": {"title": "String!", "project": {"ref": "Project", "on_delete": "cascade"}},
                },
                "Invoice": {"fields": {"amount": "Int!", "project": {"ref": "Project!"}}},
            }
        }
    )
    by_name = {c.name: c for c in toml}
    python = {c.name: c for c in collections_from(COLLECTIONS)}
    assert by_name["Task"].references[0] == python["Task"].references[0]
    assert by_name["Project"].back_references == python["Project"].back_references[:1]
    assert [(f.name, f.kind.value, f.nullable) for f in by_name["Task"].fields] == [
        ("title", "String", False),
        ("project_id", "ID", True),
    ]
    required = by_name["Invoice"].references[0]
    assert not required.nullable and required.on_delete.value == "restrict"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"A": {"x": {"ref": "Nope"}}}, "A.x: references unknown collection 'Nope'"),
        ({"A": {"x": {"many": "B", "via": "y"}}, "B": {"z": "String"}}, "A.x: via='y' is not a reference of B to A"),
        ({"A": {"x": {"ref": "A!", "on_delete": "set_null"}}}, "on_delete set_null needs a reference that may be null"),
        ({"A": {"x": {"ref": "A", "on_delete": "explode"}}}, "on_delete must be one of restrict, cascade, set_null"),
        ({"A": {"x": {"ref": "A", "ondelete": "cascade"}}}, "unknown key 'ondelete'; did you mean 'on_delete'?"),
        ({"A": {"x": {"ref": "A"}, "x_id": "String"}}, "'x_id' is declared twice"),
    ],
)
def test_wrong_relations_are_refused_where_declared(fields: dict[str, Any], message: str) -> None:
    data = {"collections": {name: {"fields": f} for name, f in fields.items()}}
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace("?", r"\?")):
        _collections(data)


def test_a_rule_through_an_unknown_relation_field_is_refused() -> None:
    @collection(rules=Rules(read={"room": {"members": {"some": {"nobody": {"eq": "$sub"}}}}}))
    class Post:
        room: Ref[Room] = ref()

    with pytest.raises(ConfigurationError, match="Post: read rule: Unknown filter field 'nobody'"):
        collections_from([Post, Room, Membership, Message])


# -- over a real server ------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("relations")
    url = asyncio.run(fresh_database(request.param, tmp))
    s = make_server(tmp, COLLECTIONS, db=url, jwt_secret=SECRET, admin_role="root", jwt_leeway=0)
    yield s
    s.stop()


def client(server: Server, sub: str = "ann", account: str = "acme") -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {token(sub, account)}"})


async def ok(http: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    body = await gql_post(http, query, variables)
    assert "errors" not in body, body
    return body["data"]  # type: ignore[no-any-return]


async def error(http: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    body = await gql_post(http, query, variables)
    assert body.get("errors"), body
    return body["errors"][0]  # type: ignore[no-any-return]


async def new(http: httpx.AsyncClient, kind: str, **values: Any) -> str:
    data = await ok(http, f"mutation($v: Create{kind}Input!) {{ r: create{kind}(input: $v) {{ id }} }}", v=values)
    return str(data["r"]["id"])


async def test_nested_reads_both_ways_with_arguments(server: Server) -> None:
    async with client(server) as http:
        apollo = await new(http, "Project", name="Apollo")
        gemini = await new(http, "Project", name="Gemini")
        for i in range(4):
            await new(http, "Task", title=f"a{i}", projectId=apollo, priority=i, status="open" if i % 2 else "done")
        await new(http, "Task", title="g0", projectId=gemini)
        await new(http, "Task", title="loose")
        data = await ok(
            http,
            """query($ids: [ID!]) {
              tasks(where: {projectId: {in: $ids}}, orderBy: [{title: ASC}]) { title projectId project { name } }
              projects(where: {id: {in: $ids}}, orderBy: [{name: ASC}]) {
                name
                open: tasks(where: {status: {eq: "open"}}, orderBy: [{priority: DESC}]) { title project { name } }
                top: tasks(orderBy: [{priority: DESC}], limit: 2) { title }
                page: tasks(orderBy: [{priority: ASC}], limit: 2, offset: 1) { title }
              }
            }""",
            ids=[apollo, gemini],
        )
        assert [(t["title"], t["project"]["name"]) for t in data["tasks"]] == [
            ("a0", "Apollo"),
            ("a1", "Apollo"),
            ("a2", "Apollo"),
            ("a3", "Apollo"),
            ("g0", "Gemini"),
        ]
        a, g = data["projects"]
        assert [t["title"] for t in a["open"]] == ["a3", "a1"]
        assert {t["project"]["name"] for t in a["open"]} == {"Apollo"}
        assert [t["title"] for t in a["top"]] == ["a3", "a2"]
        assert [t["title"] for t in a["page"]] == ["a1", "a2"]
        assert [t["title"] for t in g["top"]] == ["g0"] and g["page"] == []
        loose = await ok(http, '{ tasks(where: {title: {eq: "loose"}}) { project { name } } }')
        assert loose["tasks"] == [{"project": None}]


async def test_a_reference_must_name_a_record_you_may_read(server: Server) -> None:
    async with client(server, "ann", "acme") as http, client(server, "bob", "globex") as other:
        theirs = await new(other, "Project", name="Theirs")
        mine = await new(http, "Project", name="Mine")
        query = "mutation($v: CreateTaskInput!) { createTask(input: $v) { id } }"
        missing = await error(http, query, v={"title": "x", "projectId": "0" * 32})
        foreign = await error(http, query, v={"title": "x", "projectId": theirs})
        for e in (missing, foreign):
            assert e["extensions"]["code"] == "BAD_USER_INPUT" and e["extensions"]["field"] == "projectId"
        assert missing["message"].replace("0" * 32, "ID") == foreign["message"].replace(theirs, "ID")
        task = await new(http, "Task", title="x", projectId=mine)
        moved = await error(
            http, "mutation($id: ID!, $p: ID) { updateTask(id: $id, input: {projectId: $p}) { id } }", id=task, p=theirs
        )
        assert moved["extensions"]["code"] == "BAD_USER_INPUT" and moved["extensions"]["field"] == "projectId"
        # Another account's record never shows through a relation.
        await new(other, "Task", title="spy", projectId=theirs)
        data = await ok(other, "query($id: ID!) { project(id: $id) { tasks { title } } }", id=theirs)
        assert [t["title"] for t in data["project"]["tasks"]] == ["spy"]
        assert (await ok(http, "query($id: ID!) { project(id: $id) { name } }", id=theirs))["project"] is None


TASK_EVENTS = (
    "subscription($p: ID) { taskEvents(where: {projectId: {eq: $p}}) { operation seq record { id title projectId } } }"
)


async def collect(ws: WS, counts: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
    """The next events of each operation, as many as ``counts`` says (they interleave)."""
    out: dict[str, list[dict[str, Any]]] = {op: [] for op in counts}
    while any(len(out[op]) < n for op, n in counts.items()):
        message = await ws.recv()
        assert message["type"] == "next" and message["id"] in out, message
        out[message["id"]].append(next(iter(message["payload"]["data"].values())))
    assert all(len(out[op]) == n for op, n in counts.items()), out
    return out


async def authorized_ws(server: Server, sub: str = "ann", account: str = "acme") -> WS:
    ws = await WS.open(server.ws_url)
    assert (await ws.init({"authorization": f"Bearer {token(sub, account)}"}))["type"] == "connection_ack"
    return ws


async def test_cascade_deletes_each_referencing_record_with_its_own_event(server: Server) -> None:
    async with client(server) as http:
        project = await new(http, "Project", name="Doomed")
        top = await new(http, "Task", title="top", projectId=project)
        child = await new(http, "Task", title="child", parentId=top)  # cascades through Task.parent too
        other = await new(http, "Task", title="elsewhere")
        note = await new(http, "Note", body="keep me", projectId=project)
        ws = await authorized_ws(server)
        try:
            await ws.subscribe("t", TASK_EVENTS, {"p": project})
            await ws.subscribe("all", "subscription { taskEvents(operations: [DELETED]) { seq record { id } } }")
            await ws.subscribe(
                "n",
                "subscription { noteEvents { operation seq changedFields "
                "record { id projectId } previous { projectId } } }",
            )
            await wait_subscribers(server, 3)
            deleted = await ok(http, "mutation($id: ID!) { deleteProject(id: $id) { id name } }", id=project)
            assert deleted["deleteProject"] == {"id": project, "name": "Doomed"}
            got = await collect(ws, {"t": 1, "all": 2, "n": 1})
            gone, all_deleted, cleared = got["t"], got["all"], got["n"][0]
            assert gone[0]["operation"] == "DELETED" and gone[0]["record"]["id"] == top
            assert [e["record"]["id"] for e in all_deleted] == [top, child]
            assert await ws.no_message(0.2)
            assert cleared["operation"] == "UPDATED" and cleared["changedFields"] == ["projectId"]
            assert cleared["record"] == {"id": note, "projectId": None} and cleared["previous"] == {
                "projectId": project
            }
            # One transaction, consecutive seqs: the project's own event first.
            seqs = sorted(int(e["seq"]) for e in [*all_deleted, cleared])
            assert seqs == list(range(seqs[0], seqs[0] + 3))
        finally:
            await ws.close()
        left = await ok(
            http,
            "query($ids: [ID!]) { tasks(where: {id: {in: $ids}}) { id } notes { id projectId } }",
            ids=[top, child, other],
        )
        assert left["tasks"] == [{"id": other}]
        assert {"id": note, "projectId": None} in left["notes"]


async def test_restrict_refuses_with_conflict_and_writes_nothing(server: Server) -> None:
    async with client(server) as http:
        acme = await new(http, "Client", name="Acme")
        invoice = await new(http, "Invoice", amount=10, clientId=acme)
        refused = await error(http, "mutation($id: ID!) { deleteClient(id: $id) { id } }", id=acme)
        assert refused["extensions"]["code"] == "CONFLICT"
        assert "referenced by 1 Invoice" in refused["message"]
        data = await ok(http, "query($id: ID!) { client(id: $id) { name invoices { id amount } } }", id=acme)
        assert data["client"] == {"name": "Acme", "invoices": [{"id": invoice, "amount": 10}]}
        await ok(http, "mutation($id: ID!) { deleteInvoice(id: $id) { id } }", id=invoice)
        await ok(http, "mutation($id: ID!) { deleteClient(id: $id) { id } }", id=acme)
        required = await error(http, "mutation { createInvoice(input: {amount: 1}) { id } }")
        assert "clientId" in required["message"]  # a required reference is a non-null input


async def test_filters_follow_references_and_back_references(server: Server) -> None:
    async with client(server) as http:
        tag = "f" + str(id(http))[-6:]
        apollo = await new(http, "Project", name=f"{tag}-Apollo")
        gemini = await new(http, "Project", name=f"{tag}-Gemini", archived=True)
        empty = await new(http, "Project", name=f"{tag}-Empty")
        await new(http, "Task", title=f"{tag}-a1", projectId=apollo, status="open")
        await new(http, "Task", title=f"{tag}-a2", projectId=apollo, status="done")
        await new(http, "Task", title=f"{tag}-g1", projectId=gemini, status="done")
        mine = {"name": {"startsWith": tag}}

        async def projects(where: dict[str, Any]) -> list[str]:
            data = await ok(
                http,
                "query($w: ProjectWhere) { projects(where: $w, orderBy: [{name: ASC}]) { name } }",
                w={**where, **mine},
            )
            return [p["name"].removeprefix(tag + "-") for p in data["projects"]]

        async def tasks(where: dict[str, Any]) -> list[str]:
            data = await ok(
                http,
                "query($w: TaskWhere) { tasks(where: $w, orderBy: [{title: ASC}]) { title } }",
                w={**where, "title": {"startsWith": tag}},
            )
            return [t["title"].removeprefix(tag + "-") for t in data["tasks"]]

        assert await tasks({"project": {"name": {"eq": f"{tag}-Apollo"}}}) == ["a1", "a2"]
        assert await tasks({"project": {"archived": {"eq": True}}}) == ["g1"]
        assert await tasks({"NOT": {"project": {"archived": {"eq": True}}}}) == ["a1", "a2"]
        assert await projects({"tasks": {"some": {"status": {"eq": "open"}}}}) == ["Apollo"]
        assert await projects({"tasks": {"none": {"status": {"eq": "open"}}}}) == ["Empty", "Gemini"]
        assert await projects({"tasks": {"every": {"status": {"eq": "done"}}}}) == ["Empty", "Gemini"]
        assert await projects({"tasks": {"some": {"project": {"archived": {"eq": True}}}}}) == ["Gemini"]
        count = await ok(
            http, "query($w: ProjectWhere) { projectsCount(where: $w) }", w={"tasks": {"some": {}}, **mine}
        )
        assert count["projectsCount"] == 2
        bad = await error(http, "query { projects(where: {tasks: {any: {}}}) { id } }")
        assert bad["extensions"]["code"] in ("BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED")
        assert empty


async def test_filters_never_see_related_records_of_another_account(server: Server) -> None:
    async with client(server, "ann", "acme") as http, client(server, "eve", "evil") as eve:
        secret = await new(http, "Project", name="Secret")
        await new(http, "Task", title="classified", projectId=secret, status="s3cret")
        probe = await new(eve, "Project", name="probe")
        # eve cannot point at ann's project, nor learn of its tasks through a filter.
        data = await ok(eve, 'query { projects(where: {tasks: {some: {status: {eq: "s3cret"}}}}) { id } }')
        assert data["projects"] == []
        assert probe


MESSAGES = (
    "query($r: ID!) { room(id: $r) { name } "
    "messages(where: {roomId: {eq: $r}}, orderBy: [{createdAt: ASC}]) { body room { name } } }"
)
POST = "mutation($r: ID!, $b: String!) { createMessage(input: {roomId: $r, body: $b}) { id body } }"


async def test_rules_through_a_relation_admit_members_only(server: Server) -> None:
    async with client(server, "ann") as ann, client(server, "bob") as bob, client(server, "root-user") as _:
        room = await new(ann, "Room", name="ops")
        await new(ann, "Membership", roomId=room, userId="ann")
        await ok(ann, POST, r=room, b="hello")
        seen = await ok(ann, MESSAGES, r=room)
        assert seen == {"room": {"name": "ops"}, "messages": [{"body": "hello", "room": {"name": "ops"}}]}
        # bob (same account, not a member) reads nothing and may not write.
        assert await ok(bob, MESSAGES, r=room) == {"room": None, "messages": []}
        refused = await error(bob, POST, r=room, b="let me in")
        assert refused["extensions"]["code"] in ("FORBIDDEN", "BAD_USER_INPUT"), refused
        # Once a member, he may.
        membership = await new(ann, "Membership", roomId=room, userId="bob")
        await ok(bob, POST, r=room, b="thanks")
        assert [m["body"] for m in (await ok(bob, MESSAGES, r=room))["messages"]] == ["hello", "thanks"]
        await ok(ann, "mutation($id: ID!) { deleteMembership(id: $id) { id } }", id=membership)
        assert (await ok(bob, MESSAGES, r=room))["messages"] == []


async def test_rules_through_a_relation_refuse_a_non_member_over_websocket_and_sse(server: Server) -> None:
    async with client(server, "ann") as ann:
        room = await new(ann, "Room", name="ws-room")
        await new(ann, "Membership", roomId=room, userId="ann")
        # bob over graphql-transport-ws: the mutation is refused, the query reads nothing.
        ws = await authorized_ws(server, "bob")
        try:
            await ws.send(
                {"id": "1", "type": "subscribe", "payload": {"query": POST, "variables": {"r": room, "b": "ws"}}}
            )
            refused = await ws.recv()
            assert refused["type"] == "next" and refused["payload"]["errors"][0]["extensions"]["code"] in (
                "FORBIDDEN",
                "BAD_USER_INPUT",
            )
            assert (await ws.recv())["type"] == "complete"
        finally:
            await ws.close()
        # bob over graphql-sse (a POST answered as an event stream).
        headers = {"accept": "text/event-stream", "authorization": f"Bearer {token('bob', 'acme')}"}
        async with (
            httpx.AsyncClient(base_url=server.url) as http,
            http.stream(
                "POST", "/graphql", json={"query": POST, "variables": {"r": room, "b": "sse"}}, headers=headers
            ) as response,
        ):
            text = "".join([chunk async for chunk in response.aiter_text()])
        assert "FORBIDDEN" in text or "BAD_USER_INPUT" in text, text
        assert (await ok(ann, MESSAGES, r=room))["messages"] == []


def count_selects(server: Server) -> tuple[list[str], Any]:
    store = server.tidings.store
    engine = store._reads.engine if store._reads is not None else store.engine.sync_engine
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and (
            "FROM tasks" in statement or "FROM projects" in statement
        ):
            seen.append(statement)  # (not the snapshot's read of the log's head)

    sa.event.listen(engine, "before_cursor_execute", record)
    return seen, lambda: sa.event.remove(engine, "before_cursor_execute", record)


NESTED = """query($w: TaskWhere, $n: Int) {
  tasks(where: $w, limit: $n) {
    title project { name tasks(orderBy: [{createdAt: DESC}], limit: 10) { title project { name } } }
  }
}"""


async def test_nested_reads_run_a_constant_number_of_selects_per_level(server: Server) -> None:
    async with client(server) as http:
        tag = "n" + str(id(http))[-6:]
        projects = [await new(http, "Project", name=f"{tag}-{i}") for i in range(5)]
        for i in range(50):
            await new(http, "Task", title=f"{tag}-t{i}", projectId=projects[i % 5])
        counts = []
        for n in (5, 50):
            seen, stop = count_selects(server)
            try:
                data = await ok(http, NESTED, w={"title": {"startsWith": tag}}, n=n)
            finally:
                stop()
            assert len(data["tasks"]) == n
            assert all(len(t["project"]["tasks"]) == 10 for t in data["tasks"])
            counts.append(len(seen))
        # tasks, their projects, the projects' tasks, those tasks' projects: one SELECT each,
        # whatever the page size.
        assert counts == [4, 4], counts


# -- event subscriptions that follow relations ---------------------------------------------


async def test_event_subscriptions_filter_through_relations_and_render_nested_records(server: Server) -> None:
    async with client(server) as http:
        live = await new(http, "Project", name="Live")
        archived = await new(http, "Project", name="Shelved", archived=True)
        ws = await authorized_ws(server)
        try:
            await ws.subscribe(
                "s",
                """subscription { taskEvents(where: {project: {archived: {eq: false}}}) {
                  operation record { title project { name tasks(orderBy: [{title: ASC}], limit: 5) { title } } }
                } }""",
            )
            await wait_subscribers(server, 1)
            await new(http, "Task", title="hidden", projectId=archived)
            await new(http, "Task", title="shown", projectId=live)
            got = (await collect(ws, {"s": 1}))["s"][0]
            assert got == {
                "operation": "CREATED",
                "record": {"title": "shown", "project": {"name": "Live", "tasks": [{"title": "shown"}]}},
            }
            assert await ws.no_message(0.2)
        finally:
            await ws.close()


async def test_a_read_rule_through_a_relation_decides_who_gets_events_over_websocket_and_sse(server: Server) -> None:
    async with client(server, "ann") as ann, client(server, "bob") as bob:
        room = await new(ann, "Room", name="events-room")
        await new(ann, "Membership", roomId=room, userId="ann")
        member, outsider = await authorized_ws(server, "ann"), await authorized_ws(server, "bob")
        sub = "subscription($r: ID) { messageEvents(where: {roomId: {eq: $r}}) { record { body room { name } } } }"
        headers = {"accept": "text/event-stream", "authorization": f"Bearer {token('bob', 'acme')}"}
        try:
            await member.subscribe("m", sub, {"r": room})
            await outsider.subscribe("o", sub, {"r": room})
            async with (
                httpx.AsyncClient(base_url=server.url, timeout=10) as sse_client,
                sse_client.stream(
                    "POST", "/graphql", json={"query": sub, "variables": {"r": room}}, headers=headers
                ) as stream,
            ):
                await wait_subscribers(server, 3)
                await ok(ann, POST, r=room, b="members only")
                got = (await collect(member, {"m": 1}))["m"][0]
                assert got == {"record": {"body": "members only", "room": {"name": "events-room"}}}
                assert await outsider.no_message(0.3)
                # bob joins: the room's message enters his view (tests/test_related_changes.py), and
                # from now on his subscriptions get the room's messages.
                await new(ann, "Membership", roomId=room, userId="bob")
                await ok(bob, POST, r=room, b="hi all")
                got = (await collect(outsider, {"o": 2}))["o"]
                assert [g["record"]["body"] for g in got] == ["members only", "hi all"]
                assert (await collect(member, {"m": 1}))["m"][0]["record"]["body"] == "hi all"
                text = ""
                async for chunk in stream.aiter_text():
                    text += chunk
                    if "hi all" in text:
                        break
                assert text.count("members only") == 1 and text.index("members only") < text.index("hi all")
        finally:
            await member.close()
            await outsider.close()


def test_export_schema_shows_the_relations_of_a_toml_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    declared = tmp_path / "collections.toml"
    declared.write_text(
        '[collections.Project.fields]\nname = "String!"\ntasks = { many = "Task", via = "project" }\n'
        '[collections.Task.fields]\ntitle = "String!"\nproject = { ref = "Project", on_delete = "cascade" }\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "tidings.cli", "export-schema", "--collections", str(declared)],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    for line in (
        "project: Project",
        "projectId: ID",
        "tasks(where: TaskWhere = null, orderBy: [TaskOrderBy!] = null, limit: Int = null, offset: Int = 0): [Task!]!",
        "project: ProjectWhere = null",
        "tasks: TaskListWhere = null",
        "input TaskListWhere {",
    ):
        assert line in out, line


# -- live queries across relations -----------------------------------------------------------

LIVE_PROJECT = """query($id: ID!) @live {
  project(id: $id) { name tasks(orderBy: [{createdAt: DESC}], limit: 3) { title status } }
}"""
LIVE_ROOM = """query($r: ID!) @live {
  messages(where: {room: {id: {eq: $r}}}, orderBy: [{createdAt: ASC}], limit: 10) { body room { name } }
}"""


async def live_client(server: Server, query: str, variables: dict[str, Any], sub: str = "ann") -> tuple[WS, Any]:
    from tests.test_live import LiveClient

    ws = await authorized_ws(server, sub)
    await ws.subscribe("1", query, variables)
    client = LiveClient()
    client.take((await ws.recv())["payload"])
    return ws, client


async def follow(ws: WS, client: Any, expected: Any) -> None:
    """Read patches until the live result equals ``expected`` (a fresh query's answer)."""
    while client.data != expected:
        message = await ws.recv()
        assert message["type"] == "next" and message["id"] == "1", message
        client.take(message["payload"])


async def test_a_live_query_across_relations_equals_a_fresh_query_after_every_change(server: Server) -> None:
    async with client(server) as http:
        project = await new(http, "Project", name="Live")
        other = await new(http, "Project", name="Other")
        ws, live = await live_client(server, LIVE_PROJECT, {"id": project})
        try:
            steps = [
                lambda: new(http, "Task", title="one", projectId=project),
                lambda: new(http, "Task", title="two", projectId=project),
                lambda: new(http, "Task", title="elsewhere", projectId=other),
                lambda: ok(
                    http, 'mutation($id: ID!) { updateProject(id: $id, input: {name: "Renamed"}) { id } }', id=project
                ),
                lambda: new(http, "Task", title="three", projectId=project),
                lambda: new(http, "Task", title="four", projectId=project),
            ]
            for step in steps:
                await step()
                expected = await ok(http, LIVE_PROJECT.replace(" @live", ""), id=project)
                await follow(ws, live, expected)
            assert [t["title"] for t in live.data["project"]["tasks"]] == ["four", "three", "two"]
            assert live.data["project"]["name"] == "Renamed"
        finally:
            await ws.close()


async def test_a_live_query_under_a_membership_rule_follows_membership(server: Server) -> None:
    async with client(server, "ann") as ann, client(server, "bob") as bob:
        room = await new(ann, "Room", name="live-room")
        await new(ann, "Membership", roomId=room, userId="ann")
        await ok(ann, POST, r=room, b="before bob")
        ws, live = await live_client(server, LIVE_ROOM, {"r": room}, sub="bob")
        try:
            assert live.data == {"messages": []}
            membership = await new(ann, "Membership", roomId=room, userId="bob")
            await follow(ws, live, {"messages": [{"body": "before bob", "room": {"name": "live-room"}}]})
            await ok(bob, POST, r=room, b="hello")
            await follow(ws, live, await ok(bob, LIVE_ROOM.replace(" @live", ""), r=room))
            assert len(live.data["messages"]) == 2
            await ok(ann, "mutation($id: ID!) { deleteMembership(id: $id) { id } }", id=membership)
            await follow(ws, live, {"messages": []})
        finally:
            await ws.close()


async def test_a_nested_list_is_bounded_for_all_its_parents_together(tmp_path: Path) -> None:
    # --max-limit 12: a list takes at most 12 rows, a nested list at most 10 x 12 for all its parents
    # (12 parents of 12 rows each would be 144).
    server = make_server(tmp_path, [Project, Task, Note], max_limit=12)
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for p in range(12):
                project = await new(http, "Project", name=f"p{p:02}")
                for t in range(11):
                    await new(http, "Task", title=f"t{t}", projectId=project)
            query = "query($n: Int) { projects(limit: 12) { name tasks(limit: $n) { title } } }"
            small = await ok(http, query, n=5)
            assert [len(p["tasks"]) for p in small["projects"]] == [5] * 12
            full = await ok(http, query, n=10)  # 12 parents x 10 rows: exactly the bound
            assert sum(len(p["tasks"]) for p in full["projects"]) == 120
            for over_query in (
                "{ projects(limit: 12) { tasks { title } } }",  # 132 rows
                "{ tasks(limit: 12, orderBy: [{title: ASC}]) { project { tasks { title } } } }",  # one level down
            ):
                over = await error(http, over_query)
                assert over["extensions"]["code"] == "BAD_USER_INPUT", over
                assert over["extensions"]["maxRows"] == 120, over
    finally:
        server.stop()


# -- the rooms example: `tidings serve` of a TOML file whose rules follow relations ---------------


async def test_the_rooms_example_admits_members_only(tmp_path: Path) -> None:
    from tests.support.processes import serving

    example = Path(__file__).resolve().parent.parent / "examples" / "rooms" / "collections.toml"
    async with serving(tmp_path, tmp_path / "rooms.db", "--collections", str(example), "--jwt-secret", SECRET) as srv:
        base = f"http://127.0.0.1:{srv.port}"

        def as_user(sub: str) -> httpx.AsyncClient:
            return httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {token(sub, 'acme')}"})

        async with as_user("ann") as ann, as_user("bob") as bob, as_user("cy") as cy:
            room = await new(ann, "Room", name="lobby")
            await new(ann, "Membership", roomId=room, userId="bob")
            adding = await error(
                bob, 'mutation($r: ID!) { createMembership(input: {roomId: $r, userId: "cy"}) { id } }', r=room
            )
            assert adding["extensions"]["code"] == "FORBIDDEN"  # only the owner adds members
            await ok(bob, 'mutation($r: ID!) { createMessage(input: {roomId: $r, body: "hi"}) { id } }', r=room)
            read = "query($r: ID!) { room(id: $r) { name messages { body author } } }"
            assert (await ok(bob, read, r=room))["room"] == {
                "name": "lobby",
                "messages": [{"body": "hi", "author": "bob"}],
            }
            assert (await ok(cy, read, r=room))["room"] is None
            refused = await error(
                cy, 'mutation($r: ID!) { createMessage(input: {roomId: $r, body: "x"}) { id } }', r=room
            )
            assert refused["extensions"]["code"] in ("FORBIDDEN", "BAD_USER_INPUT")
            assert (await ok(cy, "{ messages { id } }"))["messages"] == []


# -- soft delete and references: the retention pass keeps the foreign keys ---------------------


@collection(soft_delete=True)
class Folder:
    name: str
    files: Many[File] = many(via="folder")


@collection(soft_delete=True)
class File:
    name: str
    folder: Ref[Folder] | None = ref(on_delete="cascade")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_purging_soft_deleted_records_goes_children_first_and_keeps_what_is_referenced(
    kind: str, tmp_path: Path
) -> None:
    import datetime as dt

    from tidings.filters import MATCH_ALL
    from tidings.store import Store

    folder_c, file_c = collections_from([Folder, File])
    store = Store(await fresh_database(kind, tmp_path), [folder_c, file_c])
    await store.start()
    try:
        gone, _ = await store.create(folder_c, {"name": "gone"}, account=None, actor=None)
        kept, _ = await store.create(folder_c, {"name": "kept"}, account=None, actor=None)
        for folder in (gone, kept):
            await store.create(file_c, {"name": "f", "folder_id": folder["id"]}, account=None, actor=None)
        _, events = await store.delete(folder_c, gone["id"], guard=MATCH_ALL, actor=None)
        assert [(e.collection, e.operation.value) for e in events] == [("Folder", "DELETED"), ("File", "DELETED")]
        # A file restored while its folder is deleted keeps that folder from being purged.
        _, events = await store.delete(folder_c, kept["id"], guard=MATCH_ALL, actor=None)
        restored, _ = await store.restore(file_c, events[1].record_id, guard=MATCH_ALL, actor=None)
        await store.prune(keep_after=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60))
        async with store.engine.connect() as conn:
            folders = {r.name for r in await conn.execute(sa.select(store.tables.by_collection["Folder"]))}
            files = [r.id for r in await conn.execute(sa.select(store.tables.by_collection["File"]))]
        assert folders == {"kept"} and files == [restored["id"]]
    finally:
        await store.close()


async def test_a_group_whose_related_read_fails_holds_back_nobody_else(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidings.realtime.related import RelatedRows

    async def broken(self: RelatedRows, event: Any) -> Any:
        raise ValueError("a bug in one group's related read")

    async with client(server) as http:
        project = await new(http, "Project", name="Poison")
        ws = await authorized_ws(server)
        try:
            await ws.subscribe("rel", 'subscription { taskEvents(where: {project: {name: {eq: "Poison"}}}) { seq } }')
            await ws.subscribe("plain", 'subscription { taskEvents(where: {title: {startsWith: "p-"}}) { seq } }')
            await wait_subscribers(server, 2)
            monkeypatch.setattr(RelatedRows, "views", broken)
            await new(http, "Task", title="p-1", projectId=project)
            await new(http, "Task", title="p-2", projectId=project)
            got = await collect(ws, {"plain": 2})
            assert int(got["plain"][1]["seq"]) == int(got["plain"][0]["seq"]) + 1
            assert await ws.no_message(0.2)  # the broken group sent nothing, and blocked nothing
        finally:
            await ws.close()
    # The failure is an incident, logged with its traceback once per event: expected here, nothing
    # else (the autouse no_server_errors fixture's collector is told so).
    collectors = [h for h in logging.getLogger("tidings").handlers if type(h).__name__ == "_ErrorLogs"]
    records: list[logging.LogRecord] = collectors[0].records  # type: ignore[attr-defined]
    assert {r.getMessage().split(" for ")[1] for r in records} == {"a subscription group that follows relations failed"}
    assert len(records) == 2
    records.clear()
