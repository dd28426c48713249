"""Schema evolution: declared collections change, the database follows (tidings.store.migrations),
old events still replay, and subscribers hear of it. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.support.backends import fresh_database, service_url
from tests.support.processes import spawn_serve, stop_serve
from tests.support.servers import Server, free_port, gql_post, make_server, until
from tests.support.wsclient import WS
from tidings.cli import main
from tidings.model.toml import load_toml
from tidings.pubsub import broker_from_url
from tidings.store import Store
from tidings.store.migrations import Mode, SchemaRefused

V1 = """
[collections.Task.fields]
title = "String!"
legacy = "String!"
"""
# A field with a default, a nullable field, soft delete (a column and its index).
V2 = """
[collections.Task]
soft_delete = true
[collections.Task.fields]
title = "String!"
legacy = "String!"
status = { type = "String!", default = "open" }
notes = "String"
"""
# legacy removed: destructive.
V3 = """
[collections.Task]
soft_delete = true
[collections.Task.fields]
title = "String!"
status = { type = "String!", default = "open" }
notes = "String"
"""
# A relation: a new collection, and a reference to it (a nullable column, its foreign key and index).
V2_RELATION = (
    V2
    + """project = { ref = "Project" }
[collections.Project.fields]
name = "String!"
"""
)
DATABASES = ["sqlite", "postgresql"]


def declare(tmp_path: Path, text: str) -> str:
    path = tmp_path / "collections.toml"
    path.write_text(text)
    return str(path)


def store(tmp_path: Path, db: str, text: str, mode: Mode = Mode.AUTO) -> Store:
    return Store(db, load_toml(declare(tmp_path, text)), migrate=mode, migrations=tmp_path / "migrations")


async def started(tmp_path: Path, db: str, text: str, mode: Mode = Mode.AUTO) -> Store:
    s = store(tmp_path, db, text, mode)
    await s.start()
    return s


def cli(tmp_path: Path, db: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["migrate", *args, "--db", db, "--collections", str(tmp_path / "collections.toml")])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(params=DATABASES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return asyncio.run(fresh_database(request.param, tmp_path))


async def test_additive_changes_apply_to_a_table_with_rows_and_old_events_read_as_declared_now(
    tmp_path: Path, db: str
) -> None:
    s = await started(tmp_path, db, V1)
    task = s.collections["Task"]
    rows = [(await s.create(task, {"title": t, "legacy": "x"}, account=None, actor=None))[0] for t in "ab"]
    await s.update(task, rows[0]["id"], {"title": "a2"}, expected_version=None, guard=s_all(), actor=None)
    await s.close()

    s = await started(tmp_path, db, V2)
    try:
        assert s.migrated == [
            "add column tasks.status (TEXT, 'open' in existing rows)",
            "add column tasks.notes (TEXT, null in existing rows)",
            f"add column tasks.deleted_at ({'DATETIME' if 'sqlite' in db else 'TIMESTAMP WITH TIME ZONE'}, "
            "null in existing rows)",
            "create index ix_tasks_deleted_at on tasks (deleted_at)",
        ]
        task = s.collections["Task"]
        old = await s.get(task, rows[0]["id"])
        assert old is not None and (old["title"], old["status"], old["notes"], old["version"]) == (
            "a2",
            "open",
            None,
            2,
        )
        # The old events, replayed: the added fields as their default (or null), nothing else changed.
        events = await s.read_events(0)
        assert [(e.operation.value, e.record["title"], e.record["status"], e.record["notes"]) for e in events] == [
            ("CREATED", "a", "open", None),
            ("CREATED", "b", "open", None),
            ("UPDATED", "a2", "open", None),
        ]
        assert events[2].previous == {"title": "a"}
        # Soft delete works on a row from before it was turned on.
        await s.delete(task, rows[1]["id"], guard=s_all(), actor=None)
        assert await s.get(task, rows[1]["id"]) is None
        assert (await s.get_deleted(task, rows[1]["id"])) is not None
        new, _ = await s.create(task, {"title": "c", "legacy": "y", "notes": "n"}, account=None, actor=None)
        assert (new["status"], new["notes"]) == ("open", "n")
        assert (await s.migrator.plan()).empty
    finally:
        await s.close()
    # A second start has nothing to do.
    s = await started(tmp_path, db, V2, Mode.CHECK)
    assert s.migrated == []
    await s.close()

    # A relation is additive too: the table with rows gets a nullable reference, its foreign key and index.
    s = await started(tmp_path, db, V2_RELATION)
    try:
        assert s.migrated == [
            "create table projects",
            "create index ix_projects_account on projects (account)",
            "add column tasks.project_id (TEXT, null in existing rows)",
            "create index ix_tasks_project_id on tasks (project_id)",
            "add foreign key tasks (project_id) -> projects",
        ]
        task, project = s.collections["Task"], s.collections["Project"]
        p, _ = await s.create(project, {"name": "p"}, account=None, actor=None)
        await s.update(task, rows[0]["id"], {"project_id": p["id"]}, expected_version=None, guard=s_all(), actor=None)
        row = await s.get(task, rows[0]["id"])
        assert row is not None and (row["title"], row["project_id"]) == ("a2", p["id"])
        assert [e.record.get("project_id") for e in await s.read_events(0) if e.collection == "Task"][:3] == [None] * 3
        async with s.engine.connect() as conn:  # a real foreign key, reflected from the database
            keys = await conn.run_sync(lambda c: sa.inspect(c).get_foreign_keys("tasks"))
        assert [(k["constrained_columns"], k["referred_table"]) for k in keys] == [(["project_id"], "projects")]
        assert (await s.migrator.plan()).empty
    finally:
        await s.close()


def s_all() -> Any:
    from tidings.filters import MATCH_ALL

    return MATCH_ALL


def test_a_destructive_change_is_refused_without_a_file_and_applied_with_one(
    tmp_path: Path, db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def prepare() -> str:
        s = await started(tmp_path, db, V1)
        record, _ = await s.create(s.collections["Task"], {"title": "a", "legacy": "x"}, account=None, actor=None)
        await s.close()
        return str(record["id"])

    record_id = asyncio.run(prepare())
    declare(tmp_path, V3)
    code, out, _ = cli(tmp_path, db, "plan", capsys=capsys)
    assert code == 0
    assert "! drop column tasks.legacy: no field declares it (needs a migration file; the server cannot start" in out
    assert "+ add column tasks.notes (TEXT, null in existing rows)" in out

    # auto (and apply) refuse, and leave everything as it was: the additive changes too (one transaction).
    with pytest.raises(SchemaRefused, match=r"drop column tasks\.legacy: no field declares it needs a migration file"):
        asyncio.run(started(tmp_path, db, V3))
    code, _, err = cli(tmp_path, db, "apply", capsys=capsys)
    assert code == 2 and err.startswith("tidings: --migrate auto: drop column tasks.legacy") and err.count("\n") == 1

    async def columns() -> set[str]:
        engine = sa.ext.asyncio.create_async_engine(Store(db, []).url)
        async with engine.connect() as conn:
            found = await conn.run_sync(lambda c: {col["name"] for col in sa.inspect(c).get_columns("tasks")})
        await engine.dispose()
        return found

    assert "legacy" in asyncio.run(columns()) and "notes" not in asyncio.run(columns())

    code, out, _ = cli(tmp_path, db, "new", "drop legacy", capsys=capsys)
    assert code == 0
    [path] = (tmp_path / "migrations").glob("*_drop_legacy.py")
    assert f"Wrote {path}" in out
    text = path.read_text()
    assert "batch_op.drop_column('legacy')" in text and "def upgrade() -> None:" in text

    code, out, _ = cli(tmp_path, db, "apply", capsys=capsys)
    assert code == 0, out
    assert f"+ ran migration file {path}" in out and "+ add column tasks.notes (TEXT, null in existing rows)" in out
    assert {"title", "notes", "status", "deleted_at"} <= asyncio.run(columns()) and "legacy" not in asyncio.run(
        columns()
    )

    async def after() -> None:
        s = await started(tmp_path, db, V3, Mode.CHECK)  # the file ran once: nothing differs now
        try:
            row = await s.get(s.collections["Task"], record_id)
            assert row is not None and (row["title"], row["status"]) == ("a", "open") and "legacy" not in row
            [event] = await s.read_events(0)
            assert "legacy" not in event.record and event.changed_fields == ("title",)
        finally:
            await s.close()

    asyncio.run(after())


async def test_check_refuses_any_difference_and_a_new_database_is_created(tmp_path: Path, db: str) -> None:
    s = await started(tmp_path, db, V1, Mode.CHECK)  # nothing to differ from: created
    assert s.migrated == ["create the 3 tables of a new database"]
    await s.close()
    with pytest.raises(SchemaRefused) as refused:
        await started(tmp_path, db, V2, Mode.CHECK)
    assert str(refused.value) == (
        "--migrate check: the database differs from the declared collections: add column tasks.status (TEXT, 'open' "
        "in existing rows) (and 3 more: `tidings migrate plan` lists them); run `tidings migrate apply` (or serve "
        "with --migrate auto)"
    )
    s = await started(tmp_path, db, V2, Mode.OFF)  # off: compares nothing
    assert s.migrated == []
    await s.close()


def test_two_processes_starting_at_once_migrate_once(tmp_path: Path, db: str) -> None:
    async def prepare() -> None:
        await (await started(tmp_path, db, V1)).close()

    asyncio.run(prepare())
    declare(tmp_path, V2)
    command = [sys.executable, "-m", "tidings.cli", "migrate", "apply", "--db", db]
    command += ["--collections", str(tmp_path / "collections.toml")]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    applied = [out for out, _ in outputs if "+ add column tasks.status" in out]
    assert len(applied) == 1, outputs
    assert sum("Nothing to do" in out for out, _ in outputs) == 1, outputs


# -- over the wire: subscribers across a change ------------------------------------------------

EVENTS = "subscription($after: String) { taskEvents(after: $after) { seq operation record { title %s } } }"
SYSTEM = "subscription { systemEvents { kind message } }"
CREATE = 'mutation($t: String!) { createTask(input: {title: $t, legacy: "l"}) { id } }'


@pytest.fixture(params=DATABASES)
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A database and a broker both servers share: SQLite with Redis, PostgreSQL with its NOTIFY."""
    db = asyncio.run(fresh_database(request.param, tmp_path))
    broker = service_url("TIDINGS_TEST_REDIS_URL", "Redis") if request.param == "sqlite" else "postgres"
    yield db, broker


