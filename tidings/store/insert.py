"""The hand-made INSERT path: a statement compiled once per table and keys, run on the driver."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.util import await_

from tidings.store.batch import dbapi_error


class Insert:
    """An INSERT compiled once and run on the driver's own connection, its values bound by the
    columns' own SQLAlchemy bind processors (so stored exactly as ``conn.execute(table.insert(),
    values)`` stores them). SQLAlchemy's per-statement execution (cache key, parameter set-up,
    result set-up, events) costs more than the INSERT itself: three times on SQLite, and on
    PostgreSQL half a write's Python time with the event row's INSERT beside it.

    ``execute`` returns the new row's key: its ``lastrowid`` on SQLite, ``returning``'s value (or
    None) on PostgreSQL (asyncpg; run from the greenlet SQLAlchemy's async engine runs sync code in).
    """

    def __init__(self, table: sa.Table, keys: Sequence[str], dialect: sa.Dialect, returning: str | None) -> None:
        self.asyncpg = dialect.driver == "asyncpg"
        self.returns = self.asyncpg and returning is not None  # SQLite has the rowid
        self.statement = table.insert()
        if self.returns:
            self.statement = self.statement.returning(table.c[str(returning)])
        compiled = self.statement.compile(dialect=dialect, column_keys=list(keys))
        self.sql = compiled.string
        names = compiled.positiontup or []
        # What SQLAlchemy's execution binds with: the dialect's implementation of each type
        # (for a TypeDecorator, its process_bind_param and then its impl's processor). The
        # public form of what its private ``_cached_bind_processor`` memoizes: the same
        # processors, made once per compiled INSERT.
        self.binds = [(name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in names]

    def execute(self, conn: sa.Connection, values: Mapping[str, Any]) -> Any:
        driver: Any = conn.connection.driver_connection
        if self.asyncpg:
            args = self._args(values)
            try:
                if self.returns:
                    return await_(driver.fetchval(self.sql, *args))
                await_(driver.execute(self.sql, *args))
            except Exception as exc:
                # The statement failed in the caller's transaction (or savepoint), which it
                # aborts: raised as SQLAlchemy's execution raises it (sa.exc.IntegrityError, ...).
                raise dbapi_error(conn, self.sql, args, exc) from exc
            return None
        try:
            cursor = driver.cursor()
            cursor.execute(self.sql, self._args(values))
        except Exception:
            # A value that does not bind, or a constraint: the failed statement wrote nothing, and
            # SQLAlchemy's own execution raises its error (wrapped, as callers expect) for it.
            return conn.execute(self.statement, values).lastrowid
        return cursor.lastrowid

    def _args(self, values: Mapping[str, Any]) -> list[Any]:
        return [values[n] if p is None else p(values[n]) for n, p in self.binds]


def plain(value: Any) -> Any:
    """Enum members are stored by value; datetimes as aware UTC."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    return value
