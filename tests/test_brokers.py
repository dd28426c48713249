"""Broker contract: one suite over every backend (memory, real Redis, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from tests.support.backends import fresh_database, service_url
from tests.support.processes import RedisProcess
from tests.support.servers import make_server, subscribed, until
from tests.test_broker_faults import OUTAGE, RECOVERY, SUB, bodies, lines, post
from tidings.errors import ConfigurationError
from tidings.pubsub import Broker, BrokerUnavailable, MemoryBroker, broker_from_url, resolve_broker_url
from tidings.pubsub.consumer import consume
from tidings.pubsub.postgres import PostgresBroker, asyncpg_url, fit


@pytest.fixture(params=["memory", "redis", "postgres"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    if request.param == "memory":
        b: Broker = MemoryBroker()
    elif request.param == "redis":
        b = broker_from_url(service_url("TIDINGS_TEST_REDIS_URL", "Redis"))
    else:
        b = broker_from_url(service_url("TIDINGS_TEST_PG_URL", "PostgreSQL"))
    await b.start()
    yield b
    await b.close()


async def subscribe_ready(broker: Broker, channel: str) -> tuple[AsyncIterator[bytes], asyncio.Future[bytes]]:
    """Subscribe to ``channel``, once the backend holds the subscription: the stream and its next message."""
    ready = asyncio.Event()
    stream = broker.subscribe(channel, on_ready=ready.set)
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.wait_for(ready.wait(), 5)
    return stream, pending


async def _collect(broker: Broker, channel: str, n: int, ready: asyncio.Event, out: list[bytes]) -> None:
    stream = broker.subscribe(channel, on_ready=ready.set)  # set once the backend holds the subscription
    first = asyncio.ensure_future(anext(stream))  # type: ignore[arg-type]
    out.append(await first)
    while len(out) < n:
        out.append(await anext(stream))  # type: ignore[arg-type]


async def test_publish_reaches_every_subscriber_in_order(broker: Broker) -> None:
    outs: list[list[bytes]] = [[], []]
    readies = [asyncio.Event(), asyncio.Event()]
    tasks = [asyncio.create_task(_collect(broker, "c1", 20, readies[i], outs[i])) for i in range(2)]
    await asyncio.gather(*(r.wait() for r in readies))
    for i in range(20):
        await broker.publish("c1", str(i).encode())
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert outs[0] == outs[1] == [str(i).encode() for i in range(20)]


async def test_channels_are_separate(broker: Broker) -> None:
    out: list[bytes] = []
    ready = asyncio.Event()
    task = asyncio.create_task(_collect(broker, "only", 1, ready, out))
    await ready.wait()
    await broker.publish("other", b"no")
    await broker.publish("only", b"yes")
    await asyncio.wait_for(task, 5)
    assert out == [b"yes"]


async def test_memory_broker_drop_hook_counts() -> None:
    broker = MemoryBroker(drop=lambda m: m == b"lost")
    await broker.start()
    out: list[bytes] = []
    ready = asyncio.Event()
    task = asyncio.create_task(_collect(broker, "c", 1, ready, out))
    await ready.wait()
    await broker.publish("c", b"lost")
    await broker.publish("c", b"kept")
    await asyncio.wait_for(task, 5)
    assert out == [b"kept"] and broker.dropped == 1
    await broker.close()


async def test_on_ready_means_every_later_message_arrives(broker: Broker) -> None:
    # No settling sleep: once on_ready is called, the subscription is in place on the broker.
    stream, first = await subscribe_ready(broker, "ready")
    await broker.publish("ready", b"first")
    assert await asyncio.wait_for(first, 5) == b"first"
    await stream.aclose()  # type: ignore[attr-defined]


async def test_redis_faults_raise_to_the_caller_and_close_never_waits(redis_server: RedisProcess) -> None:
    # The contract for a lost connection: the subscription's iterator raises (the caller
    # subscribes again), publish raises, and close returns even while Redis is stalled.
    redis = redis_server
    broker = broker_from_url(redis.url)
    await broker.start()
    _stream, pending = await subscribe_ready(broker, "c")
    assert redis.command(b"CLIENT", b"KILL", b"TYPE", b"pubsub") == b":1"
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(pending, 5)
    redis.kill()
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(broker.publish("c", b"lost"), 5)
    redis.start()
    await asyncio.wait_for(broker.publish("c", b"back"), 5)  # a stale pooled connection is not an error
    _stream, pending = await subscribe_ready(broker, "c")
    redis.signal(signal.SIGSTOP)
    pending.cancel()
    await asyncio.wait_for(broker.close(), 2)


class _Flaky:
    """A broker whose first subscription is lost after one message and whose second ends (closed)."""

    def __init__(self) -> None:
        self.subscriptions = 0

    async def subscribe(self, channel: str, *, on_ready: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        self.subscriptions += 1
        if on_ready is not None:
            on_ready()
        yield b"%d" % self.subscriptions
        if self.subscriptions == 1:
            raise BrokerUnavailable("connection lost")


async def test_the_consumer_resubscribes_after_a_loss_until_the_broker_closes() -> None:
    broker, handled, ready, lost = _Flaky(), list[bytes](), list[int](), list[Exception]()

    async def handle(message: bytes) -> None:
        handled.append(message)

    await asyncio.wait_for(
        consume(
            broker,  # type: ignore[arg-type]
            "c",
            handle,
            on_ready=lambda: ready.append(broker.subscriptions),
            on_lost=lost.append,
            backoff=(0.001, 0.002),
        ),
        5,
    )
    assert handled == [b"1", b"2"] and ready == [1, 2]
    assert [str(e) for e in lost] == ["connection lost"]


async def test_ping_answers_while_the_broker_is_up(broker: Broker) -> None:
    await asyncio.wait_for(broker.ping(), 5)


def test_auto_broker_follows_the_database() -> None:
    pg = "postgresql://u:p@127.0.0.1/db"
    assert resolve_broker_url("auto", "sqlite:///x.db") == "memory://"
    assert resolve_broker_url("auto", pg) == pg
    assert resolve_broker_url("postgres", pg) == pg
    assert resolve_broker_url("memory://", pg) == "memory://"  # explicit memory stays memory
    assert resolve_broker_url("redis://h:6379/0", pg) == "redis://h:6379/0"
    assert isinstance(broker_from_url("auto", db=pg), PostgresBroker)
    assert isinstance(broker_from_url("auto", db="sqlite:///x.db"), MemoryBroker)
    with pytest.raises(ConfigurationError, match="needs a PostgreSQL --db"):
        resolve_broker_url("postgres", "sqlite:///x.db")


def test_a_doorbell_too_large_for_notify_keeps_only_its_seq() -> None:
    small = orjson.dumps({"seq": 7, "record": {"body": "x"}})
    assert fit(small) == small
    large = orjson.dumps({"seq": 8, "record": {"body": "x" * 9000}})
    assert orjson.loads(fit(large)) == {"seq": 8}
    with pytest.raises(ValueError, match="not a doorbell"):
        fit(b"y" * 9000)


async def test_postgres_large_doorbell_arrives_as_its_seq() -> None:
    broker = broker_from_url(service_url("TIDINGS_TEST_PG_URL", "PostgreSQL"))
    await broker.start()
    try:
        stream, pending = await subscribe_ready(broker, "big")
        await broker.publish("big", orjson.dumps({"seq": 41, "record": {"body": "é" * 5000}}))
        assert orjson.loads(await asyncio.wait_for(pending, 5)) == {"seq": 41}
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await broker.close()


async def test_postgres_faults_raise_to_the_caller_and_a_new_subscription_works() -> None:
    # pg_terminate_backend on the listener: its iterator raises BrokerUnavailable (the
    # dispatcher subscribes again and reads the gap from the log).
    url = service_url("TIDINGS_TEST_PG_URL", "PostgreSQL")
    broker = broker_from_url(url)
    await broker.start()
    admin = await asyncpg.connect(asyncpg_url(url))
    try:
        stream, pending = await subscribe_ready(broker, "pgfault")
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN %pgfault%'"
        )
        assert killed == 1
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(pending, 5)
        # The pool's connections die too (a server restart): the next publish is no error.
        await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'tidings broker notify' AND datname = current_database()"
        )
        await asyncio.wait_for(broker.publish("pgfault", b"nobody"), 5)
        stream, pending = await subscribe_ready(broker, "pgfault")
        await broker.publish("pgfault", b"back")
        assert await asyncio.wait_for(pending, 5) == b"back"
        await stream.aclose()  # type: ignore[attr-defined]
    finally:
        await admin.close()
        await broker.close()


async def test_postgres_broker_listener_terminated_the_server_resubscribes_and_fills_the_gap(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A PostgreSQL --db and no --broker: LISTEN/NOTIFY on the same database. The gap check is
    # slow, so what arrives in time came through the new LISTEN or the gap fill that follows it.
    caplog.set_level(logging.INFO, logger="tidings.realtime")
    db = await fresh_database("postgresql", tmp_path)
    server = make_server(tmp_path, db=db, gap_check_interval=30.0)
    assert isinstance(server.tidings.broker, PostgresBroker)
    admin = await asyncpg.connect(asyncpg_url(db))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            ws = await subscribed(server, "1", SUB)
            await post(http, "before")
            assert [b for _, b in await bodies(ws, 1)] == ["before"]
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query = 'LISTEN \"tidings:events\"'"
            )
            assert killed == 1
            await post(http, "while-down-1")
            await post(http, "while-down-2")
            await until(lambda: bool(lines(caplog, RECOVERY)))
            await post(http, "after")
            got = await bodies(ws, 3, timeout=2.0)
            assert [b for _, b in got] == ["while-down-1", "while-down-2", "after"]
            assert [s for s, _ in got] == [2, 3, 4]
            assert await ws.no_message(0.3)
            assert [r.levelno for r in lines(caplog, OUTAGE)] == [logging.WARNING]
            await ws.close()
    finally:
        await admin.close()
        server.stop()
