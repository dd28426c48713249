"""CRUD over the collection tables, each write committed with its event-log row, and the event
log's reads (read, prune, epoch, decoders) beside the appends they must agree with.

Writes are serialized so that event sequence numbers are assigned in commit order: one writer
per database kind (tidings.store.writers), the PostgreSQL one under a transaction-scoped advisory
lock taken before the event row is inserted and released at commit. A reader that sees event N
therefore sees every event below N that will ever commit, which is what resume relies on.
Reads run on snapshots (tidings.store.reads); faults are told apart in tidings.store.faults.
What relations make a write do (on_delete, reference checks) is in tidings.store.referential.
Size: ~670 lines, over the house's ~500: the log's reads and its appends must agree on one row
form, and the write bodies a transaction of your code strings together live beside them; the
next split is the log (read, prune, epoch, decoders) into its own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tidings.errors import Conflict, NotFound, Unavailable
from tidings.events import ChangeEvent, Operation, to_jsonable
from tidings.filters import MATCH_ALL, FieldKind, Filter, compile_sql
from tidings.model.collection import MISSING, Collection
from tidings.model.relations import Reference
from tidings.store import sqlite
from tidings.store.batch import LAST_SEQ
from tidings.store.faults import Fault, WriteHealth
from tidings.store.ids import new_id
from tidings.store.insert import Insert, plain
from tidings.store.migrations import Migrator, Mode
from tidings.store.reads import SEQ_LABEL, AsyncSnapshot, Reader, SqliteReads
from tidings.store.referential import NO_CHECKS, Referential, WriteChecks
from tidings.store.tables import DELETED_AT, Tables
from tidings.store.writers import MemoryWriter, PostgresWriter, SqliteWriter, Writer
from tidings.types import Record

_T = TypeVar("_T")


SYSTEM_COLUMNS = ("id", "account", "created_at", "updated_at", "version")
READ_CONNECTIONS = 10  # a SQLite file's read snapshots open at once (the async engine's pool held 5 + 10)
logger = logging.getLogger("tidings.store")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def json_dumps(value: Any) -> str:
    """JSON columns' encoder: orjson, or the standard library for what orjson refuses (ints beyond 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def normalize_url(url: str) -> str:
    """Accept plain ``sqlite:///x.db`` / ``postgresql://`` and pick the async driver."""
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url.removeprefix("sqlite:")
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    return url


