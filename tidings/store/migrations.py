"""Schema evolution: the declared tables compared with the database by Alembic's autogenerate,
additive changes applied with Alembic's operations (batch mode on SQLite), the rest left to the
migration files a person writes (tidings.store.migration_files).

A run holds the database's lock from the comparison to the commit: a transaction-scoped
advisory lock on PostgreSQL, the write lock on SQLite (BEGIN IMMEDIATE), so processes that start
at once migrate once and the others wait, then find nothing to do. DDL is transactional on both,
so a run that is refused or fails half-way leaves the database as it was.

Which tables are tidings' is kept in ``tidings_meta`` (``table:<name>``): a table of the same
database that tidings never made is never compared, so never dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tidings.errors import ConfigurationError
from tidings.store import migration_files, sqlite
from tidings.store.insert import plain
from tidings.store.tables import Tables

if TYPE_CHECKING:  # Alembic is imported when a comparison runs: a start with nothing to compare needs none of it
    from alembic.operations import Operations, ops
    from alembic.runtime.migration import MigrationContext

logger = logging.getLogger("tidings.migrate")

TABLE_PREFIX = "table:"  # tidings_meta keys of the tables tidings made
SCHEMA_KEY = "schema"  # tidings_meta: the fingerprint of the declared schema last served
MIGRATED_KEY = "migrated"  # tidings_meta: the fingerprint of the declared schema last migrated to
LOCK_WAIT = 300.0  # seconds a process waits for another one's migration before it gives up
_PG_LOCK = 0x7469_6D69_6772  # the advisory lock key: "timigr"


class Mode(str, enum.Enum):
    """``--migrate``: what ``tidings serve`` does with a difference at start."""

    AUTO = "auto"  # run pending files, apply additive changes; refuse what cannot run beside the data
    CHECK = "check"  # refuse to start on any difference (a new database is still created)
    OFF = "off"  # compare nothing, change nothing


class SchemaRefused(ConfigurationError):
    """The database and the declared collections differ in a way this mode will not settle."""


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One difference, as one Alembic operation (of one table), and what tidings makes of it."""

    op: ops.MigrateOperation
    table: str
    text: str
    additive: bool  # applied by --migrate auto and `tidings migrate apply`
    harmless: bool = False  # not additive, but the app runs beside it (a column or table it no longer uses)

    @property
    def line(self) -> str:
        if self.additive:
            return f"+ {self.text}"
        why = "needs a migration file" + ("" if self.harmless else "; the server cannot start without it")
        return f"! {self.text} ({why})"


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What a run would do: create a new database, or run files and apply changes."""

    new_database: bool
    pending: tuple[migration_files.MigrationFile, ...]
    changes: tuple[Change, ...]
    tables: int = 0  # tables a new database gets

    @property
    def empty(self) -> bool:
        return not self.new_database and not self.pending and not self.changes

    def lines(self) -> list[str]:
        if self.new_database:
            return [f"+ create the {self.tables} tables of a new database"]
        lines = [f"> run migration file {f.path}" for f in self.pending]
        if self.pending and self.changes:
            lines.append("  then, unless the files settle them:")
        return lines + [c.line for c in self.changes]

    def first_difference(self) -> str:
        """One line naming the first difference and how many follow."""
        every = self.lines() if not self.pending else [f"migration file {self.pending[0].path} not applied"]
        first = every[0].lstrip("+!> ").strip()
        rest = len(self.pending) + len(self.changes) - 1
        return first + (f" (and {rest} more: `tidings migrate plan` lists them)" if rest > 0 else "")


class Migrator:
    """Compares ``tables`` with the database at ``url`` and brings it to them."""

    def __init__(self, engine: AsyncEngine, tables: Tables, directory: Path | None) -> None:
        self.engine = engine
        self.tables = tables
        self.directory = directory
        self.dialect = engine.dialect.name

    # -- the locked run ------------------------------------------------------------

    async def migrate(self, mode: Mode) -> list[str]:
        """Bring the database to the declared tables as ``mode`` allows; the lines of what was done."""
        if mode is Mode.OFF or await self._current():
            return []
        async with _locked(self) as conn:
            done: list[str] = await conn.run_sync(self._migrate, mode)
            return done

    async def _current(self) -> bool:
        """Whether the database was migrated to these very declarations and has run every file: then
        there is nothing to compare (a start, a worker, a restart cost one query, not a reflection)."""
        meta = self.tables.meta
        files = migration_files.find(self.directory)
        keys = [MIGRATED_KEY, *(migration_files.PREFIX + f.name for f in files)]
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(sa.select(meta.c.key, meta.c.value).where(meta.c.key.in_(keys)))).all()
        except sa.exc.DBAPIError:
            return False  # no tidings_meta yet: a new database
        found = dict(rows)
        return found.get(MIGRATED_KEY) == fingerprint(self.tables) and len(found) == len(keys)

    async def plan(self) -> Plan:
        async with self.engine.connect() as conn:
            return await conn.run_sync(self._plan)

    async def claim_schema(self) -> bool:
        """Record this process's schema as the one served; True when it replaced another one.

        Compare-and-set: of processes that start at once with the same schema, one claims it.
        """
        meta, mine = self.tables.meta, fingerprint(self.tables)
        async with self.engine.begin() as conn:
            changed = await conn.execute(
                meta.update().where(meta.c.key == SCHEMA_KEY, meta.c.value != mine).values(value=mine)
            )
            if changed.rowcount:
                return True
            known = (await conn.execute(sa.select(meta.c.value).where(meta.c.key == SCHEMA_KEY))).first()
            if known is None:
                await conn.execute(meta.insert().values(key=SCHEMA_KEY, value=mine))
        return False

    def _migrate(self, conn: sa.Connection, mode: Mode) -> list[str]:
        plan = self._plan(conn)
        if plan.empty:
            self._register(conn)
            return []
        if mode is Mode.CHECK and not plan.new_database:
            raise SchemaRefused(
                f"--migrate check: the database differs from the declared collections: {plan.first_difference()}; "
                "run `tidings migrate apply` (or serve with --migrate auto)"
            )
        done: list[str] = []
        if plan.new_database:
            self.tables.metadata.create_all(conn)
            for f in migration_files.find(self.directory):  # history of databases made before this one
                self._record_file(conn, f)
            done.append(plan.lines()[0].removeprefix("+ "))
        else:
            for f in plan.pending:
                self._run_file(conn, f)
                done.append(f"ran migration file {f.path}")
            changes = self._compare(conn) if plan.pending else plan.changes
            refused = [c for c in changes if not c.additive and not c.harmless]
            if refused:
                raise SchemaRefused(
                    f"--migrate {mode.value}: {refused[0].text} needs a migration file: run "
                    "`tidings migrate new <name>`, review the file, and start again"
                    + (f" ({len(refused) - 1} more: `tidings migrate plan`)" if len(refused) > 1 else "")
                )
            self._apply(conn, [c for c in changes if c.additive])
            done += [c.text for c in changes if c.additive]
            for c in changes:
                if c.harmless:
                    logger.warning(
                        "Schema: %s is left as it is: a destructive change needs a migration file "
                        "(tidings migrate new <name>)",
                        c.text,
                    )
        self._register(conn)
        for line in done:
            logger.info("Migrated: %s", line, extra={"event": "migrated", "change": line})
        return done

    # -- comparing -----------------------------------------------------------------

    def _plan(self, conn: sa.Connection) -> Plan:
        if not sa.inspect(conn).has_table(self.tables.meta.name):
            return Plan(True, (), (), tables=len(self.tables.metadata.tables))
        ran = self._ran_files(conn)
        pending = tuple(f for f in migration_files.find(self.directory) if f.name not in ran)
        return Plan(False, pending, tuple(self._compare(conn)))

    def _context(self, conn: sa.Connection) -> MigrationContext:
        from alembic.runtime.migration import MigrationContext

        owned = set(self.tables.metadata.tables) | self._registered(conn)

        def include_name(name: str | None, kind: str, _parents: Any) -> bool:
            return kind != "table" or name in owned

        return MigrationContext.configure(
            conn, opts={"compare_type": True, "include_name": include_name, "render_as_batch": True}
        )

    def _upgrade_ops(self, conn: sa.Connection) -> ops.UpgradeOps:
        from alembic.autogenerate import produce_migrations

        script = produce_migrations(self._context(conn), self.tables.metadata)
        assert script.upgrade_ops is not None  # produce_migrations always makes one
        return script.upgrade_ops

    def _compare(self, conn: sa.Connection) -> list[Change]:
        return [classify(op, conn.dialect) for op in _flatten(self._upgrade_ops(conn))]

    async def render(self) -> str:
        """The differences as the body of an ``upgrade()``, as Alembic renders a revision."""
        async with self.engine.connect() as conn:
            return await conn.run_sync(self._render)

    def _render(self, conn: sa.Connection) -> str:
        from alembic.autogenerate import render_python_code
        from alembic.operations import ops

        if not sa.inspect(conn).has_table(self.tables.meta.name):
            return "pass  # a new database: tidings creates the declared tables"
        # Only what needs a person: tidings applies the additive changes itself after the files.
        upgrade = self._upgrade_ops(conn)
        kept: list[ops.MigrateOperation] = []
        for op in upgrade.ops:
            if isinstance(op, ops.ModifyTableOps):
                inner = [o for o in op.ops if not classify(o, conn.dialect).additive]
                if inner:
                    kept.append(ops.ModifyTableOps(op.table_name, inner, schema=op.schema))
            elif not classify(op, conn.dialect).additive:
                kept.append(op)
        return render_python_code(ops.UpgradeOps(kept), render_as_batch=True)

    # -- applying ------------------------------------------------------------------

    def _apply(self, conn: sa.Connection, changes: list[Change]) -> None:
        from alembic.operations import Operations, ops

        operations = Operations(self._context(conn))
        by_table: dict[str, list[Change]] = {}
        for c in changes:
            by_table.setdefault(c.table, []).append(c)
        for table, group in by_table.items():
            creates = [c for c in group if isinstance(c.op, ops.CreateTableOp)]
            for c in creates:
                operations.invoke(c.op)
            alters = [c.op for c in group if not isinstance(c.op, ops.CreateTableOp)]
            if not alters:
                continue
            # A required field with a default: added nullable, filled, then made required.
            # A field with a default: existing rows get it (as old events read it); a required one is
            # added nullable, filled, then made required.
            filled = [op for op in alters if isinstance(op, ops.AddColumnOp) and "default" in op.column.info]
            staged = [_added(op, nullable=op in filled) if isinstance(op, ops.AddColumnOp) else op for op in alters]
            self._batch(operations, table, staged)
            for op in filled:
                column = sa.column(op.column.name, op.column.type)
                default = plain(op.column.info["default"])
                conn.execute(sa.table(table, column).update().values({op.column.name: default}))
            required = [
                ops.AlterColumnOp(table, op.column.name, existing_type=op.column.type, modify_nullable=False)
                for op in filled
                if not op.column.nullable
            ]
            if required:
                self._batch(operations, table, required)

    def _batch(self, operations: Operations, table: str, changes: Sequence[ops.MigrateOperation]) -> None:
        with operations.batch_alter_table(table) as batch:
            for op in changes:
                batch.invoke(op)

    def _run_file(self, conn: sa.Connection, f: migration_files.MigrationFile) -> None:
        from alembic.operations import Operations

        module = f.load()
        with Operations.context(self._context(conn)):
            try:
                module.upgrade()
            except Exception as exc:
                raise SchemaRefused(f"migration {f.path}: {type(exc).__name__}: {exc}") from exc
        self._record_file(conn, f)

    # -- what tidings_meta keeps ---------------------------------------------------

    def _keys(self, conn: sa.Connection, prefix: str) -> set[str]:
        meta = self.tables.meta
        rows = conn.execute(sa.select(meta.c.key).where(meta.c.key.startswith(prefix, autoescape=True)))
        return {str(key).removeprefix(prefix) for key in rows.scalars()}

    def _ran_files(self, conn: sa.Connection) -> set[str]:
        return self._keys(conn, migration_files.PREFIX)

    def _registered(self, conn: sa.Connection) -> set[str]:
        if not sa.inspect(conn).has_table(self.tables.meta.name):
            return set()
        return self._keys(conn, TABLE_PREFIX)

    def _record_file(self, conn: sa.Connection, f: migration_files.MigrationFile) -> None:
        conn.execute(self.tables.meta.insert().values(key=migration_files.PREFIX + f.name, value=1))

    def _register(self, conn: sa.Connection) -> None:
        """Keep ``table:`` keys for the tables tidings made and that still exist, and the fingerprint
        of the declarations the database was brought to."""
        meta = self.tables.meta
        mine = fingerprint(self.tables)
        if not conn.execute(meta.update().where(meta.c.key == MIGRATED_KEY).values(value=mine)).rowcount:
            conn.execute(meta.insert().values(key=MIGRATED_KEY, value=mine))
        existing = set(sa.inspect(conn).get_table_names())
        registered = self._registered(conn)
        wanted = (registered | set(self.tables.metadata.tables)) & existing
        for name in sorted(wanted - registered):
            conn.execute(meta.insert().values(key=TABLE_PREFIX + name, value=1))
        gone = registered - wanted
        if gone:
            conn.execute(meta.delete().where(meta.c.key.in_([TABLE_PREFIX + name for name in gone])))


@contextlib.asynccontextmanager
async def _locked(migrator: Migrator) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that holds the database's migration lock."""
    engine, own = migrator.engine, None
    database = engine.url.database
    if migrator.dialect == "sqlite" and database and database != ":memory:":
        # Its own connection: BEGIN IMMEDIATE takes the write lock, waited for up to LOCK_WAIT;
        # foreign keys off, as SQLite asks of a table rebuild (batch mode drops the old table).
        engine = own = create_async_engine(engine.url)
        sa.event.listen(engine.sync_engine, "connect", _migration_pragmas)
        sa.event.listen(engine.sync_engine, "begin", sqlite.begin_immediate)
    try:
        async with engine.begin() as conn:
            if migrator.dialect == "postgresql":
                await conn.execute(sa.text(f"SET LOCAL lock_timeout = '{int(LOCK_WAIT * 1000)}ms'"))
                await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK)))
            yield conn
    finally:
        if own is not None:
            await own.dispose()


