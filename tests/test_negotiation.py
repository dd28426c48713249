"""Content negotiation on /graphql: the Accept parser, then a real server's answers.

GraphQL over HTTP media types and status codes, SSE only when preferred or for a
subscription, and graphql-sse single connection mode with the token in the URL.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.support.servers import Server, wait_subscribers
from tests.test_realtime_sse import SUB, read_events
from tests.test_realtime_ws import create
from tidings.protocols.accept import negotiate, parse_accept, quality

URQL_ACCEPT = (
    "application/graphql-response+json, application/graphql+json, application/json, text/event-stream, multipart/mixed"
)
GRAPHQL_RESPONSE = "application/graphql-response+json"
OFFERED = ("application/json", GRAPHQL_RESPONSE, "text/event-stream")


# -- the parser ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        (URQL_ACCEPT, GRAPHQL_RESPONSE),
        ("text/event-stream", "text/event-stream"),
        ("application/json, text/event-stream", "application/json"),
        ("text/event-stream, application/json", "text/event-stream"),
        ("application/json;q=0.5, text/event-stream", "text/event-stream"),
        ("text/event-stream;q=0.9, application/json;q=0.8", "text/event-stream"),
        ("text/event-stream;q=0.1, */*", "application/json"),
        # A range naming the type beats a wildcard at the same quality, wherever it stands.
        ("*/*, application/graphql-response+json", GRAPHQL_RESPONSE),
        ("application/json; charset=utf-8, text/event-stream", "application/json"),
        ("APPLICATION/GRAPHQL-RESPONSE+JSON", GRAPHQL_RESPONSE),
        # q=0 refuses, also through a wildcard's more specific sibling.
        ("*/*, application/json;q=0", GRAPHQL_RESPONSE),
        ("application/json;q=0, application/graphql-response+json;q=0, text/event-stream;q=0", None),
        ("text/html", None),
        # Malformed elements are skipped; nothing valid at all counts as no header.
        ("application/json;q=2, text/event-stream", "text/event-stream"),
        ("application/json;q=0.1234, text/event-stream;q=0.5", "text/event-stream"),
        ("garbage, */json, text/event-stream", "text/event-stream"),
        ("garbage", "application/json"),
        ('text/event-stream;foo="a,b";q=0.5, application/json;q=0.4', "text/event-stream"),
    ],
)
def test_negotiate_follows_quality_specificity_then_client_order(accept: str | None, chosen: str | None) -> None:
    assert negotiate(accept, OFFERED) == chosen


def test_parse_accept_reads_qvalues_and_positions() -> None:
    ranges = parse_accept("text/*;q=0.3, text/event-stream;level=1;q=0.7, */*;q=0, bad")
    assert [(r.type, r.subtype, r.q, r.position, r.specificity) for r in ranges] == [
        ("text", "*", 0.3, 0, 1),
        ("text", "event-stream", 0.7, 1, 2),
        ("*", "*", 0.0, 2, 0),
    ]
    assert quality(ranges, "text/event-stream") == ranges[1]
    assert quality(ranges, "text/plain") == ranges[0]
    assert quality(ranges, "application/json") == ranges[2]
    assert quality(parse_accept("application/json"), "text/event-stream") is None


# -- plain HTTP: media types and status codes ------------------------------------------

QUERY = "{ tasks { title } }"
CREATE = 'mutation { createTask(input: {title: "t"}) { title } }'


async def post(http: httpx.AsyncClient, body: dict[str, Any], accept: str | None) -> httpx.Response:
    headers = {"accept": accept} if accept is not None else {}
    return await http.post("/graphql", json=body, headers=headers)


@pytest.mark.parametrize("query", [QUERY, CREATE])
async def test_urql_default_accept_gets_graphql_response_json_not_a_stream(http: httpx.AsyncClient, query: str) -> None:
    response = await post(http, {"query": query}, URQL_ACCEPT)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/graphql-response+json; charset=utf-8"
    assert "errors" not in response.json()
    assert list(response.json()["data"]) == ["tasks" if query == QUERY else "createTask"]


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json, text/event-stream"])
async def test_json_clients_get_application_json(http: httpx.AsyncClient, accept: str | None) -> None:
    response = await post(http, {"query": QUERY}, accept)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "application/json"
    assert response.json()["data"] == {"tasks": []}


REQUEST_ERRORS = {
    "parse": ({"query": "{"}, "GRAPHQL_PARSE_FAILED"),
    "validation": ({"query": "{ nope }"}, "GRAPHQL_VALIDATION_FAILED"),
    "coercion": ({"query": "query($id: ID!) { task(id: $id) { id } }", "variables": {"id": None}}, None),
}


@pytest.mark.parametrize("kind", list(REQUEST_ERRORS))
async def test_request_errors_are_400_without_data_as_graphql_response_json(http: httpx.AsyncClient, kind: str) -> None:
    body, code = REQUEST_ERRORS[kind]
    response = await post(http, body, GRAPHQL_RESPONSE)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/graphql-response+json; charset=utf-8"
    result = response.json()
    assert "data" not in result
    assert result["errors"]
    if code is not None:
        assert result["errors"][0]["extensions"]["code"] == code
    # The same request as application/json is well formed: 200, as the spec says.
    legacy = await post(http, body, "application/json")
    assert legacy.status_code == 200
    assert legacy.headers["content-type"].split(";")[0] == "application/json"
    assert legacy.json()["errors"]


async def test_field_errors_stay_200_with_data_as_graphql_response_json(http: httpx.AsyncClient) -> None:
    response = await post(http, {"query": 'mutation { deleteTask(id: "missing") { id } }'}, GRAPHQL_RESPONSE)
    assert response.status_code == 200
    result = response.json()
    assert "data" in result
    assert result["errors"][0]["path"] == ["deleteTask"]
    assert result["errors"][0]["extensions"]["code"] == "NOT_FOUND"


# -- SSE: preferred, or a subscription ----------------------------------------------


async def test_sse_when_the_client_prefers_it(server: Server) -> None:
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        client.stream(
            "POST", "/graphql", json={"query": QUERY}, headers={"accept": "application/json;q=0.5, text/event-stream"}
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = await read_events(response, 2)
    assert [e.event for e in events] == ["next", "complete"]
    assert json.loads(events[0].data)["data"] == {"tasks": []}


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_subscription_with_urql_accept_gets_sse(server: Server, http: httpx.AsyncClient, method: str) -> None:
    kwargs: dict[str, Any] = {"params": {"query": SUB}} if method == "GET" else {"json": {"query": SUB}}
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        client.stream(method, "/graphql", headers={"accept": URQL_ACCEPT}, **kwargs) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        await wait_subscribers(server, 1)
        await create(http, title="seen", status="open")
        events = await read_events(response, 1)
    assert json.loads(events[0].data)["data"]["taskEvents"]["record"]["title"] == "seen"


async def test_a_subscription_refusing_event_stream_is_a_request_error(http: httpx.AsyncClient) -> None:
    for accept in ("application/json, text/event-stream;q=0", "*/*"):
        response = await post(http, {"query": SUB}, accept)
        assert response.status_code == 400, accept
        assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


# -- graphql-sse single connection mode: the token in the URL ------------------------


async def test_single_connection_token_parameter_runs_operations_and_delete_completes(
    server: Server, http: httpx.AsyncClient
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        token = (await client.put("/graphql")).text
        async with client.stream(
            "GET", "/graphql", params={"token": token}, headers={"accept": "text/event-stream"}
        ) as stream:
            assert stream.status_code == 200
            run = await client.post(
                "/graphql",
                params={"token": token},
                json={"query": SUB, "extensions": {"operationId": "op1"}},
                headers={"accept": "application/json"},
            )
            assert run.status_code == 202
            await wait_subscribers(server, 1)
            await create(http, title="live", status="open")
            events = await read_events(stream, 1)
            assert json.loads(events[0].data)["id"] == "op1"
            assert json.loads(events[0].data)["payload"]["data"]["taskEvents"]["record"]["title"] == "live"
            stop = await client.delete("/graphql", params={"token": token, "operationId": "op1"})
            assert stop.status_code == 200
            (complete,) = await read_events(stream, 1)
            assert (complete.event, json.loads(complete.data)) == ("complete", {"id": "op1"})
            await wait_subscribers(server, 0, exact=True)
            # Stopping it again is idempotent (E12) and sends nothing more: the next
            # event on the stream is the next operation's.
            again = await client.delete("/graphql", params={"token": token, "operationId": "op1"})
            assert again.status_code == 200
            query = await client.post(
                "/graphql",
                params={"token": token},
                json={"query": QUERY, "extensions": {"operationId": "q"}},
            )
            assert query.status_code == 202
            following = await read_events(stream, 2)
        assert [(e.event, json.loads(e.data)["id"]) for e in following] == [("next", "q"), ("complete", "q")]
