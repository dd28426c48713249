"""The generated GraphQL API over a real uvicorn server: httpx and gql clients."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from gql import Client, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport

from tests.support.servers import Server, gql_post

CREATE = """mutation($input: CreateTaskInput!) {
  createTask(input: $input) { id title status priority assignedTo dueAt tags version createdAt updatedAt }
}"""


async def create_task(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = await gql_post(http, CREATE, {"input": fields})
    assert "errors" not in body, body
    return body["data"]["createTask"]  # type: ignore[no-any-return]


async def test_create_applies_defaults_and_system_fields(http: httpx.AsyncClient) -> None:
    task = await create_task(http, title="write tests")
    assert task["title"] == "write tests"
    assert task["status"] == "pending"
    assert task["priority"] == 0
    assert task["assignedTo"] is None
    assert task["version"] == 1
    assert task["createdAt"] == task["updatedAt"]
    assert len(task["id"]) == 32


async def test_query_by_id_and_list_with_filter_order_limit(http: httpx.AsyncClient) -> None:
    for i, status in enumerate(["done", "pending", "done", "blocked"]):
        await create_task(http, title=f"t{i}", status=status, priority=i, tags={"n": i})
    body = await gql_post(
        http,
        """{ tasks(where: {status: {in: ["done", "blocked"]}, priority: {gte: 1}},
                   orderBy: [{priority: DESC}], limit: 2) { title priority tags } }""",
    )
    assert body["data"]["tasks"] == [
        {"title": "t3", "priority": 3, "tags": {"n": 3}},
        {"title": "t2", "priority": 2, "tags": {"n": 2}},
    ]
    assert body["extensions"]["seq"] == "4"
    body = await gql_post(
        http,
        """{ tasks(where: {OR: [{title: {eq: "t0"}}, {NOT: {priority: {lt: 3}}}]},
                                          orderBy: [{title: ASC}], offset: 1) { title } }""",
    )
    assert body["data"]["tasks"] == [{"title": "t3"}]
    first = (await gql_post(http, "{ tasks(limit: 1) { id title } }"))["data"]["tasks"][0]
    one = await gql_post(http, "query($id: ID!) { task(id: $id) { title } }", {"id": first["id"]})
    assert one["data"]["task"] == {"title": first["title"]}
    missing = await gql_post(http, '{ task(id: "nope") { title } }')
    assert missing["data"]["task"] is None


async def test_update_with_expected_version_conflict(http: httpx.AsyncClient) -> None:
    task = await create_task(http, title="a")
    update = """mutation($id: ID!, $v: Int) { updateTask(id: $id, input: {status: "done", assignedTo: "bob"},
                 expectedVersion: $v) { status assignedTo version } }"""
    ok = await gql_post(http, update, {"id": task["id"], "v": 1})
    assert ok["data"]["updateTask"] == {"status": "done", "assignedTo": "bob", "version": 2}
    stale = await gql_post(http, update, {"id": task["id"], "v": 1})
    assert stale["errors"][0]["extensions"] == {"code": "CONFLICT", "currentVersion": 2}
    cleared = await gql_post(
        http,
        "mutation($id: ID!) { updateTask(id: $id, input: {assignedTo: null}) { assignedTo version } }",
        {"id": task["id"]},
    )
    assert cleared["data"]["updateTask"] == {"assignedTo": None, "version": 3}


async def test_errors_have_stable_codes_and_write_nothing(http: httpx.AsyncClient) -> None:
    missing_title = await gql_post(http, CREATE, {"input": {"status": "x"}})
    assert missing_title["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "title" in missing_title["errors"][0]["message"]
    null_status = await gql_post(http, CREATE, {"input": {"title": "x", "status": None}})
    assert null_status["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "status"}
    not_found = await gql_post(http, 'mutation { deleteTask(id: "nope") { id } }')
    assert not_found["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    bad_limit = await gql_post(http, "{ tasks(limit: -1) { id } }")
    assert bad_limit["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "limit"}
    unknown_field = await gql_post(http, "{ tasks { nope } }")
    assert unknown_field["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    parse = await gql_post(http, "{ tasks { ")
    assert parse["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    count = await gql_post(http, "{ tasks { id } }")
    assert count["data"]["tasks"] == []
    assert count["extensions"]["seq"] == "0"


async def test_delete_returns_last_state_and_writes_event_log(server: Server, http: httpx.AsyncClient) -> None:
    task = await create_task(http, title="gone")
    await gql_post(http, "mutation($id: ID!) { updateTask(id: $id, input: {priority: 5}) { id } }", {"id": task["id"]})
    deleted = await gql_post(http, "mutation($id: ID!) { deleteTask(id: $id) { title priority } }", {"id": task["id"]})
    assert deleted["data"]["deleteTask"] == {"title": "gone", "priority": 5}
    events = server.call(server.tidings.store.read_events(0))
    assert [(e.seq, e.operation.value, e.record_id) for e in events] == [
        (1, "CREATED", task["id"]),
        (2, "UPDATED", task["id"]),
        (3, "DELETED", task["id"]),
    ]
    assert events[1].previous == {"priority": 0}
    assert events[1].changed_fields == ("priority",)
    assert events[1].record["priority"] == 5


async def test_gql_client_queries_and_mutations(server: Server) -> None:
    transport = HTTPXAsyncTransport(url=server.url + "/graphql")
    async with Client(transport=transport) as session:
        created = await session.execute(
            gql('mutation { createMessage(input: {room: "r1", author: "ann", body: "hi"}) { id room } }')
        )
        assert created["createMessage"]["room"] == "r1"
        listed = await session.execute(gql('{ messages(where: {room: {eq: "r1"}}) { body author } }'))
        assert listed["messages"] == [{"body": "hi", "author": "ann"}]
        with pytest.raises(TransportQueryError) as info:
            await session.execute(gql('mutation { updateMessage(id: "x", input: {body: "y"}) { id } }'))
        assert info.value.errors is not None
        assert info.value.errors[0]["extensions"]["code"] == "NOT_FOUND"


async def test_concurrent_updates_keep_versions_consistent(http: httpx.AsyncClient) -> None:
    task = await create_task(http, title="race")
    update = (
        "mutation($id: ID!, $p: Int!) { updateTask(id: $id, input: {priority: $p}, expectedVersion: 1) { version } }"
    )
    results = await asyncio.gather(*(gql_post(http, update, {"id": task["id"], "p": i + 1}) for i in range(5)))
    winners = [r for r in results if "errors" not in r]
    assert len(winners) == 1
    assert all(r["errors"][0]["extensions"]["code"] == "CONFLICT" for r in results if "errors" in r)


async def test_healthz(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_subscription_over_plain_http_is_a_request_error_not_a_logged_fault(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    response = await http.post("/graphql", json={"query": "subscription S { taskEvents { seq } }"})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_USER_INPUT"
    assert "WebSocket" in error["message"]
    assert "Server-Sent Events" in error["message"]
    assert [r.getMessage() for r in caplog.records if r.levelno > logging.INFO] == []
    # A query mentioning the word is still a query.
    assert (await gql_post(http, '{ tasks(where: {title: {eq: "subscription"}}) { id } }'))["data"] == {"tasks": []}


class _Stamp:
    """An app's own middleware: marks every HTTP response it sees."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def stamped(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-stamp", b"1")]}
            await send(message)

        await self.app(scope, receive, stamped if scope["type"] == "http" else send)


async def test_middleware_added_to_the_app_sees_graphql_requests(tmp_path: Any) -> None:
    """/graphql skips Starlette's router on the way in; an app's add_middleware still applies to it."""
    from tests.support.servers import make_server

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain, stamped = make_server(tmp_path / "a"), make_server(tmp_path / "b", middleware=[_Stamp])
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            for server, stamp in ((plain, None), (stamped, "1")):
                response = await http.post(f"{server.url}/graphql", json={"query": "{ tasks { id } }"})
                assert response.status_code == 200 and response.json()["data"] == {"tasks": []}
                assert response.headers.get("x-stamp") == stamp
                # CORS still answers on the short path (demo mode: localhost origins).
                origin = {"origin": "http://localhost:5173"}
                response = await http.post(f"{server.url}/graphql", json={"query": "{ tasks { id } }"}, headers=origin)
                assert response.headers.get("access-control-allow-origin") == "http://localhost:5173"
                response = await http.patch(f"{server.url}/graphql")
                assert response.status_code == 405
    finally:
        plain.stop()
        stamped.stop()
