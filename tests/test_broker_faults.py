"""Redis faults: a killed, restarted, disconnected or stalled broker never stops delivery for good.

Each test runs its own redis-server on a free loopback port (never the shared one: these
tests kill it) and a real server using it as broker.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import RedisProcess
from tests.support.servers import Server, gql_post, make_server, subscribed, until
from tests.support.wsclient import WS
from tests.test_resume import events_of
from tidings.pubsub import broker_from_url

SUB = 'subscription { messageEvents(where: {room: {eq: "r1"}}) { seq record { body } } }'
CREATE = 'mutation($body: String!) { createMessage(input: {room: "r1", author: "a", body: $body}) { id } }'
OUTAGE = "Broker unreachable"
RECOVERY = "Broker reachable again"


@pytest.fixture
def broker_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="tidings.realtime")
    return caplog


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "tidings.realtime" and text in r.getMessage()]


async def post(http: httpx.AsyncClient, body: str) -> None:
    result = await gql_post(http, CREATE, {"body": body})
    assert "errors" not in result, result


async def bodies(ws: WS, n: int, timeout: float = 5.0) -> list[tuple[int, str]]:
    """The next ``n`` messageEvents as (seq, body)."""
    return events_of([await ws.recv(timeout) for _ in range(n)])


def redis_app(tmp_path: Path, redis: RedisProcess, **settings: Any) -> Server:
    return make_server(tmp_path, broker=broker_from_url(redis.url), **settings)


@pytest.mark.parametrize("fault", ["restart", "client-kill"])
async def test_consumer_resubscribes_and_fills_the_gap_after_a_disconnect(
    tmp_path: Path, redis_server: RedisProcess, broker_logs: pytest.LogCaptureFixture, fault: str
) -> None:
    # The gap check is slow here, so what arrives in time came through the broker or the
    # gap fill that follows resubscribing.
    server = redis_app(tmp_path, redis_server, gap_check_interval=30.0)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            ws = await subscribed(server, "1", SUB)
            await post(http, "before")
            assert [b for _, b in await bodies(ws, 1)] == ["before"]
            if fault == "restart":
                redis_server.kill()
                await post(http, "while-down-1")  # the doorbells are lost: the broker is gone
                await post(http, "while-down-2")
                redis_server.start()
            else:
                # The dispatcher's subscription, and those of the channels and of the admin channel.
                assert int(redis_server.command(b"CLIENT", b"KILL", b"TYPE", b"pubsub")[1:]) >= 1
                await post(http, "while-down-1")
                await post(http, "while-down-2")
            await until(lambda: bool(lines(broker_logs, RECOVERY)))
            await post(http, "after")
            got = await bodies(ws, 3, timeout=2.0)
            assert [b for _, b in got] == ["while-down-1", "while-down-2", "after"]
            assert [s for s, _ in got] == sorted({s for s, _ in got})
            assert await ws.no_message(0.3)
            assert len(lines(broker_logs, OUTAGE)) == 1
            assert len(lines(broker_logs, RECOVERY)) == 1
            assert all(r.levelno == logging.WARNING for r in lines(broker_logs, OUTAGE))
            await ws.close()
    finally:
        server.stop()


async def test_stalled_broker_holds_no_mutation_and_the_gap_check_delivers(
    tmp_path: Path, redis_server: RedisProcess, broker_logs: pytest.LogCaptureFixture
) -> None:
    server = redis_app(tmp_path, redis_server, gap_check_interval=0.2)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            ws = await subscribed(server, "1", SUB)
            await post(http, "before")
            assert [b for _, b in await bodies(ws, 1)] == ["before"]
            redis_server.signal(signal.SIGSTOP)
            try:
                for i in range(3):
                    # Each answers within a bound although Redis stays stalled far longer.
                    await asyncio.wait_for(post(http, f"stalled-{i}"), 2.0)
                # Meanwhile the gap check delivers from the log.
                assert [b for _, b in await bodies(ws, 3)] == ["stalled-0", "stalled-1", "stalled-2"]
                assert len(lines(broker_logs, OUTAGE)) == 1
            finally:
                redis_server.signal(signal.SIGCONT)
            await post(http, "after")
            assert [b for _, b in await bodies(ws, 1, timeout=2.0)] == ["after"]
            await until(lambda: bool(lines(broker_logs, RECOVERY)))
            assert await ws.no_message(0.3)
            assert len(lines(broker_logs, OUTAGE)) == 1
            await ws.close()
    finally:
        server.stop()


@pytest.mark.parametrize("fault", ["killed", "stalled"])
async def test_server_stops_cleanly_while_the_broker_is_down(
    tmp_path: Path, redis_server: RedisProcess, broker_logs: pytest.LogCaptureFixture, fault: str
) -> None:
    server = redis_app(tmp_path, redis_server, gap_check_interval=0.2)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            ws = await subscribed(server, "1", SUB)
            if fault == "killed":
                redis_server.kill()
            else:
                redis_server.signal(signal.SIGSTOP)
            await asyncio.wait_for(post(http, "down"), 2.0)
            assert [b for _, b in await bodies(ws, 1)] == ["down"]
            await until(lambda: bool(lines(broker_logs, OUTAGE)))
    finally:
        started = time.monotonic()
        server.stop()
    assert not server.thread.is_alive()
    assert time.monotonic() - started < 5
    # No ERROR either: the autouse fixture checks that (uvicorn's "Application shutdown failed" included).