async def test_a_subscriber_from_before_the_change_hears_of_it_and_resumes_after_it_with_nothing_lost(
    tmp_path: Path, deployment: tuple[str, str]
) -> None:
    db, broker = deployment
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    old = make_server(
        tmp_path / "v1",
        collections=load_toml(declare(tmp_path / "v1", V1)),
        db=db,
        broker=broker_from_url(broker, db=db),
    )
    new: Server | None = None
    try:
        ws = await WS.open(old.ws_url)
        await ws.init()
        await ws.subscribe("sys", SYSTEM)
        await ws.subscribe("ev", EVENTS % "", {"after": None})
        await until(lambda: old.tidings.dispatcher.subscriber_count == 1)
        async with httpx.AsyncClient(base_url=old.url, timeout=10) as http:
            assert "errors" not in await gql_post(http, CREATE, {"t": "before"})
        first = (await ws.recv())["payload"]["data"]["taskEvents"]
        assert first["record"] == {"title": "before"}

        # A new deployment starts on the same database with a field and soft delete added: it migrates.
        new = make_server(
            tmp_path / "v2",
            collections=load_toml(declare(tmp_path / "v2", V2)),
            db=db,
            broker=broker_from_url(broker, db=db),
        )
        assert new.tidings.store.migrated[:2] == [
            "add column tasks.status (TEXT, 'open' in existing rows)",
            "add column tasks.notes (TEXT, null in existing rows)",
        ]
        updated = await ws.recv()
        assert (updated["id"], updated["payload"]["data"]["systemEvents"]) == (
            "sys",
            {"kind": "SCHEMA_UPDATED", "message": "Schema changed: refresh your client"},
        )
        async with httpx.AsyncClient(base_url=new.url, timeout=10) as http:
            assert "errors" not in await gql_post(http, CREATE, {"t": "after"})
            rows = await gql_post(http, "{ tasks(orderBy: {createdAt: ASC}) { title status notes } }")
        assert rows["data"]["tasks"] == [
            {"title": "before", "status": "open", "notes": None},
            {"title": "after", "status": "open", "notes": None},
        ]
        await ws.close()

        # The client refreshes: resumes on the new deployment from its last seq, the new fields selected.
        ws = await WS.open(new.ws_url)
        await ws.init()
        await ws.subscribe("resume", EVENTS % "status notes", {"after": str(first["seq"])})
        await ws.subscribe("all", EVENTS % "status notes", {"after": "0"})
        got: dict[str, list[Any]] = {"resume": [], "all": []}
        while len(got["resume"]) < 1 or len(got["all"]) < 2:
            message = await ws.recv()
            got[message["id"]].append(message["payload"]["data"]["taskEvents"]["record"])
        assert got == {
            "resume": [{"title": "after", "status": "open", "notes": None}],
            "all": [
                {"title": "before", "status": "open", "notes": None},  # an old event, as declared now
                {"title": "after", "status": "open", "notes": None},
            ],
        }
        assert await ws.no_message(0.2)
        await ws.close()
    finally:
        old.stop()
        if new is not None:
            new.stop()


