"""systemEvents: SHUTTING_DOWN before a real SIGTERM's close, TOKEN_EXPIRING, PERMISSIONS_CHANGED on a rules reload."""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.support.authdemo import COLLECTIONS
from tests.support.processes import serving
from tests.support.servers import Server, make_server, wait_subscribers
from tests.support.wsclient import WS
from tests.test_auth import SECRET, call, token
from tests.test_realtime_sse import read_events, sse_stream
from tidings import Rules

pytestmark = pytest.mark.timeout(40)

SYSTEM = "subscription { systemEvents { kind message at data } }"


def system_event(message: dict[str, Any]) -> dict[str, Any]:
    assert message["type"] == "next", message
    return message["payload"]["data"]["systemEvents"]  # type: ignore[no-any-return]


async def test_shutting_down_reaches_ws_and_sse_subscribers_before_the_close(tmp_path: Path) -> None:
    async with serving(tmp_path, tmp_path / "t.db", "--shutdown-reconnect-ms", "500") as proc:
        ws = await WS.open(proc.ws_url)
        assert (await ws.init())["type"] == "connection_ack"
        await ws.subscribe("sys", SYSTEM)
        await ws.subscribe("tasks", "subscription { taskEvents { seq } }")
        async with sse_stream(proc.url, SYSTEM) as response:
            assert response.status_code == 200
            # Both subscriptions are registered once an operation sent after them is answered.
            await ws.subscribe("q", "{ tasks { id } }")
            assert (await ws.recv())["id"] == "q"
            await ws.recv()  # its complete
            proc.proc.send_signal(signal.SIGTERM)
            event = system_event(await ws.recv())
            assert event["kind"] == "SHUTTING_DOWN"
            assert 0 <= event["data"]["reconnectAfterMs"] <= 500
            assert event["at"] and "reconnect" in event["message"]
            assert await ws.closed() == (1012, "Server restarting; reconnect and resume with your last seq")
            (sse_event,) = await read_events(response, 1)
            assert sse_event.event == "next"
            assert json.loads(sse_event.data)["data"]["systemEvents"]["kind"] == "SHUTTING_DOWN"
            # Then the response ends (without a complete: the client retries).
            state = response.extensions["tidings.sse"]
            assert [e for chunk in [c async for c in state["chunks"]] for e in state["parser"].feed(chunk)] == []
        assert await proc.exit_status(15) == 0
        assert proc.problems() == []


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path, COLLECTIONS, jwt_secret=SECRET, admin_role="root", jwt_leeway=0, token_expiring_lead=1.5)
    yield s
    s.stop()


async def test_token_expiring_comes_a_lead_before_the_token_expires(auth_server: Server) -> None:
    ws = await WS.open(auth_server.ws_url)
    assert (await ws.init({"Authorization": f"Bearer {token('ann', 'acme', ttl=3)}"}))["type"] == "connection_ack"
    await ws.subscribe("sys", SYSTEM)
    event = system_event(await ws.recv(timeout=5))
    assert event["kind"] == "TOKEN_EXPIRING"
    assert 0 < event["data"]["expiresInMs"] <= 1500
    assert event["data"]["expiresAt"]
    assert (await ws.closed(timeout=5))[0] == 4403  # and then, at expiry, the close


