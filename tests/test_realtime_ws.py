"""Subscriptions over real WebSockets: graphql-transport-ws (raw and gql) and legacy graphql-ws."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

from tests.support.servers import Server, gql_post, subscribed, wait_subscribers
from tests.support.wsclient import WS

EVENTS = """subscription($where: TaskWhere, $ops: [Operation!], $id: ID, $after: String) {
  taskEvents(where: $where, operations: $ops, id: $id, after: $after) {
    operation seq id match changedFields previous { status priority } record { title status priority }
  }
}"""


async def mutate(http: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None) -> Any:
    body = await gql_post(http, query, variables)
    assert "errors" not in body, body
    return body["data"]


async def create(http: httpx.AsyncClient, **fields: Any) -> str:
    data = await mutate(http, "mutation($i: CreateTaskInput!) { createTask(input: $i) { id } }", {"i": fields})
    return str(data["createTask"]["id"])


async def update(http: httpx.AsyncClient, id_: str, **fields: Any) -> None:
    await mutate(
        http,
        "mutation($id: ID!, $i: UpdateTaskInput!) { updateTask(id: $id, input: $i) { id } }",
        {"id": id_, "i": fields},
    )


async def delete(http: httpx.AsyncClient, id_: str) -> None:
    await mutate(http, "mutation($id: ID!) { deleteTask(id: $id) { id } }", {"id": id_})


async def test_filtered_subscription_sees_entered_stayed_left(server: Server, http: httpx.AsyncClient) -> None:
    ws = await WS.open(server.ws_url)
    assert (await ws.init())["type"] == "connection_ack"
    await ws.subscribe("1", EVENTS, {"where": {"status": {"eq": "open"}}})
    await wait_subscribers(server, 1)
    other = await create(http, title="other", status="closed")
    tid = await create(http, title="a", status="open")
    await update(http, tid, priority=3)
    await update(http, other, priority=9)
    await update(http, tid, status="closed")
    await update(http, other, status="open")
    await delete(http, other)
    got = [(await ws.recv()) for _ in range(5)]
    summary = [
        (
            m["payload"]["data"]["taskEvents"]["operation"],
            m["payload"]["data"]["taskEvents"]["match"],
            m["payload"]["data"]["taskEvents"]["record"]["title"],
        )
        for m in got
    ]
    assert summary == [
        ("CREATED", "ENTERED", "a"),
        ("UPDATED", "STAYED", "a"),
        ("UPDATED", "LEFT", "a"),
        ("UPDATED", "ENTERED", "other"),
        ("DELETED", "LEFT", "other"),
    ]
    assert all(m["id"] == "1" and m["type"] == "next" for m in got)
    left = got[2]["payload"]["data"]["taskEvents"]
    assert left["changedFields"] == ["status"]
    assert left["previous"]["status"] == "open"
    seqs = [int(m["payload"]["data"]["taskEvents"]["seq"]) for m in got]
    assert seqs == sorted(seqs)
    assert await ws.no_message()
    await ws.close()


async def test_operations_and_id_narrow_the_stream(server: Server, http: httpx.AsyncClient) -> None:
    tid = await create(http, title="watched")
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("by-id", EVENTS, {"id": tid})
    await ws.subscribe("deletes", EVENTS, {"ops": ["DELETED"]})
    await wait_subscribers(server, 2)
    await create(http, title="unrelated")
    await update(http, tid, title="renamed")
    await delete(http, tid)
    first, second, third = (await ws.recv()), (await ws.recv()), (await ws.recv())
    by_id = [m for m in (first, second, third) if m["id"] == "by-id"]
    deletes = [m for m in (first, second, third) if m["id"] == "deletes"]
    assert [m["payload"]["data"]["taskEvents"]["operation"] for m in by_id] == ["UPDATED", "DELETED"]
    assert [m["payload"]["data"]["taskEvents"]["record"]["title"] for m in deletes] == ["renamed"]
    assert await ws.no_message()
    await ws.close()


async def test_complete_stops_delivery_and_id_can_be_reused(server: Server, http: httpx.AsyncClient) -> None:
    ws = await subscribed(server, "s", EVENTS)
    await ws.send({"id": "s", "type": "complete"})
    await wait_subscribers(server, 0, exact=True)
    await create(http, title="nobody listens")
    assert await ws.no_message()
    await ws.subscribe("s", EVENTS)
    await wait_subscribers(server, 1)
    await create(http, title="heard")
    msg = await ws.recv()
    assert msg["payload"]["data"]["taskEvents"]["record"]["title"] == "heard"
    await ws.close()


async def test_queries_and_mutations_travel_over_the_socket(server: Server) -> None:
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("m", 'mutation { createTask(input: {title: "over ws"}) { title } }')
    assert (await ws.recv()) == {"id": "m", "type": "next", "payload": {"data": {"createTask": {"title": "over ws"}}}}
    assert (await ws.recv()) == {"id": "m", "type": "complete"}
    await ws.subscribe("bad", "subscription { taskEvents { nope } }")
    err = await ws.recv()
    assert err["type"] == "error" and err["id"] == "bad"
    assert err["payload"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    await ws.close()


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        ({"type": "subscribe", "id": "1", "payload": {"query": "subscription { taskEvents { id } }"}}, 4401),
        ({"type": "bogus"}, 4400),
    ],
)
async def test_protocol_violations_close_with_their_codes(server: Server, first: dict[str, Any], expected: int) -> None:
    ws = await WS.open(server.ws_url)
    await ws.send(first)
    code, _ = await ws.closed()
    assert code == expected


async def test_duplicate_id_and_double_init_close(server: Server) -> None:
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("x", EVENTS)
    await ws.subscribe("x", EVENTS)
    assert (await ws.closed())[0] == 4409
    ws2 = await WS.open(server.ws_url)
    await ws2.init()
    await ws2.send({"type": "connection_init"})
    assert (await ws2.closed())[0] == 4429


async def test_init_timeout_closes_4408(tmp_path: Any) -> None:
    from tests.support.servers import make_server

    server = make_server(tmp_path, init_timeout=0.3)
    try:
        ws = await WS.open(server.ws_url)
        assert (await ws.closed())[0] == 4408
    finally:
        server.stop()


async def test_subscription_limit_errors_without_disturbing_others(tmp_path: Any) -> None:
    from tests.support.servers import make_server

    server = make_server(tmp_path, max_subscriptions=2)
    try:
        async with httpx.AsyncClient(base_url=server.url) as http:
            ws = await WS.open(server.ws_url)
            await ws.init()
            await ws.subscribe("a", EVENTS)
            await ws.subscribe("b", EVENTS)
            await ws.subscribe("c", EVENTS)
            err = await ws.recv()
            assert err["type"] == "error" and err["id"] == "c"
            assert err["payload"][0]["extensions"]["code"] == "RATE_LIMITED"
            await wait_subscribers(server, 2)
            await create(http, title="still flowing")
            ids = {(await ws.recv())["id"], (await ws.recv())["id"]}
            assert ids == {"a", "b"}
            await ws.close()
    finally:
        server.stop()


async def test_unknown_subprotocol_closes_4406(server: Server) -> None:
    ws = await WS.open(server.ws_url, subprotocol="graphql-nope")
    assert (await ws.closed())[0] == 4406


async def test_legacy_graphql_ws_protocol(server: Server, http: httpx.AsyncClient) -> None:
    ws = await WS.open(server.ws_url, subprotocol="graphql-ws")
    assert ws.conn.subprotocol == "graphql-ws"
    assert (await ws.init())["type"] == "connection_ack"
    await ws.subscribe("1", EVENTS, {"where": {"title": {"startsWith": "leg"}}})
    await wait_subscribers(server, 1)
    await create(http, title="nope")
    await create(http, title="legacy")
    msg = await ws.recv()
    assert msg["type"] == "data" and msg["id"] == "1"
    assert msg["payload"]["data"]["taskEvents"]["record"]["title"] == "legacy"
    await ws.send({"id": "1", "type": "stop"})
    await wait_subscribers(server, 0, exact=True)
    await ws.close()


async def test_legacy_start_before_init_closes_4401(server: Server) -> None:
    ws = await WS.open(server.ws_url, subprotocol="graphql-ws")
    await ws.send({"id": "1", "type": "start", "payload": {"query": "subscription { taskEvents { id } }"}})
    assert (await ws.closed())[0] == 4401


async def test_gql_client_receives_filtered_events(server: Server, http: httpx.AsyncClient) -> None:
    transport = WebsocketsTransport(url=server.ws_url, subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL])
    received: list[dict[str, Any]] = []
    async with Client(transport=transport) as session:
        query = gql(
            """subscription { taskEvents(where: {priority: {gte: 5}}) { operation record { title priority } } }"""
        )

        async def consume() -> None:
            async for result in session.subscribe(query):
                received.append(result["taskEvents"])
                if len(received) == 3:
                    return

        task = asyncio.create_task(consume())
        await wait_subscribers(server, 1)
        low = await create(http, title="low", priority=1)
        high = await create(http, title="high", priority=7)
        await update(http, low, priority=5)
        await delete(http, high)
        await asyncio.wait_for(task, 10)
    assert received == [
        {"operation": "CREATED", "record": {"title": "high", "priority": 7}},
        {"operation": "UPDATED", "record": {"title": "low", "priority": 5}},
        {"operation": "DELETED", "record": {"title": "high", "priority": 7}},
    ]


async def test_failed_mutation_publishes_nothing(server: Server, http: httpx.AsyncClient) -> None:
    ws = await subscribed(server, "1", EVENTS)
    body = await gql_post(http, 'mutation { updateTask(id: "missing", input: {title: "x"}) { id } }')
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert await ws.no_message(0.5)
    await ws.close()


async def test_a_doorbell_naming_a_seq_beyond_the_log_skips_nothing(server: Server, http: httpx.AsyncClient) -> None:
    # A doorbell the log cannot back (another deployment on the same broker, a stale message)
    # must not move the dispatcher past events that commit later.
    ws = await WS.open(server.ws_url)
    assert (await ws.init())["type"] == "connection_ack"
    await ws.subscribe("1", EVENTS)
    await wait_subscribers(server, 1)
    tidings = server.tidings
    server.call(tidings.broker.publish(tidings.dispatcher.channel, b'{"seq": 1000}'))
    await asyncio.sleep(0.3)
    assert tidings.dispatcher.position == 0
    await create(http, title="after the stray doorbell")
    message = await ws.recv()
    assert message["payload"]["data"]["taskEvents"]["seq"] == "1"
    await ws.close()
