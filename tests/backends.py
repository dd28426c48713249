"""Database backends for contract tests: SQLite in a temp dir, PostgreSQL in a fresh database."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine


def pg_base_url() -> str | None:
    url = os.environ.get("TIDINGS_TEST_PG_URL")
    if not url and os.environ.get("CI"):
        pytest.fail("TIDINGS_TEST_PG_URL must be set in CI (scripts/services starts PostgreSQL)")
    return url


async def fresh_database(kind: str, tmp_path: Path) -> str:
    """A URL of an empty database of ``kind`` ("sqlite" or "postgresql")."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    base = pg_base_url()
    if base is None:
        pytest.skip("PostgreSQL not configured (set TIDINGS_TEST_PG_URL)")
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_async_engine(base, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    return base.rsplit("/", 1)[0] + "/" + name