async def test_token_expiring_reaches_a_late_subscriber_and_is_rearmed_by_renew_token(
    auth_server: Server,
) -> None:
    # ttl=2: exp is in whole seconds, so 1-2 s remain; ttl=1 could expire before the stream opened.
    headers = {"accept": "text/event-stream", "authorization": f"Bearer {token('ann', 'acme', ttl=2)}"}
    async with (
        httpx.AsyncClient(base_url=auth_server.url, timeout=10) as client,
        client.stream("GET", "/graphql", params={"query": SYSTEM}, headers=headers) as response,
    ):
        # The token expires within the lead: the warning is due before the subscription exists.
        (event,) = await read_events(response, 1)
        assert json.loads(event.data)["data"]["systemEvents"]["kind"] == "TOKEN_EXPIRING"

    ws = await WS.open(auth_server.ws_url)
    await ws.init({"Authorization": f"Bearer {token('ann', 'acme', ttl=600)}"})
    await ws.subscribe("sys", SYSTEM)
    assert await ws.no_message(within=0.3)  # ten minutes left: nothing to say
    # A renewal re-arms the warning from the new token's expiry (here: within the lead, so at once).
    renew = "mutation($t: String!) { renewToken(token: $t) { sub } }"
    await ws.subscribe("renew", renew, {"t": token("ann", "acme", ttl=1)})
    messages = [await ws.recv() for _ in range(3)]
    assert sorted((m["id"], m["type"]) for m in messages) == [("renew", "complete"), ("renew", "next"), ("sys", "next")]
    warning = next(m for m in messages if m["id"] == "sys")
    assert system_event(warning)["kind"] == "TOKEN_EXPIRING"
    assert system_event(warning)["data"]["expiresInMs"] <= 1000
    assert (await ws.closed())[0] == 4403


async def test_token_expiring_is_counted_from_exp_not_from_exp_plus_the_leeway(tmp_path: Path) -> None:
    # A 3 s leeway: counted in, the warning (lead 1.5 s) came 1.5 s after exp.
    server = make_server(tmp_path, COLLECTIONS, jwt_secret=SECRET, jwt_leeway=3, token_expiring_lead=1.5)
    try:
        tok = token("ann", "acme", ttl=3)
        exp = jwt.decode(tok, options={"verify_signature": False})["exp"]
        ws = await WS.open(server.ws_url)
        assert (await ws.init({"Authorization": f"Bearer {tok}"}))["type"] == "connection_ack"
        await ws.subscribe("sys", SYSTEM)
        event = system_event(await ws.recv(timeout=5))
        assert time.time() < exp, "TOKEN_EXPIRING came after the token's exp"
        assert event["kind"] == "TOKEN_EXPIRING"
        assert 0 < event["data"]["expiresInMs"] <= 1500
        assert abs(dt.datetime.fromisoformat(event["data"]["expiresAt"]).timestamp() - exp) < 0.5
        await ws.close()
    finally:
        server.stop()


NOTES = "subscription { noteEvents { seq } }"
EXPIRED = {"message": "Token expired", "extensions": {"code": "UNAUTHENTICATED"}}


async def test_an_sse_stream_ended_by_token_expiry_says_why_in_distinct_mode(auth_server: Server) -> None:
    headers = {"accept": "text/event-stream", "authorization": f"Bearer {token('ann', 'acme', ttl=2)}"}
    async with (
        httpx.AsyncClient(base_url=auth_server.url, timeout=10) as client,
        client.stream("GET", "/graphql", params={"query": NOTES}, headers=headers) as response,
    ):
        assert response.status_code == 200
        last, done = await read_events(response, 2)
        assert (last.event, json.loads(last.data)) == ("next", {"errors": [EXPIRED]})
        assert done.event == "complete"
        state = response.extensions["tidings.sse"]
        assert [e for chunk in [c async for c in state["chunks"]] for e in state["parser"].feed(chunk)] == []
    await wait_subscribers(auth_server, 0, exact=True)


async def test_an_sse_stream_ended_by_token_expiry_says_why_in_single_connection_mode(auth_server: Server) -> None:
    auth = {"authorization": f"Bearer {token('ann', 'acme', ttl=3)}"}  # 2-3 s: four requests first
    async with httpx.AsyncClient(base_url=auth_server.url, timeout=10) as client:
        reserved = (await client.put("/graphql", headers=auth)).text
        on_stream = {**auth, "x-graphql-event-stream-token": reserved}
        async with client.stream("GET", "/graphql", headers={**on_stream, "accept": "text/event-stream"}) as stream:
            assert stream.status_code == 200
            for op_id in ("a", "b"):
                run = await client.post(
                    "/graphql", json={"query": NOTES, "extensions": {"operationId": op_id}}, headers=on_stream
                )
                assert run.status_code == 202
            await wait_subscribers(auth_server, 2)
            events = await read_events(stream, 4)
            ended = {}
            for event in events:
                body = json.loads(event.data)
                if event.event == "next":
                    assert body["payload"] == {"errors": [EXPIRED]}, body
                ended.setdefault(body["id"], []).append(event.event)
            assert ended == {"a": ["next", "complete"], "b": ["next", "complete"]}
    await wait_subscribers(auth_server, 0, exact=True)


