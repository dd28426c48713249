"""Read snapshots: a ``Reader`` over one consistent view of the database and the event log's
head it reflects, on a SQLite file's pool of threads (``SqliteReads``) or an async connection
(``AsyncSnapshot``: PostgreSQL, SQLite in memory), which waits out a short outage."""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tidings.errors import Unavailable
from tidings.filters import MATCH_ALL, Filter
from tidings.model.collection import Collection
from tidings.store import sqlite
from tidings.store.aggregate_query import AggregateRow, AggregateSpec, aggregate_query, decode_aggregate
from tidings.store.faults import BACKOFF, is_disconnect
from tidings.store.tables import Tables
from tidings.types import Record

_T = TypeVar("_T")
SEQ_LABEL = "__tidings_seq"  # "__" names are GraphQL's own: no field has it
CREATION_ORDER: tuple[tuple[str, bool], ...] = (("created_at", False),)
"""The order of a list given no ``orderBy``: creation order (then ``id``, as every order ends)."""


class Store(Protocol):
    """What reads need of the store (tidings.store.store.Store)."""

    engine: AsyncEngine
    dialect: str
    tables: Tables
    collections: dict[str, Collection]
    outage_wait: float
    seq_column: sa.Label[Any]

    def get_query(self, coll: Collection, guard: Filter) -> sa.Select[Any]: ...
    def where(self, f: Filter, table: sa.FromClause) -> sa.ColumnElement[bool]: ...
    def hide_deleted(self, coll: Collection, query: sa.Select[Any]) -> sa.Select[Any]: ...
    def decode_row(self, coll: Collection, row: Mapping[Any, Any]) -> Record: ...
    def last_seq_sync(self, conn: sa.Connection) -> int: ...
    async def last_seq_in(self, conn: AsyncConnection) -> int: ...
    def read_failed(self, exc: Exception, waited: float) -> Unavailable: ...


@contextlib.asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


class Reader:
    """One read-only snapshot: every query of one GraphQL request reads through it,
    so the response reflects exactly one event-log position (``seq``).

    On a SQLite file it holds a plain pysqlite connection of ``_SqliteReads`` and runs
    each statement, with its fetch, in one hop to a reading thread (``run``); elsewhere
    an ``AsyncSnapshot``.
    """

    def __init__(
        self,
        store: Store,
        snapshot: AsyncSnapshot | None = None,
        *,
        run: Callable[[Callable[[sa.Connection], Any]], Awaitable[Any]] | None = None,
        seq: int | None = None,
    ) -> None:
        self._store = store
        self._snapshot = snapshot
        self._run = run
        self._lock = asyncio.Lock()  # root fields resolve concurrently; one connection
        self._seq = seq

    @property
    def store(self) -> Store:
        return self._store

    async def rows(self, query: sa.Select[Any], params: Mapping[str, Any] | None = None) -> Sequence[sa.RowMapping]:
        """``query``'s rows, read in this snapshot."""
        return await self._rows(query, params)

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
                        self._seq = int(await self._run(self._store.last_seq_sync))
                    else:
                        assert self._snapshot is not None
                        self._seq = await self._snapshot.run(self._store.last_seq_in)
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
        *,
        backward: bool = False,
    ) -> list[Record]:
        """``backward``: the same order read from its end (see ``order_clauses``)."""
        table = self._store.tables.by_collection[coll.name]
        query = self._store.hide_deleted(coll, sa.select(table).where(self._store.where(where, table)))
        query = query.order_by(*order_clauses(table, order_by, self._store.dialect, backward=backward)).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        return [self._store.decode_row(coll, row) for row in await self._rows(query)]

    async def count(self, coll: Collection, where: Filter) -> int:
        """How many records match ``where`` (the ``<plural>Count`` query field)."""
        table = self._store.tables.by_collection[coll.name]
        query = sa.select(sa.func.count().label("count")).select_from(table)
        query = self._store.hide_deleted(coll, query.where(self._store.where(where, table)))
        return int((await self._rows(query))[0]["count"])

    async def aggregate(self, coll: Collection, where: Filter, spec: AggregateSpec) -> builtins.list[AggregateRow]:
        """Per group of ``spec.group_by`` (one group without it), what ``spec`` asks (tidings.store.aggregate_query)."""
        table = self._store.tables.by_collection[coll.name]
        query = aggregate_query(table, self._store.dialect, spec)
        query = self._store.hide_deleted(coll, query.where(self._store.where(where, table)))
        return [decode_aggregate(spec, row) for row in await self._rows(query)]


