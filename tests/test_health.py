"""Liveness and readiness: /healthz asks nothing of the dependencies, /readyz falls when one
breaks (a throwaway redis-server killed, a PostgreSQL database closed to connections, a
dispatcher left behind the log) and recovers when it is back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.support.backends import fresh_database, service_url
from tests.support.processes import RedisProcess
from tests.support.servers import make_server
from tests.test_broker_faults import post
from tidings.pubsub import MemoryBroker, broker_from_url
from tidings.pubsub.postgres import asyncpg_url


async def readyz(http: httpx.AsyncClient) -> tuple[int, dict[str, Any]]:
    response = await http.get("/readyz")
    return response.status_code, response.json()


async def until_ready(http: httpx.AsyncClient, status: int, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        code, body = await readyz(http)
        if code == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz stayed {code}: {body}")
        await asyncio.sleep(0.02)  # the next probe


async def test_readyz_falls_when_the_broker_dies_and_healthz_does_not(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    server = make_server(tmp_path, broker=broker_from_url(redis_server.url), ready_timeout=0.5)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            code, body = await readyz(http)
            assert code == 200 and body["status"] == "ready"
            assert body["checks"] == {"database": "ok", "broker": "ok", "dispatcher": "ok"}
            redis_server.kill()
            body = await until_ready(http, 503)
            assert body["status"] == "unavailable"
            assert body["checks"]["broker"] != "ok" and body["checks"]["database"] == "ok"
            assert (await http.get("/healthz")).status_code == 200  # alive all the same
            redis_server.start()
            assert (await until_ready(http, 200))["checks"]["broker"] == "ok"
    finally:
        server.stop()


async def test_readyz_falls_when_the_database_refuses_connections(tmp_path: Path) -> None:
    db = await fresh_database("postgresql", tmp_path)
    name = db.rsplit("/", 1)[1]
    admin = await asyncpg.connect(asyncpg_url(service_url("TIDINGS_TEST_PG_URL", "PostgreSQL")))
    server = make_server(tmp_path, broker=MemoryBroker(), db=db, ready_timeout=1.0)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await readyz(http))[0] == 200
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            body = await until_ready(http, 503)
            assert body["checks"]["database"] != "ok" and body["checks"]["broker"] == "ok"
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            assert (await until_ready(http, 200))["checks"]["database"] == "ok"
    finally:
        server.stop()
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_readyz_falls_when_the_dispatcher_stays_behind_the_log(tmp_path: Path) -> None:
    # The gap check is slow and the event below never rings a doorbell: the dispatcher
    # stays behind the head until the next doorbell makes it read the gap.
    server = make_server(tmp_path, gap_check_interval=30.0, ready_lag=0.3)
    tidings = server.tidings
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await readyz(http))[0] == 200
            coll = tidings.store.collections["Message"]
            values = {"room": "r1", "author": "a", "body": "silent"}
            server.call(tidings.store.create(coll, values, account=None, actor=None))
            body = await until_ready(http, 503)
            assert body["checks"]["dispatcher"].startswith("at seq 0, behind the log's head 1")
            await post(http, "rings")
            assert (await until_ready(http, 200))["seq"] == "2"
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_answer_without_a_token(tmp_path: Path, path: str) -> None:
    server = make_server(tmp_path, jwt_secret="s" * 32)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.get(path)).status_code == 200
    finally:
        server.stop()