async def test_a_subscription_selecting_a_removed_field_ends_with_a_validation_error(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'app.db'}"
    await (await started(tmp_path, db, V1)).close()
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "0001_drop_legacy.py").write_text(
        "from alembic import op\n\n\ndef upgrade():\n"
        "    with op.batch_alter_table('tasks') as batch_op:\n        batch_op.drop_column('legacy')\n"
    )
    server = make_server(
        tmp_path, collections=load_toml(declare(tmp_path, V3)), db=db, migrations=str(tmp_path / "migrations")
    )
    try:
        ws = await WS.open(server.ws_url)
        await ws.init()
        await ws.subscribe("1", EVENTS % "legacy", {"after": "0"})
        message = await ws.recv()
        assert message["type"] == "error"
        [error] = message["payload"]
        assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert "legacy" in error["message"]
        await ws.close()
    finally:
        server.stop()


async def test_a_newcomer_adds_a_field_restarts_scripts_serve_and_uses_it_with_old_rows_intact(
    tmp_path: Path,
) -> None:
    """README "Changing collections": edit collections.toml, restart `bash scripts/serve`, use the field."""
    root = Path(__file__).resolve().parent.parent
    toml = declare(tmp_path, '[collections.Note.fields]\ntext = "String!"\n')
    db = f"sqlite:///{tmp_path / 'app.db'}"

    async def serve() -> tuple[Any, str, list[str]]:
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            "bash", str(root / "scripts" / "serve"), "--collections", toml, "--db", db, "--port", str(port),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert proc.stderr is not None
        lines = []
        async with asyncio.timeout(30):
            while not (line := (await proc.stderr.readline()).decode()).startswith("INFO:     Uvicorn running on"):
                assert line, f"scripts/serve exited: {lines}"
                lines.append(line)
        return proc, f"http://127.0.0.1:{port}", lines

    proc, url, _ = await serve()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            created = await gql_post(http, 'mutation { createNote(input: {text: "old"}) { id } }')
            assert "errors" not in created, created
    finally:
        await stop_serve(proc)
    Path(toml).write_text(
        '[collections.Note.fields]\ntext = "String!"\npinned = { type = "Boolean!", default = false }\n'
    )
    proc, url, lines = await serve()
    assert any(
        line.endswith("INFO tidings.migrate: Migrated: add column notes.pinned (BOOLEAN, False in existing rows)\n")
        for line in lines
    ), lines
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            made = await gql_post(http, 'mutation { createNote(input: {text: "new", pinned: true}) { id } }')
            assert "errors" not in made, made
            notes = await gql_post(http, "{ notes(orderBy: {createdAt: ASC}) { text pinned } }")
        assert notes["data"]["notes"] == [{"text": "old", "pinned": False}, {"text": "new", "pinned": True}]
    finally:
        await stop_serve(proc)


async def test_serve_check_refuses_a_difference_with_one_line(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'app.db'}"
    await (await started(tmp_path, db, V1)).close()
    declare(tmp_path, V2)
    proc = await spawn_serve(
        free_port(), "--db", db, "--collections", str(tmp_path / "collections.toml"), "--migrate", "check",
        cwd=tmp_path, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert err.decode().splitlines() == [
        "tidings: --migrate check: the database differs from the declared collections: add column tasks.status "
        "(TEXT, 'open' in existing rows) (and 3 more: `tidings migrate plan` lists them); run `tidings migrate "
        "apply` (or serve with --migrate auto)"
    ]
