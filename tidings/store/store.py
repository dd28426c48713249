"""CRUD over the collection tables, each write committed with its event-log row.

Writes are serialized so that event sequence numbers are assigned in commit
order: an asyncio lock on SQLite (one process owns the file), and a
transaction-scoped advisory lock on PostgreSQL, taken before the event row is
inserted and released at commit. A reader that sees event N therefore sees
every event below N that will ever commit, which is what resume relies on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import enum
import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_

from tidings.errors import Conflict, NotFound, Unavailable
from tidings.events import ChangeEvent, Operation, to_jsonable
from tidings.filters import MATCH_ALL, FieldKind, Filter, compile_sql
from tidings.schema.collection import MISSING, Collection
from tidings.store.faults import BACKOFF, Fault, commit_unknown, is_disconnect, storage_fault, unavailable
from tidings.store.tables import DELETED_AT, Tables
from tidings.types import Record

_ADVISORY_LOCK_KEY = 0x7469_6469  # "tidi"
_PG_BEGIN = f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({_ADVISORY_LOCK_KEY})"
_T = TypeVar("_T")
SYSTEM_COLUMNS = ("id", "account", "created_at", "updated_at", "version")
SEQ_LABEL = "__tidings_seq"  # "__" names are GraphQL's own: no field has it
READ_CONNECTIONS = 10  # a SQLite file's read snapshots open at once (the async engine's pool held 5 + 10)
_LAST_SEQ = "tidings_last_seq"  # a write connection's info: the seq its transaction appended last
logger = logging.getLogger("tidings.store")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id() -> str:
    """32 random hex digits (the form ``uuid4().hex`` had, without building a UUID)."""
    return os.urandom(16).hex()


def json_dumps(value: Any) -> str:
    """JSON columns' encoder: orjson, or the standard library for what orjson refuses (ints beyond 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


# One queued write: its transaction body, its caller's future and that caller's loop.
_Pending = tuple[Callable[[sa.Connection], Any], asyncio.Future[Any], asyncio.AbstractEventLoop]


