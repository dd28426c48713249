"""JWT auth, tenant isolation and per-collection rules, enforced on HTTP, WebSocket and SSE."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

from tests.support.authdemo import COLLECTIONS
from tests.support.servers import Server, make_server, wait_subscribers
from tests.support.wsclient import WS
from tests.test_realtime_sse import read_events

SECRET = "test-secret-please-change-it-now-0123456789"


def token(sub: str, account: str, role: str = "member", ttl: float = 600, **extra: Any) -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": sub, "account": account, "role": role, "iat": now, "exp": now + ttl, **extra}, SECRET, algorithm="HS256"
    )


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path, COLLECTIONS, jwt_secret=SECRET, admin_role="root", jwt_leeway=0)
    yield s
    s.stop()


async def call(server: Server, tok: str | None, query: str, variables: dict[str, Any] | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {tok}"} if tok else {}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        return await client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)


async def create_note(server: Server, tok: str, title: str, secret: bool = False) -> str:
    r = await call(
        server,
        tok,
        "mutation($t: String!, $s: Boolean) { createNote(input: {title: $t, secret: $s}) { id owner } }",
        {"t": title, "s": secret},
    )
    body = r.json()
    assert "errors" not in body, body
    return str(body["data"]["createNote"]["id"])


NOTE_EVENTS = "subscription { noteEvents { operation match record { title owner } } }"


async def subscriber(server: Server, tok: str | None, query: str = NOTE_EVENTS) -> WS:
    ws = await WS.open(server.ws_url)
    ack = await ws.init({"authorization": f"Bearer {tok}"} if tok else {})
    assert ack["type"] == "connection_ack", ack
    await ws.subscribe("s", query)
    return ws


async def drain(ws: WS, within: float = 0.4) -> list[dict[str, Any]]:
    out = []
    while True:
        try:
            out.append(await ws.recv(timeout=within))
        except TimeoutError:
            return out


async def test_http_missing_and_bad_tokens_are_401_with_graphql_error(auth_server: Server) -> None:
    missing = await call(auth_server, None, "{ notes { id } }")
    assert missing.status_code == 401
    assert missing.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    forged = jwt.encode(
        {"sub": "x", "account": "a", "exp": int(time.time()) + 60},
        "another-secret-that-is-long-enough-32b",
        algorithm="HS256",
    )
    bad = await call(auth_server, forged, "{ notes { id } }")
    assert bad.status_code == 401
    none_alg = jwt.encode({"sub": "x", "account": "a", "exp": int(time.time()) + 60}, None, algorithm="none")  # type: ignore[arg-type]
    assert (await call(auth_server, none_alg, "{ notes { id } }")).status_code == 401
    expired = token("ann", "acme", ttl=-10)
    assert (await call(auth_server, expired, "{ notes { id } }")).status_code == 401


async def test_tenants_never_see_each_other(auth_server: Server) -> None:
    ann, bob, root = token("ann", "acme"), token("bob", "globex"), token("ops", "acme", role="root")
    await create_note(auth_server, ann, "acme note")
    await create_note(auth_server, bob, "globex note")
    ann_view = (await call(auth_server, ann, "{ notes { title owner } }")).json()["data"]["notes"]
    assert ann_view == [{"title": "acme note", "owner": "ann"}]
    bob_view = (await call(auth_server, bob, "{ notes { title } }")).json()["data"]["notes"]
    assert bob_view == [{"title": "globex note"}]
    everyone = (await call(auth_server, root, "{ notes(orderBy: [{title: ASC}]) { title } }")).json()["data"]["notes"]
    assert [n["title"] for n in everyone] == ["acme note", "globex note"]
    bob_id = (await call(auth_server, bob, "{ notes { id } }")).json()["data"]["notes"][0]["id"]
    steal = await call(
        auth_server, ann, 'mutation($id: ID!) { updateNote(id: $id, input: {title: "x"}) { id } }', {"id": bob_id}
    )
    assert steal.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    peek = await call(auth_server, ann, "query($id: ID!) { note(id: $id) { title } }", {"id": bob_id})
    assert peek.json()["data"]["note"] is None


async def test_rules_owner_role_and_filter(auth_server: Server) -> None:
    ann, cat = token("ann", "acme"), token("cat", "acme")
    editor = token("ed", "acme", role="editor")
    nid = await create_note(auth_server, ann, "ann's")
    not_owner = await call(
        auth_server, cat, 'mutation($id: ID!) { updateNote(id: $id, input: {title: "x"}) { id } }', {"id": nid}
    )
    assert not_owner.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    give_away = await call(
        auth_server, ann, 'mutation($id: ID!) { updateNote(id: $id, input: {owner: "cat"}) { id } }', {"id": nid}
    )
    assert give_away.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    no_role = await call(auth_server, ann, "mutation($id: ID!) { deleteNote(id: $id) { id } }", {"id": nid})
    assert no_role.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    ok = await call(auth_server, editor, "mutation($id: ID!) { deleteNote(id: $id) { title } }", {"id": nid})
    assert ok.json()["data"]["deleteNote"]["title"] == "ann's"
    denied = await call(auth_server, ann, 'mutation { createDoc(input: {title: "d"}) { id } }')
    assert denied.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    for title, secret in (("open", False), ("hidden", True)):
        r = await call(
            auth_server,
            editor,
            "mutation($t: String!, $s: Boolean) { createDoc(input: {title: $t, secret: $s}) { id } }",
            {"t": title, "s": secret},
        )
        assert "errors" not in r.json()
    docs = (await call(auth_server, ann, "{ docs { title } }")).json()["data"]["docs"]
    assert docs == [{"title": "open"}]


async def test_each_subscriber_receives_exactly_what_it_may_see(auth_server: Server) -> None:
    ann, ann2, bob = token("ann", "acme"), token("zed", "acme"), token("bob", "globex")
    editor = token("ed", "acme", role="editor")
    root = token("ops", "hq", role="root")
    subs = {
        "ann": await subscriber(auth_server, ann),
        "zed": await subscriber(auth_server, ann2),
        "bob": await subscriber(auth_server, bob),
        "root": await subscriber(auth_server, root),
        "ann-docs": await subscriber(
            auth_server, ann, "subscription { docEvents { operation match record { title } } }"
        ),
        "bob-filtered": await subscriber(
            auth_server,
            bob,
            'subscription { noteEvents(where: {title: {startsWith: "g"}}) { operation record { title } } }',
        ),
    }
    await wait_subscribers(auth_server, len(subs))
    a = await create_note(auth_server, ann, "acme-1")
    await create_note(auth_server, bob, "globex-1")
    await create_note(auth_server, bob, "other-globex")
    await call(
        auth_server, ann, 'mutation($id: ID!) { updateNote(id: $id, input: {title: "acme-2"}) { id } }', {"id": a}
    )
    await call(auth_server, editor, "mutation($id: ID!) { deleteNote(id: $id) { id } }", {"id": a})
    r = await call(auth_server, editor, 'mutation { createDoc(input: {title: "draft", secret: true}) { id } }')
    doc = r.json()["data"]["createDoc"]["id"]
    await call(
        auth_server, editor, "mutation($id: ID!) { updateDoc(id: $id, input: {secret: false}) { id } }", {"id": doc}
    )
    await call(
        auth_server,
        editor,
        'mutation($id: ID!) { updateDoc(id: $id, input: {title: "published"}) { id } }',
        {"id": doc},
    )
    await call(
        auth_server,
        editor,
        'mutation($id: ID!) { updateDoc(id: $id, input: {title: "retracted", secret: true}) { id } }',
        {"id": doc},
    )

    def seen(name: str, messages: list[dict[str, Any]]) -> list[tuple[str, ...]]:
        out = []
        for m in messages:
            ev = next(iter(m["payload"]["data"].values()))
            out.append((ev["operation"], ev.get("match", ""), ev["record"]["title"]))
        return out

    got = {name: seen(name, await drain(ws)) for name, ws in subs.items()}
    acme = [("CREATED", "ENTERED", "acme-1"), ("UPDATED", "STAYED", "acme-2"), ("DELETED", "LEFT", "acme-2")]
    assert got["ann"] == acme
    assert got["zed"] == acme
    assert got["bob"] == [("CREATED", "ENTERED", "globex-1"), ("CREATED", "ENTERED", "other-globex")]
    assert got["bob-filtered"] == [("CREATED", "", "globex-1")]
    assert [t for _, _, t in got["root"]] == ["acme-1", "globex-1", "other-globex", "acme-2", "acme-2"]
    # The doc became visible (ENTERED), changed (STAYED), then left the rule: LEFT shows
    # the last state the reader could see, never the new contents.
    assert got["ann-docs"] == [
        ("UPDATED", "ENTERED", "draft"),
        ("UPDATED", "STAYED", "published"),
        ("UPDATED", "LEFT", "published"),
    ]
    for ws in subs.values():
        await ws.close()


async def test_websocket_rejects_missing_and_bad_tokens_with_4403(auth_server: Server) -> None:
    ws = await WS.open(auth_server.ws_url)
    await ws.send({"type": "connection_init", "payload": {}})
    assert (await ws.closed())[0] == 4403
    ws = await WS.open(auth_server.ws_url)
    await ws.send({"type": "connection_init", "payload": {"token": "garbage"}})
    assert (await ws.closed())[0] == 4403


@pytest.mark.parametrize("shape", ["authorization", "Authorization", "headers", "token"])
async def test_connection_init_accepts_the_shapes_clients_send(auth_server: Server, shape: str) -> None:
    tok = token("ann", "acme")
    payload = {
        "authorization": {"authorization": f"Bearer {tok}"},
        "Authorization": {"Authorization": f"Bearer {tok}"},
        "headers": {"headers": {"Authorization": f"Bearer {tok}"}},
        "token": {"token": tok},
    }[shape]
    ws = await WS.open(auth_server.ws_url)
    assert (await ws.init(payload))["type"] == "connection_ack"
    await ws.close()


SUBPROTOCOLS = ["graphql-transport-ws", "graphql-ws"]


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_gql_client_authenticates_with_a_bearer_header_on_the_upgrade_request(
    auth_server: Server, subprotocol: str
) -> None:
    # What `gql-cli ws://.../graphql -H "Authorization: Bearer $T"` does: the header, an empty init payload.
    tok = token("ann", "acme")
    transport = WebsocketsTransport(
        url=auth_server.ws_url, headers={"Authorization": f"Bearer {tok}"}, subprotocols=[subprotocol]
    )
    async with Client(transport=transport) as session:

        async def first() -> dict[str, Any]:
            async for result in session.subscribe(gql("subscription { noteEvents { record { title } } }")):
                return result  # type: ignore[no-any-return]
            raise AssertionError("the subscription ended")

        received = asyncio.create_task(first())
        await wait_subscribers(auth_server, 1)
        assert (await call(auth_server, tok, 'mutation { createNote(input: {title: "hi"}) { id } }')).status_code == 200
        assert (await asyncio.wait_for(received, 5)) == {"noteEvents": {"record": {"title": "hi"}}}


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_a_forged_bearer_header_is_refused_as_a_forged_init_token_is(
    auth_server: Server, subprotocol: str
) -> None:
    import websockets

    forged = token("ann", "acme")[:-4] + "AAAA"
    ws = await WS.open(auth_server.ws_url, subprotocol)
    await ws.send({"type": "connection_init", "payload": {"token": forged}})
    in_init = await ws.closed()
    assert in_init == (4403, "Invalid token")
    ws = await WS.open(auth_server.ws_url, subprotocol, additional_headers={"Authorization": f"Bearer {forged}"})
    await ws.send({"type": "connection_init", "payload": {}})
    assert await ws.closed() == in_init
    # Another scheme is no bearer token: refused, as on HTTP.
    ws = await WS.open(auth_server.ws_url, subprotocol, additional_headers={"Authorization": "Basic YW5uOnB3"})
    await ws.send({"type": "connection_init", "payload": {}})
    assert (await ws.closed())[0] == 4403
    # A valid header is no pass for another site's page: the Origin check comes first.
    valid = {"Authorization": f"Bearer {token('ann', 'acme')}"}
    with pytest.raises(websockets.InvalidStatus) as info:
        await WS.open(auth_server.ws_url, subprotocol, origin="https://evil.example", additional_headers=valid)  # type: ignore[arg-type]
    assert info.value.response.status_code == 403


@pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)
async def test_a_token_in_connection_init_wins_over_the_header(auth_server: Server, subprotocol: str) -> None:
    valid, forged = token("ann", "acme"), token("ann", "acme")[:-4] + "AAAA"
    # The payload's token is the one checked, the header not read: a valid one is accepted...
    ws = await WS.open(auth_server.ws_url, subprotocol, additional_headers={"Authorization": f"Bearer {forged}"})
    assert (await ws.init({"token": valid}))["type"] == "connection_ack"
    await ws.close()
    # ...and a forged one refused, whatever the header holds.
    ws = await WS.open(auth_server.ws_url, subprotocol, additional_headers={"Authorization": f"Bearer {valid}"})
    await ws.send({"type": "connection_init", "payload": {"token": forged}})
    assert await ws.closed() == (4403, "Invalid token")


async def test_token_expiry_closes_the_socket_and_renewal_keeps_it(auth_server: Server) -> None:
    short = await subscriber(auth_server, token("ann", "acme", ttl=1))
    started = time.monotonic()
    code, reason = await short.closed(timeout=6)
    assert code == 4403 and "expired" in reason.lower()
    assert time.monotonic() - started < 4
    renewing = await subscriber(auth_server, token("ann", "acme", ttl=2))
    # A fence for the renewed token's old expiry: a connection whose token expires at least a
    # second after it. Its close says the server's clock has passed the old expiry.
    witness = await subscriber(auth_server, token("ann", "acme", ttl=3))
    await renewing.send(
        {
            "id": "r",
            "type": "subscribe",
            "payload": {
                "query": "mutation($t: String!) { renewToken(token: $t) { sub account } }",
                "variables": {"t": token("ann", "acme", ttl=600)},
            },
        }
    )
    renewed = await renewing.recv()
    assert renewed["payload"]["data"]["renewToken"] == {"sub": "ann", "account": "acme"}
    assert (await renewing.recv())["type"] == "complete"
    code, reason = await witness.closed(timeout=6)
    assert code == 4403 and "expired" in reason.lower()
    await wait_subscribers(auth_server, 1, exact=True)
    await create_note(auth_server, token("ann", "acme"), "still here")
    assert (await renewing.recv())["payload"]["data"]["noteEvents"]["record"]["title"] == "still here"
    await renewing.send(
        {
            "id": "r2",
            "type": "subscribe",
            "payload": {
                "query": "mutation($t: String!) { renewToken(token: $t) { sub } }",
                "variables": {"t": token("bob", "acme")},
            },
        }
    )
    refused = await renewing.recv()
    assert refused["payload"]["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    await renewing.close()


async def test_sse_auth_header_token_param_and_401(auth_server: Server) -> None:
    async with httpx.AsyncClient(base_url=auth_server.url, timeout=10) as client:
        anonymous = await client.get("/graphql", params={"query": NOTE_EVENTS}, headers={"accept": "text/event-stream"})
        assert anonymous.status_code == 401
        assert anonymous.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        async with client.stream(
            "GET",
            "/graphql",
            params={"query": NOTE_EVENTS, "token": token("bob", "globex")},
            headers={"accept": "text/event-stream"},
        ) as bob_stream:
            assert bob_stream.status_code == 200
            await wait_subscribers(auth_server, 1)
            await create_note(auth_server, token("ann", "acme"), "acme only")
            await create_note(auth_server, token("bob", "globex"), "for bob")
            events = await read_events(bob_stream, 1)
            assert json.loads(events[0].data)["data"]["noteEvents"]["record"]["title"] == "for bob"
        async with client.stream(
            "GET",
            "/graphql",
            params={"query": NOTE_EVENTS},
            headers={"accept": "text/event-stream", "authorization": f"Bearer {token('ann', 'acme', ttl=1)}"},
        ) as short:
            assert short.status_code == 200
            started = time.monotonic()
            async for _ in short.aiter_text():
                pass
            assert time.monotonic() - started < 4


async def test_origin_allow_list_blocks_cross_site_websockets(tmp_path: Path) -> None:
    import websockets

    server = make_server(tmp_path, allowed_origins="https://app.example")
    try:
        with pytest.raises(websockets.InvalidStatus) as info:
            await WS.open(server.ws_url, origin="https://evil.example")  # type: ignore[arg-type]
        assert info.value.response.status_code == 403
        ws = await WS.open(server.ws_url, origin="https://app.example")  # type: ignore[arg-type]
        assert (await ws.init())["type"] == "connection_ack"
        await ws.close()
    finally:
        server.stop()
