"""The database failing under the API: out of space (SQLite's writer held to its size, a real
tmpfs of 2 MB, PostgreSQL answering disk_full), or gone for a while (a PostgreSQL of the test's
own restarted with ``pg_ctl restart -m fast``, or stopped for longer than ``--db-outage-wait``).

Writes without space fail at once UNAVAILABLE (HTTP 503, Retry-After) and /readyz says so until
one commits again; requests that arrive during an outage wait for the database within the bound
and then succeed, or fail UNAVAILABLE. Never an internal error; nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import sqlite3
import subprocess
import tempfile
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from graphql import GraphQLError

from tests.support.backends import fresh_database
from tests.support.processes import PostgresProcess, postgres_process
from tests.support.servers import Server, make_server, until
from tests.test_health import until_ready
from tidings.pubsub import MemoryBroker
from tidings.pubsub.postgres import asyncpg_url
from tidings.schema.extensions import finish_errors
from tidings.store.faults import Fault, is_disconnect, storage_fault

OUTAGE_WAIT = 3.0  # --db-outage-wait of these tests
MARGIN = 2.0  # what a request may take beyond it (a statement under way, the answer's trip)
CREATE = 'mutation($body: String!) { createMessage(input: {room: "r1", author: "a", body: $body}) { id } }'
READ = 'query { messages(where: {room: {eq: "r1"}}, limit: 1) { id } }'
ALL = 'query { messages(where: {room: {eq: "r1"}}, limit: 1000) { body } }'


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # "write" or "read"
    body: str | None
    seconds: float
    status: int
    code: str | None  # None: it succeeded
    retry_after: str | None  # the Retry-After header
    retry_after_s: float | None  # extensions.retryAfter


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[PostgresProcess]:
    with postgres_process(tmp_path) as pg:
        yield pg


def outage_server(tmp_path: Path, pg: PostgresProcess) -> Server:
    return make_server(tmp_path, db=pg.url, db_outage_wait=OUTAGE_WAIT, ready_timeout=0.5)


async def request(http: httpx.AsyncClient, kind: str, body: str | None = None) -> Outcome:
    query, variables = (CREATE, {"body": body}) if kind == "write" else (READ, {})
    started = time.monotonic()
    response = await http.post("/graphql", json={"query": query, "variables": variables})
    seconds = time.monotonic() - started
    errors = response.json().get("errors") or []
    codes = {e.get("extensions", {}).get("code") for e in errors}
    assert len(codes) <= 1, errors
    code = codes.pop() if codes else None
    retry_after = errors[0]["extensions"].get("retryAfter") if errors else None
    return Outcome(kind, body, seconds, response.status_code, code, response.headers.get("retry-after"), retry_after)


class Traffic:
    """Two writers and a reader, each sending its next request as soon as the last was answered."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.outcomes: list[Outcome] = []
        self.stopping = False
        self.numbers = itertools.count()
        self.tasks = [asyncio.create_task(self._loop(kind)) for kind in ("write", "write", "read")]

    async def _loop(self, kind: str) -> None:
        while not self.stopping:
            body = f"m{next(self.numbers)}" if kind == "write" else None
            self.outcomes.append(await request(self.http, kind, body))

    def succeeded(self, kind: str) -> int:
        return sum(1 for o in self.outcomes if o.kind == kind and o.code is None)

    async def stop(self) -> list[Outcome]:
        self.stopping = True
        await asyncio.gather(*self.tasks)
        return self.outcomes


async def stored_bodies(http: httpx.AsyncClient) -> set[str]:
    response = await http.post("/graphql", json={"query": ALL})
    return {m["body"] for m in response.json()["data"]["messages"]}


def assert_unavailable(outcome: Outcome) -> None:
    assert outcome.code == "UNAVAILABLE", outcome
    assert outcome.retry_after_s is not None and outcome.retry_after_s > 0, outcome
    assert outcome.status == 503 and outcome.retry_after is not None, outcome
    assert int(outcome.retry_after) >= outcome.retry_after_s, outcome


async def metric_lines(http: httpx.AsyncClient) -> list[str]:
    return [line for line in (await http.get("/metrics")).text.splitlines() if line.startswith("tidings_store_")]


# -- what the drivers' failures mean -------------------------------------------------