def order_clauses(
    table: sa.FromClause, order_by: Sequence[tuple[str, bool]], dialect: str, *, backward: bool = False
) -> list[Any]:
    """ORDER BY ``order_by`` (column, descending; creation order when empty), then id: the one
    order of lists and windows. ``backward``: that order read from its end (every key reversed,
    NULLs first), for the last rows of a connection."""
    clauses: list[Any] = []
    for column, descending in order_by or CREATION_ORDER:
        col: Any = table.c[column]
        if dialect == "postgresql" and isinstance(col.type, sa.String):
            # Code point order, as SQLite sorts, the filters compare and live windows keep
            # rows (whatever the database's collation).
            col = col.collate("C")
        if backward:
            clauses.append(col.asc().nulls_first() if descending else col.desc().nulls_first())
        else:
            clauses.append(col.desc().nulls_last() if descending else col.asc().nulls_last())
    id_col = table.c.id.collate("C") if dialect == "postgresql" else table.c.id
    clauses.append(id_col.desc() if backward else id_col.asc())
    return clauses


class _Desc:
    """A value sorting in reverse (descending keys of mixed-in ascending tuples)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and bool(self.value == other.value)

    def __hash__(self) -> int:
        return hash(self.value)


def sort_key(order: Sequence[tuple[str, bool]], *, backward: bool = False) -> Any:
    """The key function ordering records as SQL does: NULLs last either way, ``id`` last
    (``backward``: that order exactly reversed, as ``Reader.list(backward=True)`` reads)."""

    def key(record: Mapping[str, Any]) -> Any:
        parts: list[Any] = []
        for column, descending in order:
            value = record.get(column)
            if value is None:
                parts.append((1, None))
            else:
                parts.append((0, _Desc(value) if descending else value))
        parts.append(record["id"])
        return tuple(parts)

    if backward:
        return lambda record: _Desc(key(record))
    return key


class SqliteReads:
    """Read snapshots of a SQLite file on plain pysqlite connections, run by a pool of threads.

    aiosqlite hops to its thread and back for every step of a statement (cursor,
    execute, fetch, close) and for BEGIN and the pool's reset: about a dozen hops for
    ``task(id)``. Here a snapshot costs three: open (BEGIN and the log's head), the
    statement with its fetch, close. ``size`` connections and as many threads; a
    snapshot takes a slot first, so a thread never waits on the pool.
    """

    def __init__(self, url: sa.URL, size: int, *, echo: bool, json_options: dict[str, Any]) -> None:
        self.size = size
        self.engine = sqlite.pysqlite_engine(
            url, sqlite.begin, echo=echo, pool_size=size, max_overflow=0, **json_options
        )
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
            conn.begin()  # BEGIN (see sqlite.begin); the head read below fixes the snapshot
            return conn, store.last_seq_sync(conn)
        except BaseException:
            conn.close()
            raise

    def _close_late(self, opening: asyncio.Future[tuple[sa.Connection, int]]) -> None:
        if not opening.cancelled() and opening.exception() is None:
            self.threads.submit(opening.result()[0].close)

    def close(self) -> None:
        self.threads.shutdown(wait=True)
        self.engine.dispose()


class AsyncSnapshot:
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
                raise self.store.read_failed(exc, waited=0.0) from exc
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
                    raise self.store.read_failed(exc, waited=self.store.outage_wait) from exc
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
