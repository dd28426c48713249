"""Database backends for contract tests: SQLite in a temp dir, PostgreSQL in a fresh database."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import NoReturn

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine


def unavailable(problem: str) -> NoReturn:
    """A test whose real service (PostgreSQL, Redis, node) is missing.

    Under CI it fails: `.ci/run` provides every service, so a missing one is a broken
    set-up, never a pass. On a developer's machine run without `bash scripts/test`
    (which starts them) it skips, saying what is missing and how to get it.
    """
    if os.environ.get("CI"):
        pytest.fail(f"{problem}: CI must provide it (.ci/run runs bash scripts/test, which sets it up)")
    pytest.skip(f"{problem}; `bash scripts/test` sets it up")


def service_url(env: str, what: str) -> str:
    """The URL of a test service from ``env`` (set by scripts/services)."""
    url = os.environ.get(env)
    if not url:
        unavailable(f"{what} not configured ({env} unset)")
    return url


async def fresh_database(kind: str, tmp_path: Path) -> str:
    """A URL of an empty database of ``kind`` ("sqlite" or "postgresql")."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    base = service_url("TIDINGS_TEST_PG_URL", "PostgreSQL")
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    return base.rsplit("/", 1)[0] + "/" + name