@pytest.mark.parametrize(
    ("error", "fault", "disconnect"),
    [
        (sqlite3.OperationalError("database or disk is full"), None, False),  # without its code: not ours to guess
        (asyncpg.DiskFullError("could not extend file"), Fault.DISK_FULL, False),
        (asyncpg.OutOfMemoryError("out of memory"), Fault.OUT_OF_MEMORY, False),
        (asyncpg.PostgresIOError("could not write block"), Fault.IO_ERROR, False),
        (asyncpg.AdminShutdownError("terminating connection"), None, True),
        (asyncpg.CannotConnectNowError("the database system is starting up"), None, True),
        (asyncpg.ConnectionDoesNotExistError("connection was closed"), None, True),
        (ConnectionRefusedError(111, "Connection refused"), None, True),
        (asyncpg.UniqueViolationError("duplicate key"), None, False),
        (asyncpg.SerializationError("could not serialize"), None, False),
    ],
)
def test_driver_errors_are_read_as_the_database_s_faults_or_the_request_s(
    error: Exception, fault: Fault | None, disconnect: bool
) -> None:
    wrapped = sa.exc.DBAPIError.instance("INSERT", {}, error, Exception)  # as SQLAlchemy raises it
    for raised in (error, wrapped):
        assert (storage_fault(raised), is_disconnect(raised)) == (fault, disconnect)


def test_sqlite_s_full_and_io_error_codes_are_faults() -> None:
    with sqlite3.connect(":memory:") as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("PRAGMA max_page_count = 1")  # held to the pages it has: no room for a blob
        with pytest.raises(sqlite3.OperationalError) as raised:
            conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    assert storage_fault(raised.value) is Fault.DISK_FULL
    io_error = sqlite3.OperationalError("disk I/O error")
    io_error.sqlite_errorcode = 10 | 3 << 8  # type: ignore[attr-defined] # SQLITE_IOERR_WRITE
    assert storage_fault(io_error) is Fault.IO_ERROR


class _Response:
    def __init__(self) -> None:
        self.status_code = 200
        self.headers: dict[str, str] = {}


@pytest.mark.parametrize(
    ("codes", "data", "status"),
    [
        (["UNAVAILABLE"], None, 503),
        (["UNAVAILABLE", "UNAVAILABLE"], {"a": None, "b": None}, 503),
        (["UNAVAILABLE"], {"a": {"id": "1"}, "b": None}, 200),  # one mutation went through: not all to resend
        (["UNAVAILABLE", "NOT_FOUND"], None, 200),
        (["UNAUTHENTICATED", "UNAVAILABLE"], None, 401),
    ],
)
def test_http_status_is_503_only_when_nothing_was_done(codes: list[str], data: Any, status: int) -> None:
    errors = [GraphQLError("e", path=["a"], extensions={"code": c, "retryAfter": 1.5}) for c in codes]
    response = _Response()
    finish_errors(errors, types.SimpleNamespace(response=response), data=data)
    assert response.status_code == status
    assert response.headers == ({"Retry-After": "2"} if status == 503 else {})


# -- no space ------------------------------------------------------------------------


def writer_pragma(server: Server, sql: str) -> Any:
    """``sql`` on the SQLite writer's own connection, on its thread, between writes: with
    ``PRAGMA max_page_count`` the file may not grow, a full disk without root (SQLITE_FULL)."""
    store = server.tidings.store

    def run() -> Any:
        conn = store.writer.connection
        value = conn.exec_driver_sql(sql).scalar()
        conn.commit()  # SQLAlchemy began a transaction for it
        return value

    return store.writer.submit(run).result(5)


WHILE_FULL = "while-full-" + "x" * 2000


async def fill(http: httpx.AsyncClient, prefix: str, limit: int = 2000) -> tuple[list[str], Outcome]:
    """Writes of 2 KB until one fails: the bodies acknowledged, and that failure."""
    acknowledged = []
    for i in range(limit):
        body = f"{prefix}-{i}-" + "x" * 2000
        outcome = await request(http, "write", body)
        if outcome.code is not None:
            return acknowledged, outcome
        acknowledged.append(body)
    raise AssertionError(f"{limit} writes went in: the disk is not full")


async def assert_writes_failing(http: httpx.AsyncClient, reason: str) -> None:
    """What a full disk looks like from outside: writes UNAVAILABLE at once, reads served, /readyz
    503 saying why (its probe write fails too), and the metrics."""
    again = await request(http, "write", WHILE_FULL)
    assert_unavailable(again)
    assert again.seconds < 1.0, again  # no waiting: space does not come back by itself
    assert (await request(http, "read")).code is None
    body = await until_ready(http, 503)
    assert body["checks"]["database"].startswith("writes failing: "), body
    assert body["checks"]["broker"] == "ok", body
    lines = await metric_lines(http)
    assert any(
        line.startswith(f'tidings_store_failures_total{{operation="write",reason="{reason}"}} ') for line in lines
    )
    assert "tidings_store_writable 0.0" in lines