async def test_permissions_changed_ends_the_subscriptions_whose_scope_changed(auth_server: Server) -> None:
    ws = await WS.open(auth_server.ws_url)
    assert (await ws.init({"Authorization": f"Bearer {token('ann', 'acme')}"}))["type"] == "connection_ack"
    other = await WS.open(auth_server.ws_url)
    assert (await other.init({"Authorization": f"Bearer {token('bob', 'acme', role='root')}"}))["type"] == (
        "connection_ack"
    )
    await ws.subscribe("live", "query @live { notes(limit: 10) { title } }")
    assert (await ws.recv())["id"] == "live"  # its first result: the live query is kept
    await ws.subscribe("sys", SYSTEM)
    await ws.subscribe("docs", "subscription { docEvents { record { title } } }")
    await ws.subscribe("narrowed", "subscription { noteEvents { record { title } } }")
    await ws.subscribe("kept", 'subscription { noteEvents(where: {title: {eq: "n"}}) { record { title } } }')
    await other.subscribe("sys", SYSTEM)
    headers = {"accept": "text/event-stream", "authorization": f"Bearer {token('ann', 'acme')}"}
    async with (
        httpx.AsyncClient(base_url=auth_server.url, timeout=10) as client,
        client.stream(
            "GET", "/graphql", params={"query": "subscription { docEvents { seq } }"}, headers=headers
        ) as response,
    ):
        await wait_subscribers(auth_server, 4)

        # Docs become editors' only; notes stay readable, but by their owner only (a narrower scope).
        rules = {"Doc": Rules(read="role:editor", create="role:editor"), "Note": Rules(read="owner:owner")}
        ended = auth_server.call(auth_server.tidings.reload_rules(rules))
        assert ended == 5

        event = system_event(await ws.recv())
        assert event["kind"] == "PERMISSIONS_CHANGED"
        assert sorted(event["data"]["ended"]) == ["docs", "kept", "live", "narrowed"]
        errors = {}
        for _ in range(4):
            message = await ws.recv()
            assert message["type"] == "error"
            errors[message["id"]] = message["payload"][0]["extensions"]["code"]
        assert errors == {
            "docs": "FORBIDDEN",
            "narrowed": "PERMISSIONS_CHANGED",
            "kept": "PERMISSIONS_CHANGED",
            "live": "PERMISSIONS_CHANGED",
        }
        # Over SSE, the stream's operation ends with the error, then the stream.
        failed, complete = await read_events(response, 2)
        assert json.loads(failed.data)["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        assert complete.event == "complete"
    await wait_subscribers(auth_server, 0, exact=True)
    # The admin role's permissions did not change: nothing for it.
    assert await other.no_message(within=0.3)

    # New requests run under the new rules.
    response = await call(auth_server, token("ann", "acme"), "{ docs { title } }")
    assert response.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    await ws.close()
    await other.close()


async def test_a_reload_that_changes_nothing_for_a_caller_keeps_its_subscriptions(auth_server: Server) -> None:
    ws = await WS.open(auth_server.ws_url)
    await ws.init({"Authorization": f"Bearer {token('ann', 'acme')}"})
    await ws.subscribe("sys", SYSTEM)
    await ws.subscribe("notes", "subscription { noteEvents { record { title } } }")
    await wait_subscribers(auth_server, 1)
    # Only the delete rule changes, and ann (a member) may delete no note before or after.
    reload = auth_server.tidings.reload_rules(
        {"Note": {"read": "authenticated", "update": "owner:owner", "delete": "role:admin"}}
    )
    assert auth_server.call(reload) == 0
    assert await ws.no_message(within=0.3)
    created = await call(
        auth_server, token("ann", "acme"), 'mutation { createNote(input: {title: "still here"}) { id } }'
    )
    assert "errors" not in created.json()
    assert (await ws.recv())["payload"]["data"]["noteEvents"]["record"]["title"] == "still here"
    await ws.close()
