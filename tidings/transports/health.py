"""Liveness and readiness: /healthz asks nothing of the dependencies, /readyz asks each."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tidings.errors import Unavailable
from tidings.pubsub import Broker
from tidings.realtime.dispatcher import Dispatcher
from tidings.store import Store


class Readiness:
    """Whether this process can serve now: its database, its broker, its dispatcher's lag."""

    def __init__(self, store: Store, broker: Broker, dispatcher: Dispatcher, *, timeout: float, lag: float) -> None:
        self.store = store
        self.broker = broker
        self.dispatcher = dispatcher
        self.timeout = timeout
        self.lag = lag
        self._lag_mark: tuple[int, float] | None = None  # (a log head the dispatcher had not reached, when)

    async def check(self) -> dict[str, str]:
        """Each dependency's state, "ok" or why not: the database answers a short query (and, after
        a write failed UNAVAILABLE, commits a probe write), the broker a ping, and the dispatcher
        reaches the log's head within ``ready_lag`` seconds."""
        timeout = self.timeout
        checks: dict[str, str] = {}
        head: int | None = None
        try:
            async with asyncio.timeout(timeout):
                head = await self.store.last_seq()
                if self.store.write_fault is not None:
                    # Writes failed for the database's fault: ready again once one commits. The
                    # probe is that write, made here, since an unready process may get no others.
                    await self.store.probe_write()
            checks["database"] = "ok"
        except Unavailable as exc:
            checks["database"] = f"writes failing: {exc.message}"
        except Exception as exc:
            checks["database"] = _why(exc, timeout)
        try:
            async with asyncio.timeout(timeout):
                await self.broker.ping()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = _why(exc, timeout)
        checks["dispatcher"] = "ok" if head is None else self._lag_check(head)
        return checks

    def _lag_check(self, head: int) -> str:
        # Behind is normal for a moment: fail only when a head seen ``ready_lag`` seconds ago
        # is still not reached. No waiting here: each probe compares with the last one's mark.
        position, now = self.dispatcher.position, time.monotonic()
        if position >= head:
            self._lag_mark = None
            return "ok"
        if self._lag_mark is None or position >= self._lag_mark[0]:
            self._lag_mark = (head, now)
            return "ok"
        behind = now - self._lag_mark[1]
        if behind <= self.lag:
            return "ok"
        return f"at seq {position}, behind the log's head {self._lag_mark[0]} for {behind:.1f} s"


class Health:
    """The /healthz and /readyz endpoints."""

    def __init__(self, dispatcher: Dispatcher, readiness: Readiness, is_draining: Callable[[], bool]) -> None:
        self.dispatcher = dispatcher
        self.readiness = readiness
        self.is_draining = is_draining

    async def healthz(self, _: Request) -> Response:
        return JSONResponse({"status": "ok", "seq": str(self.dispatcher.position)})

    async def readyz(self, _: Request) -> Response:
        # Ready: this process can serve now. Liveness (/healthz) asks nothing of the dependencies.
        checks = await self.readiness.check()
        draining = self.is_draining()
        ready = all(state == "ok" for state in checks.values()) and not draining
        status = "ready" if ready else "draining" if draining else "unavailable"
        body = {"status": status, "checks": checks, "seq": str(self.dispatcher.position)}
        return JSONResponse(body, 200 if ready else 503)


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")