async def assert_writes_recovered(http: httpx.AsyncClient, acknowledged: list[str], refused: list[str]) -> None:
    await until_ready(http, 200)  # its probe write committed
    assert "tidings_store_writable 1.0" in await metric_lines(http)
    assert (await request(http, "write", "after")).code is None
    stored = await stored_bodies(http)
    assert {*acknowledged, "after"} <= stored
    assert not stored & {*refused, WHILE_FULL}


async def test_sqlite_without_space_answers_unavailable_and_recovers_when_there_is_room(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            before = [f"before-{i}" for i in range(3)]
            for body in before:
                assert (await request(http, "write", body)).code is None
            writer_pragma(server, "PRAGMA max_page_count = 1")  # held to the pages it has now
            acknowledged, failed = await fill(http, "full")
            assert_unavailable(failed)
            await assert_writes_failing(http, "disk_full")
            writer_pragma(server, "PRAGMA max_page_count = 1073741823")
            await assert_writes_recovered(http, before + acknowledged, [str(failed.body)])
    finally:
        server.stop()


@contextlib.contextmanager
def tiny_filesystem(size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted for the test and unmounted after.

    Skips where mounting is not allowed (not root, or a sandbox without the mount syscall): the
    same path, a write that finds no space, is covered everywhere by
    ``test_sqlite_without_space_answers_unavailable_and_recovers_when_there_is_room``
    (``PRAGMA max_page_count``); this test only adds a real filesystem where the machine has one.
    """
    covered = "test_sqlite_without_space_answers_unavailable_and_recovers_when_there_is_room covers the path"
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root ({covered})")
    where = Path(tempfile.mkdtemp(prefix="tidings-full-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        where.rmdir()
        why = mounted.stderr.decode(errors="replace").strip()
        pytest.skip(f"cannot mount a tmpfs here: {why} ({covered})")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(where)], capture_output=True)
        where.rmdir()


async def test_sqlite_on_a_full_filesystem_answers_unavailable_and_recovers_when_space_is_freed(
    tmp_path: Path,
) -> None:
    with tiny_filesystem("2m") as disk:
        server = make_server(tmp_path, db=f"sqlite:///{disk / 'tidings.db'}")
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                assert (await request(http, "write", "before")).code is None
                # All but 256 KB taken by another file: the database's next writes fill the rest.
                room = os.statvfs(disk)
                filler = disk / "filler"
                filler.write_bytes(b"\0" * max(room.f_bavail * room.f_frsize - 256 * 1024, 0))
                acknowledged, failed = await fill(http, "full")
                assert_unavailable(failed)
                await assert_writes_failing(http, "disk_full")
                filler.unlink()
                await assert_writes_recovered(http, ["before", *acknowledged], [str(failed.body)])
        finally:
            server.stop()


async def test_postgres_without_space_answers_unavailable_and_recovers_when_there_is_room(tmp_path: Path) -> None:
    # PostgreSQL's own disk_full (53100), raised where a full disk raises it: inserting rows.
    db = await fresh_database("postgresql", tmp_path)
    server = make_server(tmp_path, db=db, broker=MemoryBroker())
    admin = await asyncpg.connect(asyncpg_url(db))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await request(http, "write", "before")).code is None
            await admin.execute(
                "CREATE FUNCTION no_space() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$"
            )
            for table in ("tidings_events", "tidings_meta"):
                await admin.execute(f"CREATE TRIGGER no_space BEFORE INSERT ON {table} EXECUTE FUNCTION no_space()")
            failed = await request(http, "write", "refused")
            assert_unavailable(failed)
            await assert_writes_failing(http, "disk_full")
            for table in ("tidings_events", "tidings_meta"):
                await admin.execute(f"DROP TRIGGER no_space ON {table}")
            await assert_writes_recovered(http, ["before"], ["refused"])
    finally:
        server.stop()
        await admin.close()


# -- outages -------------------------------------------------------------------------


async def events_and_bodies(http: httpx.AsyncClient, admin: asyncpg.Connection) -> tuple[int, list[str]]:
    response = await http.post("/graphql", json={"query": ALL})
    bodies = sorted(m["body"] for m in response.json()["data"]["messages"])
    return await admin.fetchval("SELECT count(*) FROM tidings_events"), bodies


async def test_a_write_whose_transaction_dies_in_commit_is_run_again_once(tmp_path: Path) -> None:
    # The writer's session ends during COMMIT, from a deferred trigger, once (a sequence is not
    # rolled back): the transaction aborted, the log says so, and the write runs again.
    db = await fresh_database("postgresql", tmp_path)
    server = make_server(tmp_path, db=db, broker=MemoryBroker())
    admin = await asyncpg.connect(asyncpg_url(db))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await request(http, "write", "before")).code is None
            await admin.execute(
                "CREATE SEQUENCE lose_commit; "
                "CREATE FUNCTION lose_commit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF nextval('lose_commit') = 1 THEN "
                "PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5); END IF; "
                "RETURN NULL; END $$; "
                "CREATE CONSTRAINT TRIGGER lose_commit AFTER INSERT ON tidings_events "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION lose_commit()"
            )
            outcome = await request(http, "write", "once")
            assert outcome.code is None, outcome
            assert await admin.fetchval("SELECT last_value FROM lose_commit") == 2  # it ran twice
            assert await events_and_bodies(http, admin) == (2, ["before", "once"])
    finally:
        server.stop()
        await admin.close()


async def test_a_write_whose_commit_answer_is_lost_is_found_committed_and_not_run_again(tmp_path: Path) -> None:
    db = await fresh_database("postgresql", tmp_path)
    server = make_server(tmp_path, db=db, broker=MemoryBroker())
    admin = await asyncpg.connect(asyncpg_url(db))
    store = server.tidings.store
    writer = store.writer
    committed = writer.run_sql
    lost: list[str] = []

    async def lose_the_first_commit_answer(conn: Any, driver: Any, sql: str) -> None:
        await committed(conn, driver, sql)
        if sql == "COMMIT" and not lost:
            lost.append(sql)
            raise ConnectionResetError(104, "Connection reset by peer")  # the COMMIT went through

    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await request(http, "write", "before")).code is None
            writer.run_sql = lose_the_first_commit_answer
            outcome = await request(http, "write", "once")
            assert outcome.code is None and lost == ["COMMIT"], outcome
            assert await events_and_bodies(http, admin) == (2, ["before", "once"])
    finally:
        server.stop()
        await admin.close()


async def test_a_postgres_restart_costs_no_request_and_no_acknowledged_write(
    tmp_path: Path, pg: PostgresProcess
) -> None:
    server = outage_server(tmp_path, pg)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            traffic = Traffic(http)
            await until(lambda: traffic.succeeded("write") >= 20 and traffic.succeeded("read") >= 10)
            for _ in range(2):
                before = len(traffic.outcomes)
                await asyncio.to_thread(pg.restart)
                # Traffic again after the restart: on both paths, beyond those that waited for it.
                await until(
                    lambda before=before: sum(1 for o in traffic.outcomes[before:] if o.code is None) >= 30,
                    timeout=OUTAGE_WAIT + MARGIN + 5,
                )
            outcomes = await traffic.stop()
            failed = [o for o in outcomes if o.code is not None]
            assert failed == [], failed  # a short outage is waited out: nothing fails
            slowest = max(o.seconds for o in outcomes)
            assert slowest < OUTAGE_WAIT + MARGIN, slowest
            acknowledged = {o.body for o in outcomes if o.kind == "write" and o.code is None}
            assert acknowledged <= await stored_bodies(http)
    finally:
        server.stop()


async def test_an_outage_past_the_bound_answers_unavailable_then_recovers(tmp_path: Path, pg: PostgresProcess) -> None:
    server = outage_server(tmp_path, pg)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            first = await request(http, "write", "before")
            assert first.code is None, first
            await asyncio.to_thread(pg.stop)
            down = await asyncio.gather(
                request(http, "write", "while-down-1"), request(http, "write", "while-down-2"), request(http, "read")
            )
            for outcome in down:
                assert_unavailable(outcome)
                assert OUTAGE_WAIT - 0.5 <= outcome.seconds < OUTAGE_WAIT + MARGIN, outcome  # waited, then no longer
            body = await until_ready(http, 503)
            assert body["checks"]["database"] != "ok"
            metrics = (await http.get("/metrics")).text
            assert 'tidings_store_failures_total{operation="write",reason="unreachable"}' in metrics
            assert 'tidings_store_failures_total{operation="read",reason="unreachable"} 1.0' in metrics
            assert "tidings_store_writable 0.0" in metrics
            await asyncio.to_thread(pg.start)
            # From now on each request is answered as soon as the database answers it.
            after = await asyncio.gather(request(http, "write", "after"), request(http, "read"))
            assert [o.code for o in after] == [None, None], after
            assert all(o.seconds < OUTAGE_WAIT + MARGIN for o in after), after
            await until_ready(http, 200)
            stored = await stored_bodies(http)
            assert {"before", "after"} <= stored and not stored & {"while-down-1", "while-down-2"}
    finally:
        server.stop()
