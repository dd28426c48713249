"""Operations: Prometheus /metrics, structured (JSON) logs, admin listing and closing of connections."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import time
import uuid
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.backends import fresh_database, service_url
from tests.support.processes import spawn_serve, stop_serve
from tests.support.servers import Server, free_port, make_server, wait_subscribers
from tests.support.wsclient import WS
from tests.test_realtime_sse import read_events
from tidings.config import Settings
from tidings.errors import ConfigurationError
from tidings.logs import JsonFormatter, configure_logging
from tidings.metrics import Metrics, MetricsAccess, merge, registry_for
from tidings.pubsub import broker_from_url
from tidings.redaction import REDACTED

pytestmark = pytest.mark.timeout(60)

SECRET = "operations-test-secret-0123456789abcdef"
TASK_EVENTS = "subscription { taskEvents { operation record { title } } }"
OPENED_AND_OPEN = ("tidings_connections_opened_total", "tidings_connections")
CREATE = "mutation($t: String!) { createTask(input: {title: $t}) { id } }"


def token(sub: str, account: str = "acme", role: str = "member", ttl: float = 600) -> str:
    now = int(time.time())
    claims = {"sub": sub, "account": account, "role": role, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, SECRET, algorithm="HS256")


async def post(server: Server, tok: str | None, query: str, variables: dict[str, Any] | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {tok}"} if tok else {}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        return await client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)


async def ws_subscriber(server: Server, tok: str, query: str = TASK_EVENTS) -> WS:
    ws = await WS.open(server.ws_url)
    assert (await ws.init({"authorization": f"Bearer {tok}"}))["type"] == "connection_ack"
    await ws.subscribe("1", query)
    return ws


def scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus-client's own parser."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


# -- metrics ------------------------------------------------------------------------


async def test_metrics_count_a_known_sequence_of_actions(tmp_path: Path) -> None:
    server = make_server(tmp_path, jwt_secret=SECRET, admin_role="root")
    try:
        alice, bob = token("alice"), token("bob")
        first, second = await ws_subscriber(server, alice), await ws_subscriber(server, bob)
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=10) as client,
            client.stream(
                "GET",
                "/graphql",
                params={"query": TASK_EVENTS},
                headers={"accept": "text/event-stream", "authorization": f"Bearer {alice}"},
            ) as stream,
        ):
            await wait_subscribers(server, 3, exact=True)
            for title in ("one", "two"):
                assert "errors" not in (await post(server, alice, CREATE, {"t": title})).json()
            missing = await post(server, alice, 'mutation { updateTask(id: "nope", input: {title: "x"}) { id } }')
            assert missing.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
            assert (await post(server, "not-a-jwt", "{ tasks { id } }")).status_code == 401
            for ws in (first, second):
                assert [(await ws.recv())["type"] for _ in range(2)] == ["next", "next"]
            assert len(await read_events(stream, 2)) == 2
            # A resume from seq 0 replays both events from the log (not a live delivery).
            resumed = await ws_subscriber(server, bob, 'subscription { taskEvents(after: "0") { seq } }')
            assert [(await resumed.recv())["payload"]["data"]["taskEvents"]["seq"] for _ in range(2)] == ["1", "2"]

            response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        samples = scrape(response.text)
        expected = {
            ("tidings_connections", (("transport", "ws"),)): 3,
            ("tidings_connections", (("transport", "sse"),)): 1,
            ("tidings_connections_opened_total", (("transport", "ws"),)): 3,
            ("tidings_connections_opened_total", (("transport", "sse"),)): 1,
            ("tidings_subscriptions", ()): 4,
            ("tidings_events_dispatched_total", ()): 2,
            ("tidings_deliveries_total", ()): 8,
            ("tidings_delivery_latency_seconds_count", ()): 6,  # live deliveries only
            ("tidings_mutations_total", (("collection", "Task"), ("outcome", "ok"))): 2,
            ("tidings_mutations_total", (("collection", "Task"), ("outcome", "NOT_FOUND"))): 1,
            ("tidings_auth_failures_total", (("reason", "invalid"), ("transport", "http"))): 1,
            ("tidings_replays_total", ()): 1,
            ("tidings_replayed_events_total", ()): 2,
            ("tidings_broker_reconnects_total", ()): 0,
        }
        assert {key: samples.get(key) for key in expected} == expected
        assert samples["tidings_subscription_groups", ()] == 2  # three of one document, and the resume
        assert samples["tidings_delivery_latency_seconds_bucket", (("le", "+Inf"),)] == 6
        assert 0 < samples["tidings_delivery_latency_seconds_sum", ()] < 6 * 5.0
        assert not any(name == "tidings_slow_consumers_dropped_total" for name, _ in samples)
        for ws in (first, second, resumed):
            await ws.close()
    finally:
        server.stop()


async def test_metrics_with_a_token_refuse_other_callers(tmp_path: Path) -> None:
    secret = "scrape-secret-0123456789"
    server = make_server(tmp_path, metrics=f"token:{secret}")
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await client.get("/metrics")).status_code == 401
            assert (await client.get("/metrics", headers={"authorization": "Bearer wrong"})).status_code == 401
            ok = await client.get("/metrics", headers={"authorization": f"Bearer {secret}"})
            assert ok.status_code == 200
            assert scrape(ok.text)["tidings_connections", (("transport", "ws"),)] == 0
    finally:
        server.stop()


async def test_metrics_off_is_not_served(tmp_path: Path) -> None:
    server = make_server(tmp_path, metrics="off")
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await client.get("/metrics")).status_code == 404
    finally:
        server.stop()


def test_metrics_access_setting() -> None:
    loopback = MetricsAccess("loopback")
    assert [loopback.check(ip, None) for ip in ("127.0.0.1", "::1", "10.0.0.7", None)] == [200, 200, 403, 403]
    with pytest.raises(ConfigurationError, match="off, loopback or token"):
        MetricsAccess("public")
    with pytest.raises(ConfigurationError, match="16 characters"):
        MetricsAccess("token:short")


def test_snapshots_of_processes_merge_counters_always_and_gauges_while_alive() -> None:
    a, b = Metrics(), Metrics()
    a.connections_opened["ws"] = 3
    b.connections_opened["ws"] = 4
    a.latency.counts[0] = 2
    b.latency.counts[0] = 5
    live, dead = a.snapshot(), b.snapshot()
    dead["tidings_connections"]["ws"] = 9
    merged = merge([(live, True), (dead, False)])
    assert merged["tidings_connections_opened"]["ws"] == 7
    assert merged["tidings_connections"]["ws"] == 0
    assert merged["tidings_delivery_latency_seconds"][""][0] == 7


# -- logs -------------------------------------------------------------------------------


def test_json_log_lines_carry_extra_fields_and_never_a_token() -> None:
    jwt_text = token("alice")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tidings.test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            "GET /graphql?token=%s refused",
            jwt_text,
            extra={
                "sub": "alice",
                "messages_in": 3,
                "header": f"Bearer {jwt_text}",
                "url": f"/x?access_token={jwt_text}",
            },
        )
        try:
            raise ValueError(f"bad {jwt_text}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert jwt_text not in stream.getvalue()
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "WARNING" and first["logger"] == "tidings.test-json"
    assert first["message"] == f"GET /graphql?token={REDACTED} refused"
    assert (first["sub"], first["messages_in"]) == ("alice", 3)
    assert first["header"] == f"Bearer {REDACTED}"
    assert REDACTED in first["url"]
    assert "ValueError" in second["exception"] and REDACTED in second["exception"]


def test_log_format_must_be_text_or_json() -> None:
    with pytest.raises(ConfigurationError, match="text or json"):
        configure_logging(Settings(log_format="xml"))


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, *args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    port = free_port()
    db = f"sqlite:///{tmp_path / 'app.db'}"
    proc = await spawn_serve(port, "--db", db, "--shutdown-timeout", "2", *args, cwd=tmp_path, stderr=PIPE)
    assert proc.stderr is not None
    try:
        url = f"http://127.0.0.1:{port}"
        async with asyncio.timeout(20):
            while True:
                async with httpx.AsyncClient(timeout=1) as client:
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(f"{url}/healthz")).status_code == 200:
                            break
                assert proc.returncode is None, "tidings serve exited before it listened"
                await asyncio.sleep(0.05)
        yield proc, url
    finally:
        await stop_serve(proc)


async def test_serve_with_json_logs_writes_connection_lines_without_tokens(tmp_path: Path) -> None:
    alice = token("alice")
    async with serving(tmp_path, "--log-format", "json", "--jwt-secret", SECRET) as (proc, url):
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as client,
            client.stream(
                "GET",
                "/graphql",
                params={"query": TASK_EVENTS, "token": alice},
                headers={"accept": "text/event-stream"},
            ) as stream,
        ):
            assert stream.status_code == 200
            async with asyncio.timeout(5):
                async for chunk in stream.aiter_text():
                    if "connected" in chunk:
                        break
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            # The stream's end reaches the server when it next writes: its close line is then due.
            async with asyncio.timeout(10):
                while (await client.get("/metrics")).text.find('tidings_connections{transport="sse"} 0.0') < 0:
                    await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.stderr is not None
        output = (await asyncio.wait_for(proc.stderr.read(), 15)).decode()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert alice not in output and "eyJ" not in output
    opened = [line for line in lines if line.get("event") == "connection_opened"]
    closed = [line for line in lines if line.get("event") == "connection_closed"]
    assert [(o["transport"], o["sub"], o["account"]) for o in opened] == [("sse", "alice", "acme")]
    assert [(c["transport"], c["sub"], c["connection_id"]) for c in closed] == [
        ("sse", "alice", opened[0]["connection_id"])
    ]
    assert closed[0]["duration_s"] >= 0 and closed[0]["messages_in"] == 1
    access = [line for line in lines if line["logger"] == "uvicorn.access" and "/graphql" in line["message"]]
    assert access and all(REDACTED in line["message"] for line in access)


# -- admin ------------------------------------------------------------------------------

CONNECTIONS = "{ connections { id transport sub account subscriptions openedAt queueDepth process } }"
CLOSE = "mutation($id: ID!, $r: String!) { closeConnection(id: $id, reason: $r) }"


async def test_admin_lists_and_closes_connections(tmp_path: Path) -> None:
    server = make_server(tmp_path, jwt_secret=SECRET, admin_role="root")
    root = token("ops", role="root")
    try:
        first, second = await ws_subscriber(server, token("alice")), await ws_subscriber(server, token("bob", "other"))
        await wait_subscribers(server, 2, exact=True)
        forbidden = (await post(server, token("alice"), CONNECTIONS)).json()
        assert forbidden["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        listed = (await post(server, root, CONNECTIONS)).json()["data"]["connections"]
        assert sorted((c["transport"], c["sub"], c["account"], c["subscriptions"]) for c in listed) == [
            ("ws", "alice", "acme", 1),
            ("ws", "bob", "other", 1),
        ]
        assert all(c["queueDepth"] == 0 and c["process"].endswith(f":{os.getpid()}") for c in listed)
        bob = next(c for c in listed if c["sub"] == "bob")
        refused = (await post(server, token("alice"), CLOSE, {"id": bob["id"], "r": "no"})).json()
        assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        closed = (await post(server, root, CLOSE, {"id": bob["id"], "r": "Abuse: rate"})).json()
        assert closed == {"data": {"closeConnection": True}}
        assert await second.closed() == (1008, "Abuse: rate")
        unknown = (await post(server, root, CLOSE, {"id": bob["id"], "r": "again"})).json()
        assert unknown["errors"][0]["extensions"]["code"] == "NOT_FOUND"
        left = (await post(server, root, CONNECTIONS)).json()["data"]["connections"]
        assert [c["sub"] for c in left] == ["alice"]
        await first.close()
    finally:
        server.stop()


@pytest.mark.parametrize("backend", ["redis", "postgresql"])
async def test_admin_across_processes_over_a_shared_broker(tmp_path: Path, backend: str) -> None:
    if backend == "redis":
        db, broker_url = f"sqlite:///{tmp_path / 'shared.db'}", service_url("TIDINGS_TEST_REDIS_URL", "Redis")
    else:
        db = broker_url = await fresh_database("postgresql", tmp_path)
    settings = dict(
        db=db,
        channel=f"test-admin-{uuid.uuid4().hex}",
        jwt_secret=SECRET,
        admin_role="root",
    )
    a = make_server(tmp_path, broker=broker_from_url(broker_url), **settings)
    b = make_server(tmp_path, broker=broker_from_url(broker_url), **settings)
    root = token("ops", role="root")
    try:
        on_b = await ws_subscriber(b, token("carol"))
        # Enough connections that B answers in several chunks (a NOTIFY holds under 8000 bytes).
        idle = [await WS.open(b.ws_url) for _ in range(60)]
        await wait_subscribers(b, 1, exact=True)
        listed = (await post(a, root, CONNECTIONS)).json()["data"]["connections"]
        assert len(listed) == 61 and len({c["id"] for c in listed}) == 61
        listed = [c for c in listed if c["sub"] == "carol"]
        assert [(c["sub"], c["transport"]) for c in listed] == [("carol", "ws")]
        closed = (await post(a, root, CLOSE, {"id": listed[0]["id"], "r": "Closed from A"})).json()
        assert closed == {"data": {"closeConnection": True}}
        assert await on_b.closed() == (1008, "Closed from A")
        for ws in idle:
            await ws.close()
        async with asyncio.timeout(5):
            while (await post(a, root, CONNECTIONS)).json()["data"]["connections"]:
                await asyncio.sleep(0.05)
    finally:
        a.stop()
        b.stop()


async def test_metrics_of_several_processes_are_summed_whichever_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two apps writing to one directory, as --workers' processes do (files are per process
    # and app, so two apps in this test process stand for two processes, each on its own port).
    directory = tmp_path / "metrics"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = make_server(tmp_path / "a"), make_server(tmp_path / "b")
    try:
        sockets = [await WS.open(server.ws_url) for server in (a, a, b, b, b)]
        for ws in sockets:
            assert (await ws.init())["type"] == "connection_ack"
        async with httpx.AsyncClient(timeout=10) as client, asyncio.timeout(10):
            # Each app writes its figures once a second: wait until both answers add up.
            while True:
                answers = [scrape((await client.get(f"{server.url}/metrics")).text) for server in (a, b)]
                counts = [[s.get((name, (("transport", "ws"),))) for name in OPENED_AND_OPEN] for s in answers]
                if counts == [[5, 5], [5, 5]]:
                    break
                assert all(c[1] in (2, 3, 5) for c in counts), counts  # its own, or the sum
                await asyncio.sleep(0.1)
        assert len(list(directory.glob("tidings_*.json"))) == 2
        for ws in sockets:
            await ws.close()
    finally:
        a.stop()
        b.stop()
    # Stopped: each marked its file as no longer running, so only the counters still count.
    shared = Metrics()
    _, reader = registry_for(shared, {"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    assert reader is not None
    merged = reader.read()
    assert merged["tidings_connections_opened"] == {"ws": 5}
    assert merged["tidings_connections"] == {"ws": 0, "sse": 0}
