"""The comparison servers of ``write_path.py``: the same task mutation and reads, without tidings.

Three ASGI apps, each run by ``python -m uvicorn write_servers:<app> --app-dir bench``,
with ``BENCH_DB`` (a SQLAlchemy URL: ``sqlite+aiosqlite:///x.db`` or
``postgresql+asyncpg://...``) naming the database they write, and ``BENCH_READ_DB`` the
one they read (tidings' own, so both read the same rows):

- ``naive_app``: written the way Strawberry's and SQLAlchemy's docs show: a
  ``createTask(input: {title})`` mutation adding an ORM object in an ``AsyncSession``,
  served by ``strawberry.asgi.GraphQL``.
- ``raw_app``: the floor on the same stack: Starlette, one SQLAlchemy Core INSERT on
  the async engine (aiosqlite or asyncpg) per POST /create, answered with orjson; POST
  /list and /get run the SELECT tidings runs for ``tasks(where, orderBy, limit: 50)``
  and ``task(id)`` and serialize the rows with orjson.
- ``raw_thread_app``: ``raw_app`` with the INSERT on one writer thread (pysqlite, one
  ``ThreadPoolExecutor(1)``), as tidings writes on SQLite.

Every SQLite connection runs WAL with synchronous=NORMAL, as tidings' do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import sqlalchemy as sa
import strawberry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from strawberry.asgi import GraphQL

DB = os.environ.get("BENCH_DB", "sqlite+aiosqlite:///bench-write.db")
READ_DB = os.environ.get("BENCH_READ_DB", DB)


def _pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _engine(url: str) -> Any:
    engine = create_async_engine(url)
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine.sync_engine, "connect", _pragmas)
    return engine


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- the naive app: Strawberry + SQLAlchemy ORM ---------------------------------------------


class Base(DeclarativeBase):
    pass


class TaskRow(Base):
    __tablename__ = "bench_tasks"
    id: Mapped[str] = mapped_column(primary_key=True)
    title: Mapped[str]
    status: Mapped[str]
    priority: Mapped[int]
    created_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(sa.DateTime(timezone=True))
    version: Mapped[int]


naive_engine = _engine(DB)
Session = async_sessionmaker(naive_engine, expire_on_commit=False)


@strawberry.type
class Task:
    id: strawberry.ID
    title: str


@strawberry.input
class CreateTaskInput:
    title: str


@strawberry.type
class Query:
    @strawberry.field
    async def task(self, id: strawberry.ID) -> Task | None:  # noqa: A002 (the GraphQL argument's name)
        async with Session() as session:
            row = await session.get(TaskRow, str(id))
        return Task(id=strawberry.ID(row.id), title=row.title) if row is not None else None


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def create_task(self, input: CreateTaskInput) -> Task:  # noqa: A002 (the GraphQL argument's name)
        now = _now()
        row = TaskRow(id=uuid.uuid4().hex, title=input.title, status="pending", priority=0)
        row.created_at, row.updated_at, row.version = now, now, 1
        session: AsyncSession
        async with Session() as session, session.begin():
            session.add(row)
        return Task(id=strawberry.ID(row.id), title=row.title)


class NaiveGraphQL(GraphQL[Any, Any]):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, _create_naive)
            return
        await super().__call__(scope, receive, send)


async def _create_naive() -> None:
    async with naive_engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)


async def _lifespan(receive: Any, send: Any, startup: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


naive_app = NaiveGraphQL(strawberry.Schema(query=Query, mutation=Mutation))


# -- the raw apps: Starlette + SQLAlchemy Core ----------------------------------------------

metadata = sa.MetaData()
raw_tasks = sa.Table(
    "raw_tasks",
    metadata,
    sa.Column("id", sa.Text(), primary_key=True),
    sa.Column("title", sa.Text(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False),
    sa.Column("priority", sa.BigInteger(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("version", sa.BigInteger(), nullable=False),
)
INSERT = raw_tasks.insert()
# The SELECTs tidings runs for tasks(where: {status: {eq: $s}}, orderBy: [{priority: DESC}], limit: 50)
# and task(id), on its own table (BENCH_READ_DB is tidings' database): every column of the
# row, as tidings reads the whole record; the answer carries the fields the query selects.
COLUMNS = "id, account, created_at, updated_at, version, title, status, priority, assigned_to, due_at, tags"
ID_ORDER = 'id COLLATE "C"' if READ_DB.startswith("postgresql") else "id"  # tidings sorts ids by code point
LIST = sa.text(
    f"SELECT {COLUMNS} FROM tasks WHERE status = :status ORDER BY priority DESC NULLS LAST, {ID_ORDER} ASC LIMIT 50"
)
GET = sa.text(f"SELECT {COLUMNS} FROM tasks WHERE id = :id")
FIELDS = ("id", "title", "status", "priority", "created_at")

raw_engine = _engine(DB)
read_engine = _engine(READ_DB)
_sync_engine: sa.Engine | None = None
_writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="raw-writer")


def _row(title: str) -> dict[str, Any]:
    now = _now()
    return {
        "id": uuid.uuid4().hex,
        "title": title,
        "status": "pending",
        "priority": 0,
        "created_at": now,
        "updated_at": now,
        "version": 1,
    }


def _created(row: dict[str, Any]) -> Response:
    body = {"data": {"createTask": {"id": row["id"], "title": row["title"]}}}
    return Response(orjson.dumps(body), media_type="application/json")


async def create(request: Request) -> Response:
    title = orjson.loads(await request.body())["variables"]["t"]
    row = _row(title)
    async with raw_engine.begin() as conn:
        await conn.execute(INSERT, row)
    return _created(row)


def _insert_sync(row: dict[str, Any]) -> None:
    assert _sync_engine is not None
    with _sync_engine.begin() as conn:
        conn.execute(INSERT, row)


async def create_on_thread(request: Request) -> Response:
    title = orjson.loads(await request.body())["variables"]["t"]
    row = _row(title)
    await asyncio.get_running_loop().run_in_executor(_writer, _insert_sync, row)
    return _created(row)


def _jsonable(row: Any) -> dict[str, Any]:
    mapping = row._mapping
    out = {f: mapping[f] for f in FIELDS}
    created = out["created_at"]
    out["created_at"] = created if isinstance(created, str) else created.isoformat()
    return out


async def list_tasks(request: Request) -> Response:
    status = orjson.loads(await request.body())["variables"]["s"]
    async with read_engine.connect() as conn:
        rows = (await conn.execute(LIST, {"status": status})).all()
    body = {"data": {"tasks": [_jsonable(r) for r in rows]}}
    return Response(orjson.dumps(body), media_type="application/json")


async def get_task(request: Request) -> Response:
    task_id = orjson.loads(await request.body())["variables"]["id"]
    async with read_engine.connect() as conn:
        row = (await conn.execute(GET, {"id": task_id})).first()
    body = {"data": {"task": _jsonable(row) if row is not None else None}}
    return Response(orjson.dumps(body), media_type="application/json")


@contextlib.asynccontextmanager
async def _raw_lifespan(app: Starlette) -> AsyncIterator[None]:
    global _sync_engine
    async with raw_engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    if raw_engine.dialect.name == "sqlite":
        _sync_engine = sa.create_engine(raw_engine.url.set(drivername="sqlite"))
        sa.event.listen(_sync_engine, "connect", _pragmas)
    yield
    await raw_engine.dispose()
    await read_engine.dispose()


_reads = [Route("/list", list_tasks, methods=["POST"]), Route("/get", get_task, methods=["POST"])]
raw_app = Starlette(routes=[Route("/create", create, methods=["POST"]), *_reads], lifespan=_raw_lifespan)
raw_thread_app = Starlette(
    routes=[Route("/create", create_on_thread, methods=["POST"]), *_reads], lifespan=_raw_lifespan
)
