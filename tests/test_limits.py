"""Rate limits: token buckets with a fake clock, then real servers over WebSocket, HTTP and Redis."""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.authdemo import COLLECTIONS
from tests.support.backends import service_url
from tests.support.servers import free_port, gql_post, make_server, wait_subscribers
from tests.support.wsclient import WS
from tests.test_auth import SECRET, token
from tidings.auth.principal import Principal
from tidings.limits import Limits, Rate, TokenBucket
from tidings.pubsub import broker_from_url

SUB = """subscription($after: String) {
  messageEvents(where: {room: {eq: "r1"}}, after: $after) { seq record { body } }
}"""
OTHER = 'subscription { messageEvents(where: {room: {eq: "r2"}}) { seq record { body } } }'
CREATE = 'mutation($room: String!, $b: String!) { createMessage(input: {room: $room, author: "a", body: $b}) { id } }'
NOTE = "mutation($t: String!) { createNote(input: {title: $t}) { id } }"
OFF = Rate(0, 1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_grants_its_burst_then_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(Rate(2.0, 3), clock)
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(0.5)  # empty: one token comes in half a second
    clock.now += 0.5
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)
    clock.now += 60  # refills up to the burst, never beyond
    assert [bucket.take() for _ in range(4)][-1] == pytest.approx(0.5)
    assert bucket.until_full() == pytest.approx(1.5)


async def test_users_share_a_budget_and_anonymous_callers_are_counted_per_connection_or_ip() -> None:
    clock = FakeClock()
    limits = Limits(
        subscribe=Rate(1.0, 2), user_subscribe=OFF, mutations=Rate(1.0, 2), queries=OFF, events=OFF, clock=clock
    )
    alice = Principal(sub="alice", account="a1")

    class Conn:
        pass

    tab1, tab2 = Conn(), Conn()
    assert await limits.check_operation("mutation", alice, tab1) is None
    assert await limits.check_operation("mutation", alice, tab2) is None
    limited = await limits.check_operation("mutation", alice, tab1)
    assert limited is not None
    assert limited.extensions == {"code": "RATE_LIMITED", "retryAfter": 1.0}
    assert await limits.check_operation("mutation", Principal(sub="bob", account="a1"), tab1) is None
    assert await limits.check_operation("query", alice, tab1) is None  # queries off
    anonymous = Principal()
    for client in (tab1, tab2, "10.0.0.1"):
        assert await limits.check_operation("mutation", anonymous, client) is None
        assert await limits.check_operation("mutation", anonymous, client) is None
        assert await limits.check_operation("mutation", anonymous, client) is not None
    # Subscribes are per connection.
    assert [await limits.check_subscribe(anonymous, tab1) is None for _ in range(3)] == [True, True, False]
    assert await limits.check_subscribe(anonymous, tab2) is None
    clock.now += 1.0
    assert await limits.check_subscribe(anonymous, tab1) is None


async def test_unreachable_redis_falls_back_to_local_budgets_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    limits = Limits(
        subscribe=OFF,
        user_subscribe=OFF,
        mutations=Rate(1.0, 2),
        queries=OFF,
        events=OFF,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
    )
    await limits.start()
    try:
        alice = Principal(sub="alice", account="a1")
        with caplog.at_level(logging.WARNING, logger="tidings"):
            results = [await limits.check_operation("mutation", alice, None) for _ in range(3)]
        assert [r is None for r in results] == [True, True, False]
        warnings = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    finally:
        await limits.close()