def normalize_url(url: str) -> str:
    """Accept plain ``sqlite:///x.db`` / ``postgresql://`` and pick the async driver."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url.removeprefix("sqlite:")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    return url


@contextlib.asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


class Reader:
    """One read-only snapshot: every query of one GraphQL request reads through it,
    so the response reflects exactly one event-log position (``seq``).

    On a SQLite file it holds a plain pysqlite connection of ``_SqliteReads`` and runs
    each statement, with its fetch, in one hop to a reading thread (``run``); elsewhere
    an ``_AsyncSnapshot``.
    """

    def __init__(
        self,
        store: Store,
        snapshot: _AsyncSnapshot | None = None,
        *,
        run: Callable[[Callable[[sa.Connection], Any]], Awaitable[Any]] | None = None,
        seq: int | None = None,
    ) -> None:
        self._store = store
        self._snapshot = snapshot
        self._run = run
        self._lock = asyncio.Lock()  # root fields resolve concurrently; one connection
        self._seq = seq

    async def _rows(self, query: sa.Select[Any], params: Mapping[str, Any] | None = None) -> Sequence[sa.RowMapping]:
        async with self._lock:
            if self._run is not None:
                found: Sequence[sa.RowMapping] = await self._run(lambda c: c.execute(query, params).mappings().all())
                return found
            assert self._snapshot is not None
            if self._seq is None:
                # PostgreSQL: the snapshot's position rides on its first statement, one round trip
                # fewer than reading it alone (which ``seq`` still does when no row came back).
                query = query.add_columns(self._store.seq_column)

            async def fetch(conn: AsyncConnection) -> Sequence[sa.RowMapping]:
                rows: Sequence[sa.RowMapping] = (await conn.execute(query, params)).mappings().all()
                return rows

            rows = await self._snapshot.run(fetch)
            if rows and self._seq is None:
                self._seq = int(rows[0][SEQ_LABEL])
            return rows

    async def seq(self) -> int:
        if self._seq is None:
            async with self._lock:
                if self._seq is None:
                    if self._run is not None:
                        self._seq = int(await self._run(self._store._last_seq_sync))
                    else:
                        assert self._snapshot is not None
                        self._seq = await self._snapshot.run(self._store._last_seq)
        return self._seq

    async def get(self, coll: Collection, record_id: str, guard: Filter = MATCH_ALL) -> Record | None:
        rows = await self._rows(self._store.get_query(coll, guard), {"record_id": record_id})
        return self._store.decode_row(coll, rows[0]) if rows else None

    async def list(
        self,
        coll: Collection,
        where: Filter,
        order_by: Sequence[tuple[str, bool]] = (),
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Record]:
        table = self._store.tables.by_collection[coll.name]
        query = self._store.hide_deleted(coll, sa.select(table).where(compile_sql(where, table, self._store.dialect)))
        for column, descending in order_by:
            col: Any = table.c[column]
            if self._store.dialect == "postgresql" and isinstance(col.type, sa.String):
                # Code point order, as SQLite sorts, the filters compare and live windows keep
                # rows (whatever the database's collation).
                col = col.collate("C")
            query = query.order_by(col.desc().nulls_last() if descending else col.asc().nulls_last())
        id_col = table.c.id.collate("C") if self._store.dialect == "postgresql" else table.c.id
        query = query.order_by(id_col.asc()).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        return [self._store.decode_row(coll, row) for row in await self._rows(query)]

    async def count(self, coll: Collection, where: Filter) -> int:
        """How many records match ``where`` (the ``<plural>Count`` query field)."""
        table = self._store.tables.by_collection[coll.name]
        query = sa.select(sa.func.count().label("count")).select_from(table)
        query = self._store.hide_deleted(coll, query.where(compile_sql(where, table, self._store.dialect)))
        return int((await self._rows(query))[0]["count"])


class _Insert:
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
                raise _dbapi_error(conn, self.sql, args, exc) from exc
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


class _SqliteReads:
    """Read snapshots of a SQLite file on plain pysqlite connections, run by a pool of threads.

    aiosqlite hops to its thread and back for every step of a statement (cursor,
    execute, fetch, close) and for BEGIN and the pool's reset: about a dozen hops for
    ``task(id)``. Here a snapshot costs three: open (BEGIN and the log's head), the
    statement with its fetch, close. ``size`` connections and as many threads; a
    snapshot takes a slot first, so a thread never waits on the pool.
    """

    def __init__(self, url: sa.URL, size: int, *, echo: bool, json_options: dict[str, Any]) -> None:
        self.size = size
        self.engine = _pysqlite_engine(url, _sqlite_begin, echo=echo, pool_size=size, max_overflow=0, **json_options)
        self.threads = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="tidings-reader")
        self.slots: asyncio.Semaphore | None = None  # made on the serving loop (start)

    @contextlib.asynccontextmanager
    async def snapshot(self, store: Store) -> AsyncIterator[Reader]:
        if self.slots is None:
            self.slots = asyncio.Semaphore(self.size)
        async with self.slots:
            loop = asyncio.get_running_loop()
            opening = loop.run_in_executor(self.threads, self._open, store)
            try:
                conn, seq = await asyncio.shield(opening)
            except asyncio.CancelledError:
                # The open goes on in its thread: its connection goes back once it is done.
                opening.add_done_callback(self._close_late)
                raise

            async def run(work: Callable[[sa.Connection], _T]) -> _T:
                return await loop.run_in_executor(self.threads, work, conn)

            try:
                yield Reader(store, run=run, seq=seq)
            finally:
                # Shielded: a cancelled request still returns its connection (rolled back, to the pool).
                await asyncio.shield(loop.run_in_executor(self.threads, conn.close))

    def _open(self, store: Store) -> tuple[sa.Connection, int]:
        conn = self.engine.connect()
        try:
            conn.begin()  # BEGIN (see _sqlite_begin); the head read below fixes the snapshot
            return conn, store._last_seq_sync(conn)
        except BaseException:
            conn.close()
            raise

    def _close_late(self, opening: asyncio.Future[tuple[sa.Connection, int]]) -> None:
        if not opening.cancelled() and opening.exception() is None:
            self.threads.submit(opening.result()[0].close)

    def close(self) -> None:
        self.threads.shutdown(wait=True)
        self.engine.dispose()


class _AsyncSnapshot:
    """A read transaction on an async connection (PostgreSQL: REPEATABLE READ; SQLite in memory),
    connected and begun with its first statement.

    Until a statement has been answered, a lost or refused connection (a restart, a failover) is
    replaced, with backoff, for up to ``outage_wait`` seconds from the snapshot's opening: the
    first answered statement fixes the snapshot, so the request still reads one position. Past
    that bound, or once a statement was answered, losing the connection fails the read
    UNAVAILABLE. On the happy path it costs what ``engine.connect()`` and ``begin()`` cost.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.opened = asyncio.get_running_loop().time()
        self.conn: AsyncConnection | None = None
        self.answered = False
        self.failed: Unavailable | None = None  # once the database was lost for good, for every statement

    async def run(self, statement: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        if self.failed is not None:
            raise self.failed
        try:
            return await self._run(statement)
        except Unavailable as exc:
            self.failed = exc
            raise

    async def _run(self, statement: Callable[[AsyncConnection], Awaitable[_T]]) -> _T:
        if self.answered:
            assert self.conn is not None
            try:
                return await statement(self.conn)
            except Exception as exc:
                if not is_disconnect(exc):
                    raise
                await self._drop()
                raise self.store._read_failed(exc, waited=0.0) from exc
        loop = asyncio.get_running_loop()
        for attempt in itertools.count():
            try:
                if self.conn is None:
                    self.conn = await self._begin()
                result = await statement(self.conn)
            except Exception as exc:
                if not is_disconnect(exc):
                    raise
                await self._drop()
                remaining = self.opened + self.store.outage_wait - loop.time()
                if attempt > 0 and remaining <= 0:  # a kept connection's loss is always tried once more
                    raise self.store._read_failed(exc, waited=self.store.outage_wait) from exc
                await asyncio.sleep(min(BACKOFF[min(attempt, len(BACKOFF) - 1)], max(remaining, 0.0)))
                continue
            self.answered = True
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    async def _begin(self) -> AsyncConnection:
        conn = await self.store.engine.connect()
        try:
            if self.store.dialect == "postgresql":
                conn = await conn.execution_options(isolation_level="REPEATABLE READ")
            await conn.begin()
        except BaseException:
            await asyncio.shield(conn.close())
            raise
        return conn

    async def _drop(self) -> None:
        """The lost connection invalidated (never back in the pool) and closed."""
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.invalidate())
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.close())

    async def close(self) -> None:
        """Its connection back to the pool (its transaction rolled back: it wrote nothing). A
        connection lost since the last answer is dropped: what was read stands."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        try:
            await asyncio.shield(conn.close())
        except Exception as exc:
            if not is_disconnect(exc):
                raise
            self.conn = conn
            await self._drop()


class Store:
    """The database: tables per collection plus the event log."""

    def __init__(
        self, url: str, collections: list[Collection], *, echo: bool = False, outage_wait: float = 5.0
    ) -> None:
        self.url = normalize_url(url)
        # Seconds a read or write waits for a database it lost (a restart) before failing UNAVAILABLE.
        self.outage_wait = outage_wait
        # Why the last write transaction failed UNAVAILABLE (None: it committed): /readyz, the metrics.
        self.write_fault: Fault | None = None
        self._fault_since = 0.0
        # (operation, reason) -> transactions that failed UNAVAILABLE: writes, and reads (snapshots).
        self.failures: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.collections = {c.name: c for c in collections}
        self.tables = Tables(collections)
        json_options: dict[str, Any] = {"json_serializer": json_dumps, "json_deserializer": orjson.loads}
        self.engine: AsyncEngine = create_async_engine(self.url, echo=echo, **json_options)
        self.dialect = self.engine.dialect.name
        self._write_lock: asyncio.Lock | None = None
        self.epoch = ""  # read by start()
        self._sync_engine: sa.Engine | None = None
        self._write_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._reads: _SqliteReads | None = None  # a SQLite file's read snapshots
        self._writer_conn: sa.Connection | None = None  # the writer thread's own, kept between batches
        self._inserts: dict[tuple[str, tuple[str, ...]], _Insert] = {}  # compiled once per table and keys
        self._pending: list[_Pending] = []  # writes waiting for the next group commit
        self._pending_lock = threading.Lock()
        self._draining = False  # a drain runs (or is submitted) on the writer thread
        # PostgreSQL: writes waiting for the next group commit, and the task committing them.
        self._pg_pending: list[tuple[Callable[[sa.Connection], Any], asyncio.Future[Any], float]] = []  # since
        self._pg_drainer: asyncio.Task[None] | None = None
        self._pg_writer: tuple[AsyncConnection, Any] | None = None  # its connection, kept between batches
        self._pg_write_engine: AsyncEngine | None = None  # whose one connection that is (not a reader's slot)
        if self.dialect == "postgresql":
            self._pg_write_engine = create_async_engine(
                self.url, echo=echo, pool_size=1, max_overflow=0, **json_options
            )
        self._get_queries: dict[str, sa.Select[Any]] = {}  # by collection, without a guard
        # The event log's head as a column of a query's own (see ``Reader._rows``).
        self.seq_column = sa.func.coalesce(
            sa.select(sa.func.max(self.tables.events.c.seq)).scalar_subquery(),
            self._pruned_through_query().scalar_subquery(),
            0,
        ).label(SEQ_LABEL)
        if self.dialect == "sqlite":
            # pysqlite begins transactions lazily (only before DML), which would let
            # two SELECTs of one reader see two snapshots; take over BEGIN ourselves.
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            sa.event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
            database = self.engine.url.database
            if database and database != ":memory:":
                # Writes go through a plain pysqlite engine on one thread of their own.
                # IMMEDIATE: the write lock from the start. A deferred transaction that reads,
                # then writes, fails at once ("database is locked") when another process (a
                # worker of --workers) committed meanwhile; busy_timeout only helps the former.
                self._sync_engine = _pysqlite_engine(
                    self.engine.url.set(drivername="sqlite"), _sqlite_begin_immediate, echo=echo, **json_options
                )
                self._write_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tidings-writer")
                self._reads = _SqliteReads(
                    self.engine.url.set(drivername="sqlite"), READ_CONNECTIONS, echo=echo, json_options=json_options
                )
            self._write_lock = asyncio.Lock()

    async def start(self) -> None:
        """Create missing tables (idempotent), and the event log's epoch if it has none."""
        async with self.engine.begin() as conn:
            await conn.run_sync(self.tables.metadata.create_all)
        self.epoch = await self._epoch()

    async def _epoch(self) -> str:
        """The event log's identity, made once with the database (resume cursors carry it).

        A database that is replaced or reset gets a new one, so a cursor it never
        issued is told apart from one it did, though seqs start again from 1.
        """
        meta = self.tables.meta
        query = sa.select(meta.c.value).where(meta.c.key == "epoch")
        async with self.engine.connect() as conn:
            value = (await conn.execute(query)).scalar()
        if value is None:
            # Processes starting at once on a new database race here: one insert wins, all read it.
            with contextlib.suppress(sa.exc.IntegrityError):
                async with self.engine.begin() as conn:
                    await conn.execute(meta.insert().values(key="epoch", value=secrets.randbits(48) | 1 << 47))
            async with self.engine.connect() as conn:
                value = (await conn.execute(query)).scalar()
        return f"{value:x}"

    async def close(self) -> None:
        if self._pg_drainer is not None:
            await self._pg_drainer  # the writes already queued commit (or fail) first
        if self._pg_writer is not None:
            await self._pg_drop(self._pg_writer[0])  # terminated: never waits on an unreachable server
        if self._pg_write_engine is not None:
            await self._pg_write_engine.dispose()
        await self.engine.dispose()
        if self._sync_engine is not None and self._write_thread is not None:
            await asyncio.get_running_loop().run_in_executor(self._write_thread, self._close_writer)
            self._write_thread.shutdown(wait=True)
        if self._reads is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._reads.close)

    # -- reads ---------------------------------------------------------------

    @property
    def read_pool(self) -> sa.Pool:
        """The pool read snapshots check connections out of."""
        return self._reads.engine.pool if self._reads is not None else self.engine.sync_engine.pool

    @contextlib.asynccontextmanager
    async def reader(self) -> AsyncIterator[Reader]:
        if self._reads is not None:
            async with self._reads.snapshot(self) as reader:
                yield reader
            return
        snapshot = _AsyncSnapshot(self)
        try:
            yield Reader(self, snapshot)
        finally:
            await snapshot.close()

    def get_query(self, coll: Collection, guard: Filter) -> sa.Select[Any]:
        """The SELECT of one record by ``:record_id`` within ``guard`` (without a guard, built once)."""
        query = self._get_queries.get(coll.name) if guard == MATCH_ALL else None
        if query is None:
            table = self.tables.by_collection[coll.name]
            query = sa.select(table).where(
                table.c.id == sa.bindparam("record_id"), compile_sql(guard, table, self.dialect)
            )
            query = self.hide_deleted(coll, query)
            if guard == MATCH_ALL:
                self._get_queries[coll.name] = query
        return query

    async def get(self, coll: Collection, record_id: str, guard: Filter = MATCH_ALL) -> Record | None:
        async with self.reader() as r:
            return await r.get(coll, record_id, guard)

    async def last_seq(self) -> int:
        async with self.engine.connect() as conn:
            return await self._last_seq(conn)

    async def _last_seq(self, conn: AsyncConnection) -> int:
        return await conn.run_sync(self._last_seq_sync)

    def _last_seq_sync(self, conn: sa.Connection) -> int:
        value = conn.execute(sa.select(sa.func.max(self.tables.events.c.seq))).scalar()
        if value is None:
            # An empty log may be one that retention emptied: the position is where it pruned to.
            value = conn.execute(self._pruned_through_query()).scalar()
        return int(value or 0)

    def _pruned_through_query(self) -> sa.Select[Any]:
        meta = self.tables.meta
        return sa.select(meta.c.value).where(meta.c.key == "pruned_through")

    async def read_events(self, after: int, upto: int | None = None, limit: int = 1000) -> list[ChangeEvent]:
        """Events with ``after < seq <= upto``, in order, at most ``limit``."""
        ev = self.tables.events
        query = sa.select(ev).where(ev.c.seq > after).order_by(ev.c.seq).limit(limit)
        if upto is not None:
            query = query.where(ev.c.seq <= upto)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [self.decode_event(row) for row in rows]

    async def pruned_through(self) -> int:
        """Events up to this sequence may have been deleted by retention."""
        async with self.engine.connect() as conn:
            value = (await conn.execute(self._pruned_through_query())).scalar()
        return int(value or 0)

    async def prune(self, *, keep_after: dt.datetime | None = None, keep_last: int | None = None) -> int:
        """Delete events older than ``keep_after`` and/or beyond the newest ``keep_last``.

        Runs as one short write transaction, so a writer waits at most one delete;
        returns the new ``pruned_through``. With ``keep_after`` it also purges the rows
        soft-deleted before it (see ``_purge_deleted``).
        """
        ev, meta = self.tables.events, self.tables.meta

        def work(conn: sa.Connection) -> int:
            if keep_after is not None:
                self._purge_deleted(conn, keep_after)
            last = int(conn.execute(sa.select(sa.func.max(ev.c.seq))).scalar() or 0)
            bound = 0
            if keep_last is not None:
                bound = max(bound, last - keep_last)
            if keep_after is not None:
                old = conn.execute(sa.select(sa.func.max(ev.c.seq)).where(ev.c.timestamp < keep_after)).scalar()
                bound = max(bound, int(old or 0))
            current = int(conn.execute(self._pruned_through_query()).scalar() or 0)
            if bound <= current:
                return current
            conn.execute(ev.delete().where(ev.c.seq <= bound))
            updated = conn.execute(meta.update().where(meta.c.key == "pruned_through").values(value=bound))
            if updated.rowcount == 0:
                conn.execute(meta.insert().values(key="pruned_through", value=bound))
            return bound

        return await self._transaction(work)

    # -- writes --------------------------------------------------------------
    #
    # Each write is one synchronous SQLAlchemy Core transaction body, run by
    # ``_transaction``. On a SQLite file, bodies run on one writer thread with
    # group commit: the writes that arrive while a transaction runs are queued and
    # then committed together in one transaction, each inside a SAVEPOINT of its
    # own, so a write that raises (CONFLICT, NOT_FOUND, a refused check) rolls back
    # alone and fails only its caller. Each still gets its own seq, in queue order;
    # batches commit one after another, so commit order is seq order; and no caller
    # hears back before its batch committed. One hop to the thread per batch (not
    # per write, as aiosqlite would make per statement) and one back per batch.
    # On PostgreSQL a body runs through the async connection's greenlet bridge,
    # serialized by a transaction-scoped advisory lock.
    #
    # The database's own faults fail a whole batch UNAVAILABLE (``_write_error``): no
    # space or an I/O error at once, a lost connection once ``outage_wait`` has passed
    # (PostgreSQL waits it out, see ``_pg_write``). ``write_fault`` keeps the last one
    # until a transaction commits again.

    async def _transaction(self, work: Callable[[sa.Connection], _T]) -> _T:
        if self._sync_engine is not None:
            assert self._write_thread is not None
            loop = asyncio.get_running_loop()
            future: asyncio.Future[_T] = loop.create_future()
            with self._pending_lock:
                self._pending.append((work, future, loop))
                start, self._draining = not self._draining, True
            if start:
                self._write_thread.submit(self._run_in_thread)
            # A cancelled caller's write may still commit, as any write whose COMMIT was sent.
            return await future
        if self.dialect == "postgresql":
            loop = asyncio.get_running_loop()
            pg_future: asyncio.Future[_T] = loop.create_future()
            self._pg_pending.append((work, pg_future, loop.time()))
            if self._pg_drainer is None:
                self._pg_drainer = asyncio.create_task(self._pg_drain(), name="tidings-group-commit")
            return await pg_future
        try:
            async with self._write_lock or _nothing(), self.engine.begin() as conn:  # SQLite in memory
                result = await conn.run_sync(work)
        except Exception as exc:
            error = self._write_error(exc)
            if error is exc:
                raise
            raise error from exc
        self._write_committed()
        return result

    def _write_error(self, exc: Exception, waited: float = 0.0) -> Exception:
        """What a failed write transaction answers: UNAVAILABLE for a fault of the database (its
        disk full, an I/O error, its connection lost past ``waited`` seconds), else ``exc`` itself."""
        fault = storage_fault(exc) or (Fault.UNREACHABLE if is_disconnect(exc) else None)
        if fault is None:
            return exc
        self.failures["write", fault.value] += 1
        if self.write_fault is None:
            self._fault_since = time.monotonic()
            logger.warning("Writes failing (%s): %s", fault.value, _describe(exc))
        self.write_fault = fault
        error = unavailable(fault, waited)
        error.__cause__ = exc
        return error

    def _write_committed(self) -> None:
        if self.write_fault is not None:  # read and written by the writer alone (its thread, or the drain)
            logger.info(
                "Writes succeed again, %.1f s after they began failing (%s)",
                time.monotonic() - self._fault_since,
                self.write_fault.value,
            )
            self.write_fault = None

    def _read_failed(self, exc: Exception, waited: float) -> Unavailable:
        self.failures["read", Fault.UNREACHABLE.value] += 1
        logger.warning("A read failed: the database was unreachable for %g s (%s)", waited, _describe(exc))
        return unavailable(Fault.UNREACHABLE, waited)

    async def probe_write(self) -> None:
        """A write transaction that leaves nothing behind, for /readyz while writes are failing: a
        meta row larger than a page, inserted and deleted, so it needs room as a real write does.

        It fails UNAVAILABLE as long as they would; once it commits, ``write_fault`` is cleared.
        """
        meta = self.tables.meta
        # PostgreSQL: below a B-tree entry's limit (2,704 bytes); SQLite: overflow pages.
        key = "tidings:write-probe:" + os.urandom(512 if self.dialect == "postgresql" else 4096).hex()

        def work(conn: sa.Connection) -> None:
            conn.execute(meta.insert().values(key=key, value=0))
            conn.execute(meta.delete().where(meta.c.key == key))

        await self._transaction(work)

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
                    loop.call_soon_threadsafe(_resolve, results)

    def _commit_batch(self, batch: list[_Pending]) -> list[tuple[bool, Any]]:
        """Run ``batch`` in one transaction; per write (True, result) or (False, exception)."""
        assert self._sync_engine is not None
        outcomes: list[tuple[bool, Any]] = []
        try:
            # The writer thread keeps its connection between batches (a checkout and a reset
            # per batch cost as much as the INSERT); one that broke is replaced.
            conn = self._writer_conn
            if conn is None or conn.closed or conn.invalidated:
                if conn is not None:
                    conn.close()
                conn = self._writer_conn = self._sync_engine.connect()
            with conn.begin():
                _run_batch(conn, [work for work, _future, _loop in batch], outcomes)
        except Exception as exc:
            return _batch_failed(outcomes, len(batch), self._write_error(exc))
        self._write_committed()
        return outcomes

    def _close_writer(self) -> None:
        """On the writer thread: its connection back, then the engine's."""
        assert self._sync_engine is not None
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None
        self._sync_engine.dispose()

    async def _pg_drain(self) -> None:
        """PostgreSQL's group commit, on the event loop: queued writes in one transaction per batch,
        under the advisory lock (which orders the batches of every process), until none are left."""
        batch: list[tuple[Callable[[sa.Connection], Any], asyncio.Future[Any], float]] = []
        try:
            while self._pg_pending:
                batch, self._pg_pending = self._pg_pending, []
                # The bound runs from the arrival of the batch's first write, the one waiting longest.
                deadline = batch[0][2] + self.outage_wait
                outcomes = await self._pg_write([work for work, _future, _since in batch], deadline)
                _resolve([(future, *outcome) for (_w, future, _s), outcome in zip(batch, outcomes, strict=True)])
                batch = []
        except BaseException:
            for _work, future, _since in batch + self._pg_pending:  # cancelled (shutdown): nobody is left waiting
                future.cancel()
            self._pg_pending = []
            raise
        finally:
            self._pg_drainer = None

    async def _pg_write(self, works: list[Callable[[sa.Connection], Any]], deadline: float) -> list[tuple[bool, Any]]:
        """One batch committed; per write (True, result) or (False, exception).

        A lost or refused connection (a restart, a failover) is waited out until ``deadline``
        (the loop's clock), with backoff, and the batch run again on a new one. That is safe
        whenever COMMIT was not sent: PostgreSQL rolls back a transaction whose connection it
        lost, so the batch wrote nothing. A COMMIT whose answer was lost is run again only once
        the log shows it did not commit (``_pg_committed``). Past the deadline: UNAVAILABLE.
        """
        loop = asyncio.get_running_loop()
        for attempt in itertools.count():
            outcomes: list[tuple[bool, Any]] = []
            try:
                await self._pg_commit(works, outcomes)
            except _CommitLost as lost:
                committed = await self._pg_committed(lost.seq, deadline)
                if committed:
                    self._write_committed()
                    return outcomes
                if committed is None:
                    logger.warning("A write's COMMIT was lost and whether it committed could not be read in time")
                    self._write_error(lost.error, self.outage_wait)  # counted, and /readyz told
                    unknown = commit_unknown(self.outage_wait)
                    unknown.__cause__ = lost.error
                    return _batch_failed([], len(works), unknown)
                exc: Exception = lost.error  # it did not commit: run it again
            except _NotBegun as failed:
                # A kept connection that fails its BEGIN, whatever the error, is replaced and BEGIN
                # tried again (a restart closed it, and asyncpg may not say so plainly).
                if not (failed.kept or is_disconnect(failed.error)):
                    return _batch_failed([], len(works), self._write_error(failed.error))
                exc = failed.error
            except Exception as failed:
                if not is_disconnect(failed):
                    return _batch_failed(outcomes, len(works), self._write_error(failed))
                exc = failed
            else:
                self._write_committed()
                return outcomes
            remaining = deadline - loop.time()
            if attempt > 0 and remaining <= 0:  # a kept connection's loss is always tried once more
                return _batch_failed([], len(works), self._write_error(exc, self.outage_wait))
            await asyncio.sleep(min(BACKOFF[min(attempt, len(BACKOFF) - 1)], max(remaining, 0.0)))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pg_commit(self, works: list[Callable[[sa.Connection], Any]], outcomes: list[tuple[bool, Any]]) -> None:
        """One group-commit transaction on PostgreSQL, in three round trips as a plain INSERT's:
        BEGIN with the advisory lock (one simple-protocol message), the statements, COMMIT.

        The writer keeps its connection between batches (a pool checkout and check-in cost
        as much as a statement), in AUTOCOMMIT, so SQLAlchemy issues no BEGIN of its own
        (its savepoints are plain statements inside ours) and the transaction is ours to
        end. A connection whose transaction did not end cleanly (a failed ROLLBACK or
        COMMIT, a cancellation) is invalidated and replaced, never used again with a
        transaction open. A BEGIN that fails raises ``_NotBegun`` (nothing ran), a COMMIT that
        fails on a lost connection ``_CommitLost``, with the last seq the transaction appended.
        """
        kept = self._pg_writer is not None
        conn, driver = await self._pg_connection()
        ended = False
        try:
            try:
                await self._pg_run(conn, driver, _PG_BEGIN)
            except Exception as exc:
                raise _NotBegun(exc, kept=kept) from exc
            info = conn.info
            info.pop(_LAST_SEQ, None)
            try:
                await conn.run_sync(_run_autocommit_batch, works, outcomes)
            except BaseException as exc:
                if isinstance(exc, Exception) and is_disconnect(exc):
                    raise  # the server rolls it back; the connection is dropped (below)
                await self._pg_run(conn, driver, "ROLLBACK")
                ended = True
                raise
            seq = info.pop(_LAST_SEQ, None)
            try:
                await self._pg_run(conn, driver, "COMMIT")
            except Exception as exc:
                if is_disconnect(exc):
                    raise _CommitLost(seq, exc) from exc
                raise
            ended = True
        finally:
            if not ended:
                await self._pg_drop(conn)

    async def _pg_committed(self, seq: int | None, deadline: float) -> bool | None:
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
                    conn, driver = await self._pg_connection()
                    await self._pg_run(conn, driver, _PG_BEGIN)
                    found = await driver.fetchval(query, seq)
                    await self._pg_run(conn, driver, "ROLLBACK")
                return bool(found)
            except Exception as exc:
                if conn is not None:
                    await self._pg_drop(conn)
                if isinstance(exc, TimeoutError) or not is_disconnect(exc) or loop.time() >= deadline:
                    return None
            await asyncio.sleep(min(BACKOFF[min(attempt, len(BACKOFF) - 1)], max(deadline - loop.time(), 0.0)))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _pg_connection(self) -> tuple[AsyncConnection, Any]:
        """The PostgreSQL writer's connection (AUTOCOMMIT) and its asyncpg connection."""
        if self._pg_writer is None:
            assert self._pg_write_engine is not None
            conn = await self._pg_write_engine.connect()
            try:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                driver = (await conn.get_raw_connection()).driver_connection
            except BaseException:
                await asyncio.shield(conn.close())
                raise
            self._pg_writer = (conn, driver)
        return self._pg_writer

    async def _pg_drop(self, conn: AsyncConnection) -> None:
        """Invalidate the writer's connection (closed, never back in the pool); the next batch gets another."""
        if self._pg_writer is not None and self._pg_writer[0] is conn:
            self._pg_writer = None
        with contextlib.suppress(Exception):
            await asyncio.shield(conn.invalidate())
        with contextlib.suppress(Exception):
            await asyncio.shield(conn.close())

    @staticmethod
    async def _pg_run(conn: AsyncConnection, driver: Any, sql: str) -> None:
        """A statement without arguments (simple protocol), failing as SQLAlchemy's execution fails."""
        try:
            await driver.execute(sql)
        except Exception as exc:  # a lost connection: sa.exc.InterfaceError
            raise _dbapi_error(conn.sync_connection, sql, [], exc) from exc

    async def create(
        self, coll: Collection, values: Mapping[str, Any], *, account: str | None, actor: str | None
    ) -> tuple[Record, ChangeEvent]:
        table = self.tables.by_collection[coll.name]
        now = utcnow()
        record: Record = {"id": new_id(), "account": account, "created_at": now, "updated_at": now, "version": 1}
        for f in coll.fields:
            value = values.get(f.name, MISSING)
            if value is MISSING:
                value = None if f.default is MISSING else f.default
            record[f.name] = _plain(value)
        changed = tuple(f.name for f in coll.fields)

        def work(conn: sa.Connection) -> ChangeEvent:
            self._insert(conn, table, record)
            return self._append(conn, coll, Operation.CREATED, record, {}, changed, actor)

        return record, await self._transaction(work)

    async def update(
        self,
        coll: Collection,
        record_id: str,
        values: Mapping[str, Any],
        *,
        expected_version: int | None,
        guard: Filter,
        actor: str | None,
        check: Callable[[Record, Record], None] | None = None,
    ) -> tuple[Record, ChangeEvent | None]:
        """Apply ``values``; a change that alters nothing writes nothing (event None).

        ``check(record, previous)`` sees the new record and the changed fields' old values.
        """
        table = self.tables.by_collection[coll.name]

        def work(conn: sa.Connection) -> tuple[Record, ChangeEvent | None]:
            current = self._current(conn, coll, record_id, guard)
            if expected_version is not None and current["version"] != expected_version:
                raise Conflict(
                    f"{coll.name} {record_id!r} is at version {current['version']}, not {expected_version}",
                    currentVersion=current["version"],
                )
            changes = {k: _plain(v) for k, v in values.items() if _plain(v) != current.get(k)}
            if not changes:
                return current, None
            previous = {k: current[k] for k in changes}
            record = {**current, **changes, "updated_at": utcnow(), "version": current["version"] + 1}
            if check is not None:
                check(record, previous)  # raising here rolls the transaction back: nothing written
            conn.execute(
                table.update()
                .where(table.c.id == record_id, table.c.version == current["version"])
                .values(**changes, updated_at=record["updated_at"], version=record["version"])
            )
            return record, self._append(conn, coll, Operation.UPDATED, record, previous, tuple(changes), actor)

        return await self._transaction(work)

    async def delete(
        self, coll: Collection, record_id: str, *, guard: Filter, actor: str | None
    ) -> tuple[Record, ChangeEvent]:
        table = self.tables.by_collection[coll.name]

        def work(conn: sa.Connection) -> tuple[Record, ChangeEvent]:
            current = self._current(conn, coll, record_id, guard)
            if coll.soft_delete:
                conn.execute(table.update().where(table.c.id == record_id).values({DELETED_AT: utcnow()}))
            else:
                conn.execute(table.delete().where(table.c.id == record_id))
            return current, self._append(conn, coll, Operation.DELETED, current, {}, (), actor)

        return await self._transaction(work)

    def _current(self, conn: sa.Connection, coll: Collection, record_id: str, guard: Filter) -> Record:
        table = self.tables.by_collection[coll.name]
        query = sa.select(table).where(table.c.id == record_id, compile_sql(guard, table, self.dialect))
        query = self.hide_deleted(coll, query)
        if self.dialect == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(f"No {coll.name} with id {record_id!r}", id=record_id)
        return self.decode_row(coll, row)

    # -- soft delete -----------------------------------------------------------
    #
    # A collection with ``soft_delete`` keeps a deleted row, with ``deleted_at`` set,
    # until the retention pass purges it. Every read and write above sees only rows
    # without it (``hide_deleted``); ``restore`` clears it. Records never carry the
    # column (``decode_row``), so events and responses look as for a hard delete.

    def hide_deleted(self, coll: Collection, query: sa.Select[Any]) -> sa.Select[Any]:
        """``query`` without ``coll``'s soft-deleted rows (unchanged for other collections)."""
        if not coll.soft_delete:
            return query
        return query.where(self.tables.by_collection[coll.name].c[DELETED_AT].is_(None))

    def _deleted_query(self, coll: Collection, record_id: str, guard: Filter) -> sa.Select[Any]:
        table = self.tables.by_collection[coll.name]
        return sa.select(table).where(
            table.c.id == record_id, table.c[DELETED_AT].is_not(None), compile_sql(guard, table, self.dialect)
        )

    async def get_deleted(self, coll: Collection, record_id: str, guard: Filter = MATCH_ALL) -> Record | None:
        """A soft-deleted record within ``guard``, or None (also for collections without soft delete)."""
        if not coll.soft_delete:
            return None
        async with self.reader() as r:
            rows = await r._rows(self._deleted_query(coll, record_id, guard))
        return self.decode_row(coll, rows[0]) if rows else None

    async def restore(
        self, coll: Collection, record_id: str, *, guard: Filter, actor: str | None
    ) -> tuple[Record, ChangeEvent]:
        """Bring a soft-deleted record back as it was (event RESTORED).

        NOT_FOUND unless the record is soft-deleted, not yet purged, and within ``guard``:
        restoring a record that is not deleted is NOT_FOUND too (there is no deleted one).
        """
        if not coll.soft_delete:
            raise NotFound(f"No deleted {coll.name} with id {record_id!r}", id=record_id)
        table = self.tables.by_collection[coll.name]

        def work(conn: sa.Connection) -> tuple[Record, ChangeEvent]:
            query = self._deleted_query(coll, record_id, guard)
            if self.dialect == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).mappings().first()
            if row is None:
                raise NotFound(f"No deleted {coll.name} with id {record_id!r}", id=record_id)
            record = self.decode_row(coll, row)
            conn.execute(table.update().where(table.c.id == record_id).values({DELETED_AT: None}))
            return record, self._append(conn, coll, Operation.RESTORED, record, {}, (), actor)

        return await self._transaction(work)

    def _purge_deleted(self, conn: sa.Connection, before: dt.datetime) -> None:
        """Delete for good the rows soft-deleted before ``before`` (no event: they left every view already)."""
        for coll in self.collections.values():
            if coll.soft_delete:
                table = self.tables.by_collection[coll.name]
                conn.execute(table.delete().where(table.c[DELETED_AT] < before))

    def _append(
        self,
        conn: sa.Connection,
        coll: Collection,
        operation: Operation,
        record: Record,
        previous: Record,
        changed: tuple[str, ...],
        actor: str | None,
    ) -> ChangeEvent:
        changes_record = operation is Operation.CREATED or operation is Operation.UPDATED
        timestamp = record["updated_at"] if changes_record else utcnow()
        row = {
            "collection": coll.name,
            "operation": operation.value,
            "record_id": record["id"],
            "account": record.get("account"),
            "record": {k: to_jsonable(v) for k, v in record.items()},
            "previous": {k: to_jsonable(v) for k, v in previous.items()},
            "changed_fields": list(changed),
            "timestamp": timestamp,
            "actor": actor,
        }
        seq = int(self._insert(conn, self.tables.events, row, returning="seq"))  # on SQLite the rowid
        conn.info[_LAST_SEQ] = seq  # PostgreSQL: what tells whether a COMMIT whose answer was lost committed
        return ChangeEvent(
            seq=seq,
            collection=coll.name,
            operation=operation,
            record_id=record["id"],
            account=record.get("account"),
            record=dict(record),
            previous=dict(previous),
            changed_fields=changed,
            timestamp=timestamp,
            actor=actor,
        )

    def _insert(
        self, conn: sa.Connection, table: sa.Table, values: dict[str, Any], returning: str | None = None
    ) -> Any:
        """INSERT ``values``; the new row's ``returning`` column (on SQLite its rowid, whatever ``returning``).

        On the SQLite writer thread and on PostgreSQL straight on the driver (see ``_Insert``)."""
        if self._sync_engine is None and self.dialect != "postgresql":  # SQLite in memory: aiosqlite
            return conn.execute(table.insert(), values).lastrowid  # a constant statement: compiled once
        key = (table.name, tuple(values))
        insert = self._inserts.get(key)
        if insert is None:
            dialect = self._sync_engine.dialect if self._sync_engine is not None else self.engine.dialect
            insert = self._inserts[key] = _Insert(table, key[1], dialect, returning)
        return insert.execute(conn, values)

    # -- decoding ------------------------------------------------------------

    def decode_row(self, coll: Collection, row: Mapping[Any, Any]) -> Record:
        # Row keys are SQLAlchemy ``quoted_name`` (a str subclass); plain str keeps
        # records serializable by orjson, which accepts only exact str keys.
        record = {str(k): v for k, v in row.items()}
        if coll.soft_delete:
            record.pop(DELETED_AT, None)  # internal: a record never shows it
        record.pop(SEQ_LABEL, None)  # PostgreSQL snapshots' first statement carries the log's head
        return record

    def decode_event(self, row: Mapping[Any, Any]) -> ChangeEvent:
        coll = self.collections[row["collection"]]
        return ChangeEvent(
            seq=int(row["seq"]),
            collection=row["collection"],
            operation=Operation(row["operation"]),
            record_id=row["record_id"],
            account=row["account"],
            record=decode_document(coll, row["record"]),
            previous=decode_document(coll, row["previous"]),
            changed_fields=tuple(row["changed_fields"]),
            timestamp=row["timestamp"],
            actor=row["actor"],
        )