class Store:
    """The database: tables per collection plus the event log."""

    def __init__(
        self,
        url: str,
        collections: list[Collection],
        *,
        echo: bool = False,
        outage_wait: float = 5.0,
        migrate: Mode = Mode.AUTO,
        migrations: Path | None = None,
    ) -> None:
        self.url = normalize_url(url)
        # Seconds a read or write waits for a database it lost (a restart) before failing UNAVAILABLE.
        self.outage_wait = outage_wait
        self.health = WriteHealth()  # whether writes succeed: /readyz, the metrics
        self.collections = {c.name: c for c in collections}
        self.tables = Tables(collections)
        # Collection name -> the references that point at it, with their collection: what its delete follows.
        self.referrers: dict[str, list[tuple[Collection, Reference]]] = {}
        for c in collections:
            for ref in c.references:
                self.referrers.setdefault(ref.target, []).append((c, ref))
        self.referential = Referential(self)  # what relations make writes do (on_delete, reference checks)
        json_options: dict[str, Any] = {"json_serializer": json_dumps, "json_deserializer": orjson.loads}
        self.engine: AsyncEngine = create_async_engine(self.url, echo=echo, **json_options)
        self.dialect = self.engine.dialect.name
        self.epoch = ""  # read by start()
        self.migrate = migrate  # what start() does with a schema difference (tidings.store.migrations)
        self.migrator = Migrator(self.engine, self.tables, migrations)
        self.migrated: list[str] = []  # what start() changed
        self._reads: SqliteReads | None = None  # a SQLite file's read snapshots
        self._inserts: dict[tuple[str, tuple[str, ...]], Insert] = {}  # compiled once per table and keys
        self._get_queries: dict[str, sa.Select[Any]] = {}  # by collection, without a guard
        # The event log's head as a column of a query's own (see ``Reader._rows``).
        self.seq_column = sa.func.coalesce(
            sa.select(sa.func.max(self.tables.events.c.seq)).scalar_subquery(),
            self._pruned_through_query().scalar_subquery(),
            0,
        ).label(SEQ_LABEL)
        self.writer: Writer
        if self.dialect == "postgresql":
            self.writer = PostgresWriter(
                self.url, self.health, outage_wait=outage_wait, echo=echo, json_options=json_options
            )
        elif self.dialect == "sqlite":
            # pysqlite begins transactions lazily (only before DML), which would let
            # two SELECTs of one reader see two snapshots; take over BEGIN ourselves.
            sa.event.listen(self.engine.sync_engine, "connect", sqlite.pragmas)
            sa.event.listen(self.engine.sync_engine, "begin", sqlite.begin)
            database = self.engine.url.database
            if database and database != ":memory:":
                # Writes go through a plain pysqlite engine on one thread of their own, reads through a
                # pool of plain pysqlite connections on threads (no aiosqlite hop per statement).
                plain_url = self.engine.url.set(drivername="sqlite")
                self.writer = SqliteWriter(plain_url, self.health, echo=echo, json_options=json_options)
                self._reads = SqliteReads(plain_url, READ_CONNECTIONS, echo=echo, json_options=json_options)
            else:
                self.writer = MemoryWriter(self.engine, self.health)
        else:
            self.writer = MemoryWriter(self.engine, self.health)

    @property
    def write_fault(self) -> Fault | None:
        """Why the last write transaction failed UNAVAILABLE (None: it committed)."""
        return self.health.fault

    @property
    def failures(self) -> Mapping[tuple[str, str], int]:
        """(operation, reason) -> transactions that failed UNAVAILABLE."""
        return self.health.failures

    async def start(self) -> None:
        """Bring the tables to the declared collections as ``migrate`` allows, and make the event
        log's epoch if it has none."""
        self.migrated = await self.migrator.migrate(self.migrate)
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
        await self.writer.close()
        await self.engine.dispose()
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
        snapshot = AsyncSnapshot(self)
        try:
            yield Reader(self, snapshot)
        finally:
            await snapshot.close()

    def where(self, f: Filter, table: sa.FromClause) -> sa.ColumnElement[bool]:
        """``f`` over ``table`` in SQL, the relations it follows included."""
        return compile_sql(f, table, self.dialect, self.tables.by_collection)

    def get_query(self, coll: Collection, guard: Filter) -> sa.Select[Any]:
        """The SELECT of one record by ``:record_id`` within ``guard`` (without a guard, built once)."""
        query = self._get_queries.get(coll.name) if guard == MATCH_ALL else None
        if query is None:
            table = self.tables.by_collection[coll.name]
            query = sa.select(table).where(table.c.id == sa.bindparam("record_id"), self.where(guard, table))
            query = self.hide_deleted(coll, query)
            if guard == MATCH_ALL:
                self._get_queries[coll.name] = query
        return query

    async def get(self, coll: Collection, record_id: str, guard: Filter = MATCH_ALL) -> Record | None:
        async with self.reader() as r:
            return await r.get(coll, record_id, guard)

    async def last_seq(self) -> int:
        async with self.engine.connect() as conn:
            return await self.last_seq_in(conn)

    async def last_seq_in(self, conn: AsyncConnection) -> int:
        return await conn.run_sync(self.last_seq_sync)

    def last_seq_sync(self, conn: sa.Connection) -> int:
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
        return await self.writer.run(work)

    def read_failed(self, exc: Exception, waited: float) -> Unavailable:
        return self.health.read_failed(exc, waited)

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

    async def create(
        self,
        coll: Collection,
        values: Mapping[str, Any],
        *,
        account: str | None,
        actor: str | None,
        checks: WriteChecks = NO_CHECKS,
    ) -> tuple[Record, ChangeEvent]:
        record, work = self.create_body(coll, values, account=account, actor=actor, checks=checks)
        return record, await self._transaction(work)

    def create_body(
        self,
        coll: Collection,
        values: Mapping[str, Any],
        *,
        account: str | None,
        actor: str | None,
        checks: WriteChecks = NO_CHECKS,
    ) -> tuple[Record, Callable[[sa.Connection], ChangeEvent]]:
        """The record ``create`` writes and its transaction body (a transaction runs several such bodies)."""
        table = self.tables.by_collection[coll.name]
        now = utcnow()
        record: Record = {"id": new_id(), "account": account, "created_at": now, "updated_at": now, "version": 1}
        for f in coll.fields:
            value = values.get(f.name, MISSING)
            if value is MISSING:
                value = None if f.default is MISSING else f.default
            record[f.name] = plain(value)
        changed = tuple(f.name for f in coll.fields)

        def work(conn: sa.Connection) -> ChangeEvent:
            self.referential.check_references(conn, coll, record, checks)
            self._insert(conn, table, record)
            self.referential.check_guard(conn, coll, record["id"], checks)
            return self.append_event(conn, coll, Operation.CREATED, record, {}, changed, actor)

        return record, work

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
        checks: WriteChecks = NO_CHECKS,
    ) -> tuple[Record, ChangeEvent | None]:
        """Apply ``values``; a change that alters nothing writes nothing (event None).

        ``check(record, previous)`` sees the new record and the changed fields' old values.
        """
        work = self.update_body(
            coll,
            record_id,
            values,
            expected_version=expected_version,
            guard=guard,
            actor=actor,
            check=check,
            checks=checks,
        )
        return await self._transaction(work)

    def update_body(
        self,
        coll: Collection,
        record_id: str,
        values: Mapping[str, Any],
        *,
        expected_version: int | None,
        guard: Filter,
        actor: str | None,
        check: Callable[[Record, Record], None] | None = None,
        checks: WriteChecks = NO_CHECKS,
    ) -> Callable[[sa.Connection], tuple[Record, ChangeEvent | None]]:
        """``update``'s transaction body."""
        table = self.tables.by_collection[coll.name]

        def work(conn: sa.Connection) -> tuple[Record, ChangeEvent | None]:
            current = self._current(conn, coll, record_id, guard)
            if expected_version is not None and current["version"] != expected_version:
                raise Conflict(
                    f"{coll.name} {record_id!r} is at version {current['version']}, not {expected_version}",
                    currentVersion=current["version"],
                )
            changes = {k: plain(v) for k, v in values.items() if plain(v) != current.get(k)}
            if not changes:
                return current, None
            previous = {k: current[k] for k in changes}
            record = {**current, **changes, "updated_at": utcnow(), "version": current["version"] + 1}
            if check is not None:
                check(record, previous)  # raising here rolls the transaction back: nothing written
            self.referential.check_references(conn, coll, changes, checks)
            conn.execute(
                table.update()
                .where(table.c.id == record_id, table.c.version == current["version"])
                .values(**changes, updated_at=record["updated_at"], version=record["version"])
            )
            self.referential.check_guard(conn, coll, record_id, checks)
            return record, self.append_event(conn, coll, Operation.UPDATED, record, previous, tuple(changes), actor)

        return work

    async def delete(
        self, coll: Collection, record_id: str, *, guard: Filter, actor: str | None
    ) -> tuple[Record, list[ChangeEvent]]:
        """Delete a record and do what its references' ``on_delete`` say to the records that point
        at it, all in one transaction: its DELETED event first, then one event per record a
        cascade deletes (DELETED) or a ``set_null`` clears (UPDATED). ``restrict`` (the default):
        CONFLICT while any record points at it, and nothing is written."""
        return await self._transaction(self.delete_body(coll, record_id, guard=guard, actor=actor))

    def delete_body(
        self, coll: Collection, record_id: str, *, guard: Filter, actor: str | None
    ) -> Callable[[sa.Connection], tuple[Record, list[ChangeEvent]]]:
        """``delete``'s transaction body."""

        def work(conn: sa.Connection) -> tuple[Record, list[ChangeEvent]]:
            current = self._current(conn, coll, record_id, guard)
            events: list[ChangeEvent] = []
            self.referential.delete_row(conn, coll, current, actor, events, {(coll.name, record_id)})
            return current, events

        return work

    async def transaction(self, works: Sequence[Callable[[sa.Connection], _T]]) -> list[_T]:
        """Several write bodies as one: all commit together (consecutive seqs) or none does.

        One body on the writer, so group commit carries on around it: on SQLite it is one
        savepoint of a batch, on PostgreSQL one under the advisory lock. The first body that
        raises rolls back everything the others wrote, and its exception is the answer.
        """

        def work(conn: sa.Connection) -> list[_T]:
            return [body(conn) for body in works]

        return await self._transaction(work)

    def _current(self, conn: sa.Connection, coll: Collection, record_id: str, guard: Filter) -> Record:
        table = self.tables.by_collection[coll.name]
        query = sa.select(table).where(table.c.id == record_id, self.where(guard, table))
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
            table.c.id == record_id, table.c[DELETED_AT].is_not(None), self.where(guard, table)
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
            return record, self.append_event(conn, coll, Operation.RESTORED, record, {}, (), actor)

        return await self._transaction(work)

    def _purge_deleted(self, conn: sa.Connection, before: dt.datetime) -> None:
        """Delete for good the rows soft-deleted before ``before`` (no event: they left every view already).

        Referencing tables go first (a cascade soft-deleted a project's tasks with it), and a row
        that something still references stays (a task restored while its project was deleted):
        the foreign keys hold, and the next pass takes it once nothing points at it."""
        by_table = {self.tables.by_collection[c.name].name: c for c in self.collections.values()}
        for table in reversed(self.tables.metadata.sorted_tables):
            coll = by_table.get(table.name)
            if coll is None or not coll.soft_delete:
                continue
            query = table.delete().where(table.c[DELETED_AT] < before)
            for child, ref in self.referrers.get(coll.name, ()):
                child_table = self.tables.by_collection[child.name].alias()
                query = query.where(~sa.exists().where(child_table.c[ref.column] == table.c.id))
            conn.execute(query)

    def append_event(
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
        row = event_row(
            coll.name, operation, record["id"], record.get("account"), record, previous, changed, timestamp, actor
        )
        seq = int(self._insert(conn, self.tables.events, row, returning="seq"))  # on SQLite the rowid
        conn.info[LAST_SEQ] = seq  # PostgreSQL: what tells whether a COMMIT whose answer was lost committed
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
        dialect = self.writer.insert_dialect
        if dialect is None:  # SQLite in memory: SQLAlchemy's execution, on aiosqlite
            return conn.execute(table.insert(), values).lastrowid  # a constant statement: compiled once
        key = (table.name, tuple(values))
        insert = self._inserts.get(key)
        if insert is None:
            insert = self._inserts[key] = Insert(table, key[1], dialect, returning)
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
        return decode_event(self.collections[row["collection"]], row)


# -- the event's one form: a log row, and (as JSON) a doorbell ------------------


def event_row(
    collection: str,
    operation: Operation,
    record_id: str,
    account: str | None,
    record: Record,
    previous: Record,
    changed: Sequence[str],
    timestamp: dt.datetime,
    actor: str | None,
) -> dict[str, Any]:
    """An event as the log stores it (and, with its seq, as the broker carries it: JSON)."""
    return {
        "collection": collection,
        "operation": operation.value,
        "record_id": record_id,
        "account": account,
        "record": {k: to_jsonable(v) for k, v in record.items()},
        "previous": {k: to_jsonable(v) for k, v in previous.items()},
        "changed_fields": list(changed),
        "timestamp": timestamp,
        "actor": actor,
    }


def decode_event(coll: Collection, row: Mapping[Any, Any]) -> ChangeEvent:
    """An event from its log row or its doorbell's JSON (where the timestamp is a string).

    Read as the collection is declared now: an event written before a field was added reads it
    as its default (or null), one written before a field was removed no longer carries it.
    """
    timestamp = row["timestamp"]
    fields = coll.field_map
    return ChangeEvent(
        seq=int(row["seq"]),
        collection=coll.name,
        operation=Operation(row["operation"]),
        record_id=row["record_id"],
        account=row["account"],
        record=decode_document(coll, row["record"]),
        previous=decode_document(coll, row["previous"], complete=False),
        changed_fields=tuple(name for name in row["changed_fields"] if name in fields),
        timestamp=dt.datetime.fromisoformat(timestamp) if isinstance(timestamp, str) else timestamp,
        actor=row["actor"],
    )


def decode_document(coll: Collection, doc: Mapping[str, Any], *, complete: bool = True) -> Record:
    """A record from its JSON form (event log, broker): datetimes parsed back, fields as declared now.

    A key no field declares (any more) is dropped; with ``complete``, a declared field the
    document lacks (added after it was written) gets its default, or None.
    """
    fields = coll.field_map
    out = {k: v for k, v in doc.items() if k in fields or k in SYSTEM_COLUMNS}
    for key in ("created_at", "updated_at"):
        if isinstance(out.get(key), str):
            out[key] = dt.datetime.fromisoformat(out[key])
    for f in coll.fields:
        if f.name not in out:
            if complete:
                out[f.name] = None if f.default is MISSING else plain(f.default)
        elif f.kind is FieldKind.DATETIME and isinstance(out[f.name], str):
            out[f.name] = dt.datetime.fromisoformat(out[f.name])
    return out
