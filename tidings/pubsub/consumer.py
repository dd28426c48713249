"""The consumer loop of a broker channel: subscribe, hand each message on, and
subscribe again with capped, jittered backoff whenever the subscription is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, Awaitable, Callable

from tidings.pubsub.base import Broker


async def consume(
    broker: Broker,
    channel: str,
    handle: Callable[[bytes], Awaitable[None]],
    *,
    on_ready: Callable[[], None],
    on_lost: Callable[[Exception], None],
    backoff: tuple[float, float] = (0.05, 1.0),
    close_timeout: float | None = None,
) -> None:
    """Consume ``channel`` until the broker closes (or the task is cancelled).

    ``handle`` gets each message and handles its own failures. ``on_ready`` is called
    each time the broker confirms a subscription (which restarts the backoff at its
    low end), ``on_lost`` with the fault each time one is lost; the next subscription
    comes after ``min(cap, low * 2**(failures - 1))`` seconds, times a random 0.5-1.
    ``close_timeout`` bounds closing a lost subscription (a stalled broker must not
    hold a shutdown); None waits for it.
    """
    failures = 0

    def subscribed() -> None:
        nonlocal failures
        failures = 0
        on_ready()

    while True:
        messages = broker.subscribe(channel, on_ready=subscribed)
        try:
            while True:
                try:
                    message = await anext(messages)
                except StopAsyncIteration:
                    return  # the broker closed
                except Exception as exc:
                    on_lost(exc)
                    break
                await handle(message)
        finally:
            if isinstance(messages, AsyncGenerator):
                if close_timeout is None:
                    await messages.aclose()
                else:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(close_timeout):
                            await messages.aclose()
        failures += 1
        low, cap = backoff
        await asyncio.sleep(min(cap, low * 2 ** (failures - 1)) * random.uniform(0.5, 1.0))