def decode_document(coll: Collection, doc: Mapping[str, Any]) -> Record:
    """A record from its JSON form (event log, broker): datetimes parsed back."""
    out = dict(doc)
    for key in ("created_at", "updated_at"):
        if isinstance(out.get(key), str):
            out[key] = dt.datetime.fromisoformat(out[key])
    for f in coll.fields:
        if f.kind is FieldKind.DATETIME and isinstance(out.get(f.name), str):
            out[f.name] = dt.datetime.fromisoformat(out[f.name])
    return out


def _run_batch(
    conn: sa.Connection, works: list[Callable[[sa.Connection], Any]], outcomes: list[tuple[bool, Any]]
) -> None:
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
        appended = info.get(_LAST_SEQ)
        try:
            result = work(conn)
        except Exception as exc:
            if storage_fault(exc) is not None or is_disconnect(exc):
                raise  # the database's fault, not this write's: the whole batch fails
            # Should these fail, the whole batch fails.
            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT tidings_write")
            conn.exec_driver_sql("RELEASE SAVEPOINT tidings_write")
            info[_LAST_SEQ] = appended  # whatever it appended was rolled back with it
            outcomes.append((False, exc))
        else:
            conn.exec_driver_sql("RELEASE SAVEPOINT tidings_write")
            outcomes.append((True, result))


