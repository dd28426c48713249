"""Relations: references, back references and many-to-many through a collection of its own, over a
real server on SQLite and PostgreSQL: declarations (Python and TOML), nested reads in batches, the
on_delete policies with their events, filters across relations, and rules through relations."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.support.backends import fresh_database
from tests.support.servers import Server, gql_post, make_server, until, wait_subscribers
from tests.support.wsclient import WS
from tests.test_auth import SECRET, token
from tidings import Rules, collection
from tidings.errors import ConfigurationError
from tidings.model.collection import collections_from
from tidings.model.relations import Many, Ref, many, ref
from tidings.model.toml import _collections

MEMBER = {"members": {"some": {"userId": {"eq": "$sub"}}}}


@collection
class Project:
    name: str
    archived: bool = False
    tasks: Many["Task"] = many(via="project")
    notes: Many["Note"] = many(via="project")


@collection
class Task:
    title: str
    status: str = "open"
    priority: int = 0
    project: Ref["Project"] | None = ref(on_delete="cascade")
    parent: Ref["Task"] | None = ref(on_delete="cascade")


@collection
class Note:
    body: str
    project: Ref["Project"] | None = ref(on_delete="set_null")


@collection
class Client:
    name: str
    invoices: Many["Invoice"] = many(via="client")


@collection
class Invoice:
    amount: int
    client: Ref["Client"] = ref()  # restrict, the default; required


@collection(rules=Rules(read=MEMBER, update=MEMBER, delete=MEMBER))
class Room:
    name: str
    members: Many["Membership"] = many(via="room")
    messages: Many["Message"] = many(via="room")


@collection
class Membership:
    user_id: str
    room: Ref["Room"] = ref(on_delete="cascade")


@collection(rules=Rules(read={"room": MEMBER}, create={"room": MEMBER}, update="owner:author", delete="owner:author"))
class Message:
    body: str
    author: str | None = None
    room: Ref["Room"] = ref(on_delete="cascade")


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
        room: Ref["Room"] = ref()

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
            ("a0", "Apollo"), ("a1", "Apollo"), ("a2", "Apollo"), ("a3", "Apollo"), ("g0", "Gemini"),
        ]
        a, g = data["projects"]
        assert [t["title"] for t in a["open"]] == ["a3", "a1"]
        assert {t["project"]["name"] for t in a["open"]} == {"Apollo"}
        assert [t["title"] for t in a["top"]] == ["a3", "a2"]
        assert [t["title"] for t in a["page"]] == ["a1", "a2"]
        assert [t["title"] for t in g["top"]] == ["g0"] and g["page"] == []
        loose = await ok(http, "{ tasks(where: {title: {eq: \"loose\"}}) { project { name } } }")
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