def _migration_pragmas(dbapi_conn: Any, record: Any) -> None:
    sqlite.pragmas(dbapi_conn, record)
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT * 1000)}")
    cursor.execute("PRAGMA foreign_keys=OFF")
    cursor.close()


# -- what a difference is ------------------------------------------------------------


def _flatten(upgrade: ops.UpgradeOps) -> Iterator[ops.MigrateOperation]:
    from alembic.operations import ops

    for op in upgrade.ops:
        if isinstance(op, ops.ModifyTableOps):
            yield from op.ops
        else:
            yield op


def _table_of(op: ops.MigrateOperation) -> str:
    for attr in ("table_name", "source_table"):
        name = getattr(op, attr, None)
        if isinstance(name, str):
            return name
    constraint = getattr(op, "constraint", None)
    table = getattr(constraint, "table", None)
    return str(getattr(table, "name", "?"))


def classify(op: ops.MigrateOperation, dialect: sa.Dialect) -> Change:
    """What ``op`` does, in one line, and whether it is additive (safe to run unattended)."""
    from alembic.operations import ops

    table = _table_of(op)
    if isinstance(op, ops.CreateTableOp):
        return Change(op, table, f"create table {table}", additive=True)
    if isinstance(op, ops.DropTableOp):
        return Change(op, table, f"drop table {table}: no collection declares it", additive=False, harmless=True)
    if isinstance(op, ops.AddColumnOp):
        column = op.column
        text = f"add column {table}.{column.name} ({column.type.compile(dialect=dialect)}"
        if "default" in column.info:
            return Change(op, table, text + f", {column.info['default']!r} in existing rows)", additive=True)
        if column.nullable:
            return Change(op, table, text + ", null in existing rows)", additive=True)
        return Change(op, table, text + "): required without a default, existing rows have no value", additive=False)
    if isinstance(op, ops.DropColumnOp):
        column = op.to_column()
        return Change(
            op,
            table,
            f"drop column {table}.{op.column_name}: no field declares it",
            False,
            harmless=bool(column.nullable),
        )
    if isinstance(op, ops.AlterColumnOp):
        if op.modify_type is not None:
            return Change(
                op,
                table,
                f"change the type of {table}.{op.column_name} from {op.existing_type} to {op.modify_type}",
                additive=False,
            )
        if op.modify_nullable is True:
            return Change(op, table, f"let {table}.{op.column_name} be null", additive=True)
        if op.modify_nullable is False:
            return Change(op, table, f"make {table}.{op.column_name} required (not null)", additive=False)
    if isinstance(op, ops.CreateIndexOp):
        columns = ", ".join(getattr(c, "name", str(c)) for c in op.columns)
        return Change(op, table, f"create index {op.index_name} on {table} ({columns})", additive=True)
    if isinstance(op, ops.DropIndexOp):
        return Change(op, table, f"drop index {op.index_name} of {table}", additive=False, harmless=True)
    if isinstance(op, ops.CreateForeignKeyOp):
        columns = ", ".join(op.local_cols)
        return Change(op, table, f"add foreign key {table} ({columns}) -> {op.referent_table}", additive=True)
    return Change(op, table, f"{type(op).__name__} on {table}: {op.to_diff_tuple()!r}", additive=False)


