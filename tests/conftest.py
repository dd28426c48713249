"""Fixtures: a real uvicorn server on a free loopback port, per test or module (helpers in tests/support/)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import RedisProcess, redis_process
from tests.support.servers import Server, make_server


class _ErrorLogs(logging.Handler):
    """Collects ERROR records from tidings' loggers, whatever thread logs them."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_server_errors() -> Iterator[None]:
    """A test fails if the server logged an error it swallowed (a fallback hid a bug)."""
    handler = _ErrorLogs()
    # tidings' own loggers, and uvicorn's, which reports exceptions escaping the ASGI app
    loggers = [logging.getLogger("tidings"), logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    if handler.records:
        lines = [f"{r.name}: {r.getMessage()}" for r in handler.records]
        pytest.fail("the server logged errors:\n" + "\n".join(lines[:10]), pytrace=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path)
    yield s
    s.stop()


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A throwaway redis-server on a free loopback port (tests/support/processes.py), stopped after the test."""
    with redis_process(tmp_path) as redis:
        yield redis
