"""Group commit's pieces shared by the writers: a batch of writes in one transaction, each in a
savepoint of its own; the outcome handed back to each caller; the driver's errors read once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from tidings.store.faults import is_disconnect, storage_fault

LAST_SEQ = "tidings_last_seq"  # a write connection's info: the seq its transaction appended last

# One queued write: its transaction body, its caller's future and that caller's loop.
Pending = tuple[Callable[[sa.Connection], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]
Outcome = tuple[bool, Any]  # (True, result) or (False, exception)


def run_batch(conn: sa.Connection, works: list[Callable[[sa.Connection], Any]], outcomes: list[Outcome]) -> None:
    """Run ``works`` in ``conn``'s transaction, each in a SAVEPOINT of its own (a lone one without):
    one that raises is rolled back alone and gets (False, exception), the others (True, result);
    one that fails for the database's fault (no space, a lost connection) fails them all.

    One savepoint name for every write (each is released before the next begins), not
    SQLAlchemy's ``begin_nested``, whose names count up for as long as the connection
    lives: the writers keep theirs, and each new name was a new statement to prepare.
    """
    if len(works) == 1:
        outcomes.append((True, works[0](conn)))  # raising rolls the whole transaction back
        return
    info = conn.info
    for work in works:
        conn.exec_driver_sql("SAVEPOINT tidings_write")
        appended = info.get(LAST_SEQ)
        try:
            result = work(conn)
        except Exception as exc:
            if storage_fault(exc) is not None or is_disconnect(exc):
                raise  # the database's fault, not this write's: the whole batch fails
            # Should these fail, the whole batch fails.
            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT tidings_write")
            conn.exec_driver_sql("RELEASE SAVEPOINT tidings_write")
            info[LAST_SEQ] = appended  # whatever it appended was rolled back with it
            outcomes.append((False, exc))
        else:
            conn.exec_driver_sql("RELEASE SAVEPOINT tidings_write")
            outcomes.append((True, result))


def run_autocommit_batch(
    conn: sa.Connection, works: list[Callable[[sa.Connection], Any]], outcomes: list[Outcome]
) -> None:
    """``run_batch`` inside a transaction of SQLAlchemy's own bookkeeping only (the connection is
    in AUTOCOMMIT: its begin and commit send nothing), so none stays open on a kept connection."""
    with conn.begin():
        run_batch(conn, works, outcomes)


def batch_failed(outcomes: list[Outcome], size: int, exc: Exception) -> list[Outcome]:
    """A lone write raised, or BEGIN, a savepoint or COMMIT failed: nothing of the batch is written.
    Writes that failed on their own keep their error; the others get ``exc``."""
    return [outcomes[i] if i < len(outcomes) and not outcomes[i][0] else (False, exc) for i in range(size)]


class NotBegun(Exception):
    """PostgreSQL's writer could not begin a batch's transaction: nothing of it ran.
    ``kept``: on the connection kept from an earlier batch (not a new one)."""

    def __init__(self, error: Exception, *, kept: bool) -> None:
        super().__init__(f"BEGIN failed: {error}")
        self.error = error
        self.kept = kept


class CommitLost(Exception):
    """PostgreSQL's writer lost its connection with COMMIT sent: the batch may or may not have
    committed. ``seq``: the last event it appended (None: it appended none)."""

    def __init__(self, seq: int | None, error: Exception) -> None:
        super().__init__(f"COMMIT lost (last seq {seq})")
        self.seq = seq
        self.error = error


def dbapi_error(conn: sa.Connection | None, statement: str, args: list[Any], exc: Exception) -> Exception:
    """An asyncpg error as SQLAlchemy's execution wraps it: the dialect's DBAPI translation
    (its adapter's ``_handle_exception``) inside ``sa.exc.DBAPIError.instance``."""
    if conn is None or conn.invalidated:  # its DBAPI connection is gone (and would be made again)
        return exc
    adapter: Any = conn.connection.dbapi_connection
    try:
        adapter._handle_exception(exc)
    except Exception as translated:
        return sa.exc.DBAPIError.instance(statement, args, translated, conn.dialect.loaded_dbapi.Error)
    return exc


def resolve(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """On the caller's loop: hand each write its result or exception (skipping cancelled callers)."""
    for future, ok, value in results:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