def _added(op: ops.AddColumnOp, *, nullable: bool) -> ops.AddColumnOp:
    """``op``'s column without its index and foreign key (autogenerate gives each its own operation,
    which Alembic's add_column would duplicate), and nullable when asked."""
    from alembic.operations import ops

    source = op.column
    column = sa.Column(source.name, source.type, nullable=nullable or source.nullable, info=dict(source.info))
    return ops.AddColumnOp(op.table_name, column, schema=op.schema)


def fingerprint(tables: Tables) -> int:
    """The declared schema in 60 bits: tables, columns (type, null), indexes, foreign keys."""
    parts: list[str] = []
    for table in sorted(tables.metadata.tables.values(), key=lambda t: t.name):
        parts.append(f"table {table.name}")
        parts += [f"  {c.name} {c.type!r} {c.nullable}" for c in table.columns]
        parts += sorted(f"  index {i.name} {[c.name for c in i.columns]}" for i in table.indexes)
        parts += sorted(f"  fk {fk.parent.name} {fk.target_fullname}" for fk in table.foreign_keys)
    return int(hashlib.sha256("\n".join(parts).encode()).hexdigest()[:15], 16)


__all__ = ["Change", "Migrator", "Mode", "Plan", "SchemaRefused", "classify", "fingerprint"]
