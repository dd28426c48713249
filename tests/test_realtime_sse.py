"""graphql-sse over real HTTP streams: distinct and single connection modes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.support.servers import Server, wait_subscribers
from tests.test_realtime_ws import create, update
from tidings.protocols.sse import SSEParser

SUB = 'subscription { taskEvents(where: {status: {eq: "open"}}) { operation seq record { title } } }'


async def read_events(response: httpx.Response, count: int, timeout: float = 5.0) -> list[Any]:
    # One parser and one iterator per response, so a test may read in several steps.
    state = response.extensions.setdefault(
        "tidings.sse", {"parser": SSEParser(), "chunks": response.aiter_text(), "backlog": []}
    )
    events: list[Any] = state["backlog"]

    async def pump() -> None:
        while len(events) < count:
            chunk = await anext(state["chunks"])
            events.extend(state["parser"].feed(chunk))

    await asyncio.wait_for(pump(), timeout)
    taken = events[:count]
    del events[:count]
    return taken


@contextlib.asynccontextmanager
async def sse_stream(url: str, query: str) -> AsyncIterator[httpx.Response]:
    """A distinct-mode graphql-sse GET stream of ``query`` from the server at ``url``, on a client of its own."""
    async with (
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        client.stream("GET", "/graphql", params={"query": query}, headers={"accept": "text/event-stream"}) as stream,
    ):
        yield stream


async def test_distinct_mode_get_streams_filtered_events_with_ids(server: Server, http: httpx.AsyncClient) -> None:
    async with sse_stream(server.url, SUB) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        await wait_subscribers(server, 1)
        await create(http, title="closed one", status="closed")
        await create(http, title="open one", status="open")
        events = await read_events(response, 1)
    assert [e.event for e in events] == ["next"]
    data = json.loads(events[0].data)
    assert data["data"]["taskEvents"]["record"]["title"] == "open one"
    assert data["data"]["taskEvents"]["seq"] == "2"
    assert events[0].id == f"{server.tidings.store.epoch}:2"


async def test_distinct_mode_post_and_validation_error_on_stream(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        async with client.stream(
            "POST",
            "/graphql",
            json={"query": "subscription { taskEvents { nope } }"},
            headers={"accept": "text/event-stream"},
        ) as response:
            assert response.status_code == 200
            events = await read_events(response, 2)
        assert [e.event for e in events] == ["next", "complete"]
        assert json.loads(events[0].data)["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        async with client.stream(
            "POST", "/graphql", json={"query": "{ tasks { title } }"}, headers={"accept": "text/event-stream"}
        ) as response:
            events = await read_events(response, 2)
        assert json.loads(events[0].data)["data"] == {"tasks": []}
        assert events[1].event == "complete"
        get_mutation = await client.get(
            "/graphql",
            params={"query": 'mutation { deleteTask(id: "x") { id } }'},
            headers={"accept": "text/event-stream"},
        )
        assert get_mutation.status_code == 405


async def test_last_event_id_resumes(server: Server, http: httpx.AsyncClient) -> None:
    first = await create(http, title="a", status="open")
    await create(http, title="b", status="open")
    await update(http, first, title="a2")
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=10) as client,
        client.stream(
            "GET", "/graphql", params={"query": SUB}, headers={"accept": "text/event-stream", "last-event-id": "1"}
        ) as response,
    ):
        events = await read_events(response, 2)
    titles = [json.loads(e.data)["data"]["taskEvents"]["record"]["title"] for e in events]
    assert titles == ["b", "a2"]
    epoch = server.tidings.store.epoch  # ids are cursors, epoch:seq; a plain seq is still accepted
    assert [e.id for e in events] == [f"{epoch}:2", f"{epoch}:3"]


async def test_single_connection_mode_reservation_flow(server: Server, http: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        reserved = await client.put("/graphql")
        assert reserved.status_code == 201
        token = reserved.text
        no_accept = await client.put("/graphql", headers={"accept": "application/json"})
        assert no_accept.status_code == 406
        async with client.stream(
            "GET", "/graphql", params={"token": token}, headers={"accept": "text/event-stream"}
        ) as stream:
            assert stream.status_code == 200
            second = await client.get("/graphql", params={"token": token}, headers={"accept": "text/event-stream"})
            assert second.status_code == 409
            run = await client.post(
                "/graphql",
                json={"query": SUB, "extensions": {"operationId": "op1"}},
                headers={"x-graphql-event-stream-token": token},
            )
            assert run.status_code == 202
            unknown = await client.post(
                "/graphql",
                json={"query": SUB, "extensions": {"operationId": "x"}},
                headers={"x-graphql-event-stream-token": "nope"},
            )
            assert unknown.status_code == 404
            await wait_subscribers(server, 1)
            await create(http, title="live", status="open")
            events = await read_events(stream, 1)
            body = json.loads(events[0].data)
            assert body["id"] == "op1"
            assert body["payload"]["data"]["taskEvents"]["record"]["title"] == "live"
            stop = await client.delete(
                "/graphql", params={"operationId": "op1"}, headers={"x-graphql-event-stream-token": token}
            )
            assert stop.status_code == 200
            await wait_subscribers(server, 0, exact=True)
        other_method = await client.request("PATCH", "/graphql", headers={"accept": "text/event-stream"})
        assert other_method.status_code == 405