def _run_autocommit_batch(
    conn: sa.Connection, works: list[Callable[[sa.Connection], Any]], outcomes: list[tuple[bool, Any]]
) -> None:
    """``_run_batch`` inside a transaction of SQLAlchemy's own bookkeeping only (the connection is
    in AUTOCOMMIT: its begin and commit send nothing), so none stays open on a kept connection."""
    with conn.begin():
        _run_batch(conn, works, outcomes)


def _batch_failed(outcomes: list[tuple[bool, Any]], size: int, exc: Exception) -> list[tuple[bool, Any]]:
    """A lone write raised, or BEGIN, a savepoint or COMMIT failed: nothing of the batch is written.
    Writes that failed on their own keep their error; the others get ``exc``."""
    return [outcomes[i] if i < len(outcomes) and not outcomes[i][0] else (False, exc) for i in range(size)]


class _NotBegun(Exception):
    """PostgreSQL's writer could not begin a batch's transaction: nothing of it ran.
    ``kept``: on the connection kept from an earlier batch (not a new one)."""

    def __init__(self, error: Exception, *, kept: bool) -> None:
        super().__init__(f"BEGIN failed: {error}")
        self.error = error
        self.kept = kept


class _CommitLost(Exception):
    """PostgreSQL's writer lost its connection with COMMIT sent: the batch may or may not have
    committed. ``seq``: the last event it appended (None: it appended none)."""

    def __init__(self, seq: int | None, error: Exception) -> None:
        super().__init__(f"COMMIT lost (last seq {seq})")
        self.seq = seq
        self.error = error


def _describe(exc: BaseException) -> str:
    """The driver's error in one line, for a log line: its type and first line."""
    error = getattr(exc, "orig", None) or exc
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _dbapi_error(conn: sa.Connection | None, statement: str, args: list[Any], exc: Exception) -> Exception:
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


def _resolve(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """On the caller's loop: hand each write its result or exception (skipping cancelled callers)."""
    for future, ok, value in results:
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


def _plain(value: Any) -> Any:
    """Enum members are stored by value; datetimes as aware UTC."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    return value


def _pysqlite_engine(url: sa.URL, begin: Callable[[sa.Connection], None], **options: Any) -> sa.Engine:
    """A plain pysqlite engine with tidings' pragmas, whose transactions start with ``begin``."""
    engine = sa.create_engine(url, **options)
    sa.event.listen(engine, "connect", _sqlite_pragmas)
    sa.event.listen(engine, "begin", begin)
    return engine


def _sqlite_begin(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN")


def _sqlite_begin_immediate(conn: sa.Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()
