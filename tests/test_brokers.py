"""Broker contract: one suite over every backend (memory, real Redis)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.backends import service_url
from tests.test_broker_faults import RedisProcess
from tidings.pubsub import Broker, BrokerUnavailable, MemoryBroker, broker_from_url


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    if request.param == "memory":
        b: Broker = MemoryBroker()
    else:
        b = broker_from_url(service_url("TIDINGS_TEST_REDIS_URL", "Redis"))
    await b.start()
    yield b
    await b.close()


async def _collect(broker: Broker, channel: str, n: int, ready: asyncio.Event, out: list[bytes]) -> None:
    stream = broker.subscribe(channel)
    first = asyncio.ensure_future(anext(stream))  # type: ignore[arg-type]
    await asyncio.sleep(0.2)  # let the subscription reach the backend
    ready.set()
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
    ready = asyncio.Event()
    stream = broker.subscribe("ready", on_ready=ready.set)
    first = asyncio.ensure_future(anext(stream))  # type: ignore[arg-type]
    await asyncio.wait_for(ready.wait(), 5)
    await broker.publish("ready", b"first")
    assert await asyncio.wait_for(first, 5) == b"first"
    await stream.aclose()  # type: ignore[attr-defined]


async def test_redis_faults_raise_to_the_caller_and_close_never_waits(tmp_path: Path) -> None:
    # The contract for a lost connection: the subscription's iterator raises (the caller
    # subscribes again), publish raises, and close returns even while Redis is stalled.
    redis = RedisProcess(tmp_path)
    redis.start()
    broker = broker_from_url(redis.url)
    try:
        await broker.start()
        ready = asyncio.Event()
        stream = broker.subscribe("c", on_ready=ready.set)
        pending = asyncio.ensure_future(anext(stream))  # type: ignore[arg-type]
        await asyncio.wait_for(ready.wait(), 5)
        assert redis.command(b"CLIENT", b"KILL", b"TYPE", b"pubsub") == b":1"
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(pending, 5)
        redis.kill()
        with pytest.raises(BrokerUnavailable):
            await asyncio.wait_for(broker.publish("c", b"lost"), 5)
        redis.start()
        await asyncio.wait_for(broker.publish("c", b"back"), 5)  # a stale pooled connection is not an error
        ready.clear()
        stream = broker.subscribe("c", on_ready=ready.set)
        pending = asyncio.ensure_future(anext(stream))  # type: ignore[arg-type]
        await asyncio.wait_for(ready.wait(), 5)
        redis.signal(signal.SIGSTOP)
        pending.cancel()
        await asyncio.wait_for(broker.close(), 2)
    finally:
        redis.stop()
