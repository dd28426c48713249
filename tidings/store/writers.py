"""The writers: one per database kind, each with the same face, ``run(work)``, which commits a
write's transaction body (a synchronous SQLAlchemy Core function) and answers its result.

On a SQLite file (``SqliteWriter``) bodies run on one thread of their own with group commit:
the writes that arrive while a transaction runs are queued and then committed together in one
transaction, each inside a SAVEPOINT of its own, so a write that raises (CONFLICT, NOT_FOUND, a
refused check) rolls back alone and fails only its caller. Each still gets its own seq, in queue
order; batches commit one after another, so commit order is seq order; and no caller hears back
before its batch committed. One hop to the thread per batch, and one back.

On PostgreSQL (``PostgresWriter``) the same group commit runs on the event loop, each batch in
one transaction under an advisory lock that orders the batches of every process; a lost
connection is waited out within ``outage_wait``. SQLite in memory (``MemoryWriter``): one
transaction at a time on the async engine.

The database's own faults fail a whole batch UNAVAILABLE (``WriteHealth.error``): no space or an
I/O error at once, a lost connection once ``outage_wait`` has passed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tidings.store import sqlite
from tidings.store.batch import (
    LAST_SEQ,
    CommitLost,
    NotBegun,
    Outcome,
    Pending,
    batch_failed,
    dbapi_error,
    resolve,
    run_autocommit_batch,
    run_batch,
)
from tidings.store.faults import BACKOFF, WriteHealth, commit_unknown, is_disconnect

_T = TypeVar("_T")
_ADVISORY_LOCK_KEY = 0x7469_6469  # "tidi"
_PG_BEGIN = f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({_ADVISORY_LOCK_KEY})"
logger = logging.getLogger("tidings.store")


class Writer(Protocol):
    """Commits write transactions; ``insert_dialect``: the dialect the hand-made INSERT compiles
    for (tidings.store.insert), or None where SQLAlchemy's own execution runs it."""

    insert_dialect: sa.Dialect | None

    async def run(self, work: Callable[[sa.Connection], _T]) -> _T: ...

    async def close(self) -> None: ...