async def test_a_subscribe_burst_beyond_the_connection_budget_is_refused_and_the_rest_carry_on(
    tmp_path: Path,
) -> None:
    # The default burst (50), refilled slowly enough that the test's own pace cannot matter.
    server = make_server(tmp_path, rate_subscribe=0.01, rate_subscribe_burst=50)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            ws = await WS.open(server.ws_url)
            await ws.init()
            for n in range(60):
                await ws.subscribe(str(n), SUB)
            errors: dict[str, list[dict[str, Any]]] = {}
            while len(errors) < 10:
                message = await ws.recv()
                assert message["type"] == "error", message
                errors[message["id"]] = message["payload"]
            assert set(errors) == {str(n) for n in range(50, 60)}
            for payload in errors.values():
                [error] = payload
                assert error["extensions"]["code"] == "RATE_LIMITED"
                assert error["extensions"]["retryAfter"] > 0
            await wait_subscribers(server, 50, exact=True)
            await gql_post(http, CREATE, {"room": "r1", "b": "hello"})
            got = {}
            while len(got) < 50:
                message = await ws.recv()
                assert message["type"] == "next", message
                got[message["id"]] = message["payload"]["data"]["messageEvents"]["record"]["body"]
            assert set(got) == {str(n) for n in range(50)}
            assert set(got.values()) == {"hello"}
            assert await ws.no_message()  # the connection stays open, nothing else was said
            await ws.close()
    finally:
        server.stop()


