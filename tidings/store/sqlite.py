"""SQLite's connections as tidings wants them: WAL, busy timeout, and BEGIN issued by tidings
(pysqlite begins lazily, before the first write only, which would split a reader's snapshot)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa


def pysqlite_engine(url: sa.URL, begin: Callable[[sa.Connection], None], **options: Any) -> sa.Engine:
    """A plain pysqlite engine with tidings' pragmas, whose transactions start with ``begin``."""
    engine = sa.create_engine(url, **options)
    sa.event.listen(engine, "connect", pragmas)
    sa.event.listen(engine, "begin", begin)
    return engine


def begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN")


def begin_immediate(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")  # references are real foreign keys (tidings.store.tables)
    cursor.close()
