"""Browser origins: one default for CORS (HTTP, SSE) and the WebSocket Origin check.

Demo mode lets a frontend dev server on localhost in out of the box; with auth on the
default is the same origin only; either setting opens its channel to what it lists.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.support.servers import Server, make_server
from tests.support.wsclient import WS
from tests.test_auth import SECRET, token
from tests.test_realtime_sse import SUB
from tidings.transports.origins import OriginPolicy, is_same_origin

DEV = "http://localhost:5173"
EVIL = "https://evil.example"


@pytest.mark.parametrize(
    ("setting", "auth", "allowed", "refused"),
    [
        ("", False, [DEV, "http://127.0.0.1:3000", "http://localhost"], [EVIL, "https://localhost:5173", "null"]),
        ("", True, [], [DEV, "http://127.0.0.1:3000", EVIL]),
        ("*", True, [DEV, EVIL], []),
        ("https://app.example/, http://localhost:*", True, ["https://app.example", DEV], [EVIL, "http://app.example"]),
        ("https://app.example:8443", False, ["https://app.example:8443"], [DEV, "https://app.example"]),
    ],
)
def test_origin_policy(setting: str, auth: bool, allowed: list[str], refused: list[str]) -> None:
    policy = OriginPolicy.parse(setting, auth_enabled=auth)
    assert [o for o in allowed if policy.allows(o)] == allowed
    assert [o for o in refused if policy.allows(o)] == []


def test_same_origin_compares_host_and_port() -> None:
    assert is_same_origin("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert is_same_origin("https://api.example", "api.example:443")
    assert not is_same_origin("http://127.0.0.1:8001", "127.0.0.1:8000")
    assert not is_same_origin("http://evil.example", "api.example")
    assert not is_same_origin("null", "api.example")
    assert not is_same_origin("http://api.example", None)


# -- a real server ------------------------------------------------------------------------


async def preflight(client: httpx.AsyncClient, origin: str) -> httpx.Response:
    return await client.options(
        "/graphql",
        headers={
            "origin": origin,
            "access-control-request-method": "POST",
            "access-control-request-headers": "content-type, authorization",
        },
    )


async def fetch(client: httpx.AsyncClient, origin: str, **headers: str) -> httpx.Response:
    return await client.post(
        "/graphql",
        json={"query": "{ __typename }"},
        headers={"origin": origin, "content-type": "application/json", **headers},
    )


async def assert_cross_origin_works(server: Server, origin: str, **headers: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        allowed = await preflight(client, origin)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == origin
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert allowed.headers["access-control-allow-headers"] == "content-type, authorization"
        response = await fetch(client, origin, **headers)
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        async with client.stream(
            "GET",
            "/graphql",
            params={"query": SUB},
            headers={"origin": origin, "accept": "text/event-stream", **headers},
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["access-control-allow-origin"] == origin
    ws = await WS.open(server.ws_url, origin=origin)  # type: ignore[arg-type]
    try:
        auth = {"Authorization": headers["authorization"]} if "authorization" in headers else None
        assert (await ws.init(auth))["type"] == "connection_ack"
    finally:
        await ws.close()


async def assert_cross_origin_refused(server: Server, origin: str, **headers: str) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        refused = await preflight(client, origin)
        assert refused.status_code >= 400  # 400 from the CORS check, or 401 where there is none
        assert [h for h in refused.headers if h.startswith("access-control-")] == []
        response = await fetch(client, origin, **headers)
        assert [h for h in response.headers if h.startswith("access-control-")] == []
    with pytest.raises(websockets.InvalidStatus) as info:
        await WS.open(server.ws_url, origin=origin)  # type: ignore[arg-type]
    assert info.value.response.status_code == 403


@pytest.fixture
def demo(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Server]:
    caplog.set_level(logging.INFO, logger="tidings")
    server = make_server(tmp_path)
    yield server
    server.stop()


def bearer() -> dict[str, Any]:
    return {"authorization": f"Bearer {token('ann', 'acme')}"}


async def test_demo_mode_lets_a_localhost_dev_server_in_and_says_so(
    demo: Server, caplog: pytest.LogCaptureFixture
) -> None:
    await assert_cross_origin_works(demo, DEV)
    await assert_cross_origin_works(demo, "http://127.0.0.1:3000")
    started = [r.getMessage() for r in caplog.get_records("setup")]  # the server started in the fixture
    assert (
        "Browser pages from the same origin, http://localhost:*, http://127.0.0.1:* may use HTTP, SSE and WebSocket"
        in started
    )


async def test_demo_mode_refuses_other_origins(demo: Server) -> None:
    await assert_cross_origin_refused(demo, EVIL)


async def test_auth_on_defaults_to_the_same_origin_only(tmp_path: Path) -> None:
    server = make_server(tmp_path, jwt_secret=SECRET)
    try:
        await assert_cross_origin_refused(server, DEV, **bearer())
        await assert_cross_origin_refused(server, EVIL, **bearer())
        # The server's own pages (the playground) still connect.
        ws = await WS.open(server.ws_url, origin=server.url)  # type: ignore[arg-type]
        assert (await ws.init({"Authorization": bearer()["authorization"]}))["type"] == "connection_ack"
        await ws.close()
    finally:
        server.stop()


async def test_auth_on_with_the_settings_allows_what_they_list(tmp_path: Path) -> None:
    server = make_server(tmp_path, jwt_secret=SECRET, cors_origins=DEV, allowed_origins="http://localhost:*")
    try:
        await assert_cross_origin_works(server, DEV, **bearer())
        await assert_cross_origin_refused(server, EVIL, **bearer())
    finally:
        server.stop()