async def _ws_mutation(
    ws: WS, op_id: str, query: str, variables: dict[str, Any], others: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Run a mutation over ``ws``; messages of its other operations go to ``others``."""
    await ws.subscribe(op_id, query, variables)
    mine = []
    while len(mine) < 2:
        message = await ws.recv()
        if message.get("id") == op_id:
            mine.append(message)
        else:
            assert others is not None, message
            others.append(message)
    result, complete = mine
    assert result["type"] == "next", result
    assert complete == {"id": op_id, "type": "complete"}
    payload: dict[str, Any] = result["payload"]
    return payload


async def test_two_connections_of_one_user_share_the_mutation_budget(tmp_path: Path) -> None:
    server = make_server(tmp_path, COLLECTIONS, jwt_secret=SECRET, rate_mutations=0.01, rate_mutations_burst=3)
    try:
        tabs = []
        for sub in ("alice", "alice", "bob"):
            ws = await WS.open(server.ws_url)
            assert (await ws.init({"authorization": f"Bearer {token(sub, 'acme')}"}))["type"] == "connection_ack"
            tabs.append(ws)
        tab1, tab2, bob = tabs
        await tab1.subscribe("watch", "subscription { noteEvents { record { title } } }")
        await wait_subscribers(server, 1)
        watched: list[dict[str, Any]] = []
        for n, tab in enumerate((tab1, tab2, tab1)):
            assert "errors" not in await _ws_mutation(tab, f"m{n}", NOTE, {"t": f"n{n}"}, watched)
        refused = await _ws_mutation(tab2, "m3", NOTE, {"t": "n3"})
        assert refused["data"] is None
        [error] = refused["errors"]
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["retryAfter"] > 1
        assert "errors" not in await _ws_mutation(bob, "b", NOTE, {"t": "bob's"})  # another user's own budget
        # The first tab's subscription saw the three notes that were made, and is still live.
        while len(watched) < 3:
            watched.append(await tab1.recv())
        seen = [m["payload"]["data"]["noteEvents"]["record"]["title"] for m in watched]
        assert seen == ["n0", "n1", "n2"]
        assert await tab2.no_message()
        for ws in tabs:
            await ws.close()
    finally:
        server.stop()


async def test_http_mutations_beyond_the_budget_get_429_with_retry_after(tmp_path: Path) -> None:
    server = make_server(tmp_path, rate_mutations=0.1, rate_mutations_burst=2)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            body = {"query": CREATE, "variables": {"room": "r1", "b": "x"}}
            for _ in range(2):
                ok = await http.post("/graphql", json=body)
                assert ok.status_code == 200 and "errors" not in ok.json()
            refused = await http.post("/graphql", json=body)
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) == 10
            [error] = refused.json()["errors"]
            assert error["extensions"]["code"] == "RATE_LIMITED"
            assert 9 < error["extensions"]["retryAfter"] <= 10
            # The SSE path counts the same address.
            sse = await http.post("/graphql", json=body, headers={"accept": "text/event-stream"})
            assert "RATE_LIMITED" in sse.text
            # Queries are not limited by default.
            assert (await http.post("/graphql", json={"query": "{ __typename }"})).status_code == 200
    finally:
        server.stop()


async def test_a_subscription_over_its_event_rate_is_told_where_to_resume_and_loses_nothing(
    tmp_path: Path,
) -> None:
    server = make_server(tmp_path, rate_events=0.01, rate_events_burst=3)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            ws = await WS.open(server.ws_url)
            await ws.init()
            await ws.subscribe("fast", SUB)
            await ws.subscribe("other", OTHER)
            await wait_subscribers(server, 2)
            for n in range(6):
                await gql_post(http, CREATE, {"room": "r1", "b": f"m{n}"})
            seen = []
            for _ in range(3):
                message = await ws.recv()
                assert message["type"] == "next" and message["id"] == "fast", message
                seen.append(message["payload"]["data"]["messageEvents"]["record"]["body"])
            told = await ws.recv()
            assert told["type"] == "error" and told["id"] == "fast", told
            [error] = told["payload"]
            assert error["extensions"]["code"] == "RATE_LIMITED"
            assert error["extensions"]["retryAfter"] > 0
            last = error["extensions"]["lastSeq"]
            assert await ws.no_message()
            # The connection and its other subscription carry on.
            await gql_post(http, CREATE, {"room": "r2", "b": "elsewhere"})
            message = await ws.recv()
            assert message["id"] == "other", message
            assert message["payload"]["data"]["messageEvents"]["record"]["body"] == "elsewhere"
            # Resuming after the last seq delivered brings the rest.
            await ws.subscribe("resumed", SUB, {"after": last})
            for _ in range(3):
                message = await ws.recv()
                assert message["id"] == "resumed", message
                seen.append(message["payload"]["data"]["messageEvents"]["record"]["body"])
            assert seen == [f"m{n}" for n in range(6)]
            await ws.close()
    finally:
        server.stop()


async def test_two_processes_share_one_users_budget_through_redis(tmp_path: Path) -> None:
    redis_url = service_url("TIDINGS_TEST_REDIS_URL", "Redis")
    shared = dict(
        db=f"sqlite:///{tmp_path / 'shared.db'}",
        jwt_secret=SECRET,
        rate_mutations=0.01,
        rate_mutations_burst=3,
        # What is proved here is the sharing, not the stall fallback (test_broker_faults): a busy
        # machine's Redis round trip may outlast the default 0.1 s, so the bound is generous.
        rate_redis_timeout=5.0,
        channel=f"tidings-test-{uuid.uuid4().hex}",  # its own doorbells, and its own rate keys
    )
    one = make_server(tmp_path, COLLECTIONS, broker=broker_from_url(redis_url), **shared)
    two = make_server(tmp_path, COLLECTIONS, broker=broker_from_url(redis_url), **shared)
    try:
        alice = {"authorization": f"Bearer {token('alice', 'acme')}"}
        # A fence: each process's first budget call also connects to Redis. Another user's
        # mutation on each makes the connection first; alice's budget is hers alone.
        warm = {"authorization": f"Bearer {token('warm-up', 'acme')}"}
        for server in (one, two):
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                r = await http.post("/graphql", json={"query": NOTE, "variables": {"t": "w"}}, headers=warm)
                assert r.status_code == 200, r.text
        codes = []
        for server in (one, two, one, two):
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                r = await http.post("/graphql", json={"query": NOTE, "variables": {"t": "x"}}, headers=alice)
                codes.append((r.status_code, json.dumps(r.json())))
        assert [c for c, _ in codes] == [200, 200, 200, 429], codes
        assert "RATE_LIMITED" in codes[-1][1]
    finally:
        one.stop()
        two.stop()