class SqliteWriter:
    """A SQLite file's writer: one thread, its connection kept between batches, group commit."""

    def __init__(self, url: sa.URL, health: WriteHealth, *, echo: bool, json_options: dict[str, Any]) -> None:
        self.health = health
        # IMMEDIATE: the write lock from the start. A deferred transaction that reads, then
        # writes, fails at once ("database is locked") when another process (a worker of
        # --workers) committed meanwhile; busy_timeout only helps the former.
        self.engine = sqlite.pysqlite_engine(url, sqlite.begin_immediate, echo=echo, **json_options)
        self.insert_dialect: sa.Dialect | None = self.engine.dialect
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tidings-writer")
        self._conn: sa.Connection | None = None  # the writer thread's own, kept between batches
        self._pending: list[Pending] = []  # writes waiting for the next group commit
        self._pending_lock = threading.Lock()
        self._draining = False  # a drain runs (or is submitted) on the writer thread

    async def run(self, work: Callable[[sa.Connection], _T]) -> _T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        with self._pending_lock:
            self._pending.append((work, future, loop))
            start, self._draining = not self._draining, True
        if start:
            self._thread.submit(self._run_in_thread)
        # A cancelled caller's write may still commit, as any write whose COMMIT was sent.
        return await future

    def submit(self, fn: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        """``fn`` on the writer thread, between batches (tests reach the writer's connection so)."""
        return self._thread.submit(fn)

    @property
    def connection(self) -> sa.Connection | None:
        """The writer thread's connection: use it on that thread only (``submit``)."""
        return self._conn

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown(wait=True)

    def _run_in_thread(self) -> None:
        """The writer thread's drain: commit queued writes in batches until the queue is empty."""
        while True:
            with self._pending_lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._draining = False
                    return
            outcomes = self._commit_batch(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
            for (_work, future, loop), outcome in zip(batch, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((future, *outcome))
            for loop, results in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits any more
                    loop.call_soon_threadsafe(resolve, results)

    def _commit_batch(self, batch: list[Pending]) -> list[Outcome]:
        """Run ``batch`` in one transaction; per write (True, result) or (False, exception)."""
        assert self.engine is not None
        outcomes: list[Outcome] = []
        try:
            # The writer thread keeps its connection between batches (a checkout and a reset
            # per batch cost as much as the INSERT); one that broke is replaced.
            conn = self._conn
            if conn is None or conn.closed or conn.invalidated:
                if conn is not None:
                    conn.close()
                conn = self._conn = self.engine.connect()
            with conn.begin():
                run_batch(conn, [work for work, _future, _loop in batch], outcomes)
        except Exception as exc:
            return batch_failed(outcomes, len(batch), self.health.error(exc))
        self.health.committed()
        return outcomes

    def _close(self) -> None:
        """On the writer thread: its connection back, then the engine's."""
        assert self.engine is not None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.engine.dispose()


class PostgresWriter:
    """PostgreSQL's writer: group commit on the event loop, on a connection of its own engine
    (one connection: not a reader's pool slot), kept between batches."""

    def __init__(
        self, url: str, health: WriteHealth, *, outage_wait: float, echo: bool, json_options: dict[str, Any]
    ) -> None:
        self.health = health
        self.outage_wait = outage_wait
        self.engine: AsyncEngine = create_async_engine(url, echo=echo, pool_size=1, max_overflow=0, **json_options)
        self.insert_dialect: sa.Dialect | None = self.engine.dialect
        self._pending: list[tuple[Callable[[sa.Connection], Any], asyncio.Future[Any], float]] = []  # since
        self._drainer: asyncio.Task[None] | None = None
        self._conn: tuple[AsyncConnection, Any] | None = None  # its connection, kept between batches

    async def run(self, work: Callable[[sa.Connection], _T]) -> _T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        self._pending.append((work, future, loop.time()))
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain(), name="tidings-group-commit")
        return await future

    async def close(self) -> None:
        if self._drainer is not None:
            await self._drainer  # the writes already queued commit (or fail) first
        if self._conn is not None:
            await self.drop(self._conn[0])  # terminated: never waits on an unreachable server
        await self.engine.dispose()

    async def _drain(self) -> None:
        """PostgreSQL's group commit, on the event loop: queued writes in one transaction per batch,
        under the advisory lock (which orders the batches of every process), until none are left."""
        batch: list[tuple[Callable[[sa.Connection], Any], asyncio.Future[Any], float]] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                # The bound runs from the arrival of the batch's first write, the one waiting longest.
                deadline = batch[0][2] + self.outage_wait
                outcomes = await self._write([work for work, _future, _since in batch], deadline)
                resolve([(future, *outcome) for (_w, future, _s), outcome in zip(batch, outcomes, strict=True)])
                batch = []
        except BaseException:
            for _work, future, _since in batch + self._pending:  # cancelled (shutdown): nobody is left waiting
                future.cancel()
            self._pending = []
            raise
        finally:
            self._drainer = None

    async def _write(self, works: list[Callable[[sa.Connection], Any]], deadline: float) -> list[Outcome]:
        """One batch committed; per write (True, result) or (False, exception).

        A lost or refused connection (a restart, a failover) is waited out until ``deadline``
        (the loop's clock), with backoff, and the batch run again on a new one. That is safe
        whenever COMMIT was not sent: PostgreSQL rolls back a transaction whose connection it
        lost, so the batch wrote nothing. A COMMIT whose answer was lost is run again only once
        the log shows it did not commit (``_committed``). Past the deadline: UNAVAILABLE.
        """
        loop = asyncio.get_running_loop()
        for attempt in itertools.count():
            outcomes: list[Outcome] = []
            try:
                await self.commit(works, outcomes)
            except CommitLost as lost:
                committed = await self._committed(lost.seq, deadline)
                if committed:
                    self.health.committed()
                    return outcomes
                if committed is None:
                    logger.warning("A write's COMMIT was lost and whether it committed could not be read in time")
                    self.health.error(lost.error, self.outage_wait)  # counted, and /readyz told
                    unknown = commit_unknown(self.outage_wait)
                    unknown.__cause__ = lost.error
                    return batch_failed([], len(works), unknown)
                exc: Exception = lost.error  # it did not commit: run it again
            except NotBegun as failed:
                # A kept connection that fails its BEGIN, whatever the error, is replaced and BEGIN
                # tried again (a restart closed it, and asyncpg may not say so plainly).
                if not (failed.kept or is_disconnect(failed.error)):
                    return batch_failed([], len(works), self.health.error(failed.error))
                exc = failed.error
            except Exception as failed:
                if not is_disconnect(failed):
                    return batch_failed(outcomes, len(works), self.health.error(failed))
                exc = failed
            else:
                self.health.committed()
                return outcomes
            remaining = deadline - loop.time()
            if attempt > 0 and remaining <= 0:  # a kept connection's loss is always tried once more
                return batch_failed([], len(works), self.health.error(exc, self.outage_wait))
            await asyncio.sleep(min(BACKOFF[min(attempt, len(BACKOFF) - 1)], max(remaining, 0.0)))
        raise AssertionError("unreachable")  # pragma: no cover

    async def commit(self, works: list[Callable[[sa.Connection], Any]], outcomes: list[Outcome]) -> None:
        """One group-commit transaction on PostgreSQL, in three round trips as a plain INSERT's:
        BEGIN with the advisory lock (one simple-protocol message), the statements, COMMIT.

        The writer keeps its connection between batches (a pool checkout and check-in cost
        as much as a statement), in AUTOCOMMIT, so SQLAlchemy issues no BEGIN of its own
        (its savepoints are plain statements inside ours) and the transaction is ours to
        end. A connection whose transaction did not end cleanly (a failed ROLLBACK or
        COMMIT, a cancellation) is invalidated and replaced, never used again with a
        transaction open. A BEGIN that fails raises ``NotBegun`` (nothing ran), a COMMIT that
        fails on a lost connection ``CommitLost``, with the last seq the transaction appended.
        """
        kept = self._conn is not None
        conn, driver = await self._connection()
        ended = False
        try:
            try:
                await self.run_sql(conn, driver, _PG_BEGIN)
            except Exception as exc:
                raise NotBegun(exc, kept=kept) from exc
            info = conn.info
            info.pop(LAST_SEQ, None)
            try:
                await conn.run_sync(run_autocommit_batch, works, outcomes)
            except BaseException as exc:
                if isinstance(exc, Exception) and is_disconnect(exc):
                    raise  # the server rolls it back; the connection is dropped (below)
                await self.run_sql(conn, driver, "ROLLBACK")
                ended = True
                raise
            seq = info.pop(LAST_SEQ, None)
            try:
                await self.run_sql(conn, driver, "COMMIT")
            except Exception as exc:
                if is_disconnect(exc):
                    raise CommitLost(seq, exc) from exc
                raise
            ended = True
        finally:
            if not ended:
                await self.drop(conn)

    async def _committed(self, seq: int | None, deadline: float) -> bool | None:
        """Whether the transaction that appended ``seq`` (its last event) committed; None when that
        could not be read before ``deadline``. Read under the writers' advisory lock, so the
        transaction whose COMMIT was lost has ended, either way, before the log is looked at.
        A transaction that appended no event (a retention pass, updates that changed nothing)
        may run again as it is: False.
        """
        if seq is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = max(deadline, loop.time() + 1.0)  # a second at least: telling beats answering "unknown"
        query = "SELECT count(*) FROM tidings_events WHERE seq = $1"
        for attempt in itertools.count():
            conn: AsyncConnection | None = None
            try:
                async with asyncio.timeout_at(deadline):
                    conn, driver = await self._connection()
                    await self.run_sql(conn, driver, _PG_BEGIN)
                    found = await driver.fetchval(query, seq)
                    await self.run_sql(conn, driver, "ROLLBACK")
                return bool(found)
            except Exception as exc:
                if conn is not None:
                    await self.drop(conn)
                if isinstance(exc, TimeoutError) or not is_disconnect(exc) or loop.time() >= deadline:
                    return None
            await asyncio.sleep(min(BACKOFF[min(attempt, len(BACKOFF) - 1)], max(deadline - loop.time(), 0.0)))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _connection(self) -> tuple[AsyncConnection, Any]:
        """The PostgreSQL writer's connection (AUTOCOMMIT) and its asyncpg connection."""
        if self._conn is None:
            assert self.engine is not None
            conn = await self.engine.connect()
            try:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                driver = (await conn.get_raw_connection()).driver_connection
            except BaseException:
                await asyncio.shield(conn.close())
                raise
            self._conn = (conn, driver)
        return self._conn

    async def drop(self, conn: AsyncConnection) -> None:
        """Invalidate the writer's connection (closed, never back in the pool); the next batch gets another."""
        if self._conn is not None and self._conn[0] is conn:
            self._conn = None
        with contextlib.suppress(Exception):
            await asyncio.shield(conn.invalidate())
        with contextlib.suppress(Exception):
            await asyncio.shield(conn.close())

    @staticmethod
    async def run_sql(conn: AsyncConnection, driver: Any, sql: str) -> None:
        """A statement without arguments (simple protocol), failing as SQLAlchemy's execution fails."""
        try:
            await driver.execute(sql)
        except Exception as exc:  # a lost connection: sa.exc.InterfaceError
            raise dbapi_error(conn.sync_connection, sql, [], exc) from exc


class MemoryWriter:
    """SQLite in memory: one transaction at a time on the async engine (aiosqlite)."""

    def __init__(self, engine: AsyncEngine, health: WriteHealth) -> None:
        self.engine = engine
        self.health = health
        self.insert_dialect: sa.Dialect | None = None  # SQLAlchemy's own execution, on aiosqlite
        self._lock = asyncio.Lock()

    async def run(self, work: Callable[[sa.Connection], _T]) -> _T:
        try:
            async with self._lock, self.engine.begin() as conn:
                result = await conn.run_sync(work)
        except Exception as exc:
            error = self.health.error(exc)
            if error is exc:
                raise
            raise error from exc
        self.health.committed()
        return result

    async def close(self) -> None:
        return None
