"""``tidings serve`` at startup: what it says before it listens, and one clear line when it cannot start."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import enum
import importlib.metadata
import io
import math
import re
import signal
import socket
import subprocess
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.processes import TIDINGS, RedisProcess, serve_command, spawn_serve, stop_serve
from tests.support.servers import Server, free_port
from tidings import JSON, Rules, collection
from tidings.app import create_app
from tidings.auth.tokens import Authenticator
from tidings.config import Settings
from tidings.errors import ConfigurationError
from tidings.model.collection import collections_from
from tidings.model.toml import load_toml
from tidings.startup import check_settings, describe, mask_url
from tidings.transports.origins import OriginPolicy

pytestmark = pytest.mark.timeout(60)

SECRET = "startup-test-secret-of-at-least-32-bytes"
BANNER_START = "tidings "  # the banner's first line: "tidings <version>"


class Level(enum.Enum):
    LOW = "low"
    HIGH = "high"


@collection
class Declared:
    title: str
    level: Level = "high"  # type: ignore[assignment]
    weight: float = 1
    due: dt.datetime | None = dt.datetime(2030, 1, 2)
    tags: JSON | None = {"a": [1, 2.5, None]}


def serve(tmp_path: Path, *args: str, db: str | None = None) -> subprocess.CompletedProcess[str]:
    """``tidings serve`` expected to give up at startup: its exit status and output."""
    command = serve_command(free_port(), "--db", db or f"sqlite:///{tmp_path / 'x.db'}", *args)
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def assert_refused(result: subprocess.CompletedProcess[str], status: int, *words: str) -> str:
    """Exit ``status``, one ``tidings:`` line on stderr holding ``words``, nothing else said."""
    output = result.stdout + result.stderr
    assert result.returncode == status, output
    lines = [line for line in result.stderr.splitlines() if line.startswith("tidings:")]
    assert len(lines) == 1, output
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in output
    assert not result.stdout.startswith(BANNER_START), output  # no banner
    assert "Uvicorn running" not in output and "Started server process" not in output
    return lines[0]


def closed_port() -> int:
    return free_port()  # bound and closed at once: nothing listens there


# -- settings that are wrong: exit 2 ------------------------------------------


def test_sqlite_file_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    result = serve(tmp_path, db=f"sqlite:///{tmp_path / 'nowhere' / 'x.db'}")
    assert_refused(result, 2, "--db", f"directory {tmp_path / 'nowhere'} does not exist")


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a database\n" * 100)
    result = serve(tmp_path, db=f"sqlite:///{tmp_path / 'notes.txt'}")
    assert_refused(result, 2, "--db", str(tmp_path / "notes.txt"), "file is not a database")


def test_an_unsupported_database_scheme_is_refused(tmp_path: Path) -> None:
    result = serve(tmp_path, db="mysql://app:hunter2@127.0.0.1/app")
    line = assert_refused(result, 2, "--db mysql://app:***@127.0.0.1/app", "unsupported URL scheme 'mysql'")
    assert "hunter2" not in line


def test_an_unsupported_broker_scheme_is_refused(tmp_path: Path) -> None:
    assert_refused(serve(tmp_path, "--broker", "kafka://127.0.0.1"), 2, "--broker", "unsupported URL scheme 'kafka'")


def test_an_unknown_log_level_is_refused(tmp_path: Path) -> None:
    assert_refused(serve(tmp_path, "--log-level", "loud"), 2, "--log-level 'loud'", "unknown level")


def test_a_garbage_public_key_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n")
    assert_refused(serve(tmp_path, "--jwt-public-key", str(key)), 2, f"--jwt-public-key {key}", "not a PEM public key")


def test_a_jwt_secret_shorter_than_the_hash_is_refused(tmp_path: Path) -> None:
    line = assert_refused(serve(tmp_path, "--jwt-secret", "s3cret-but-short"), 2, "--jwt-secret", "16 bytes")
    assert "at least 32" in line and "s3cret" not in line


def test_tidings_token_refuses_a_short_secret_too(tmp_path: Path) -> None:
    command = [TIDINGS, "token", "--sub", "ann", "--jwt-secret", "short"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert_refused(result, 2, "--jwt-secret", "5 bytes")


def test_a_misspelt_key_in_collections_toml_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "collections.toml"
    toml.write_text('[collections.Task.fields]\ntitle = "String!"\npriority = { type = "Int", defualt = 0 }\n')
    result = serve(tmp_path, "--collections", str(toml))
    assert_refused(result, 2, str(toml), "Task.priority", "'defualt'", "did you mean 'default'?")


def test_a_misspelt_collection_key_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('[collections.Task]\nplurl = "tasks"\n[collections.Task.fields]\ntitle = "String!"\n')
    with pytest.raises(ConfigurationError, match=r"collection Task: unknown key 'plurl'; did you mean 'plural'\?"):
        load_toml(toml)


# -- declarations and numbers checked when loaded: exit 2 ------------------------


def export_schema(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [TIDINGS, "export-schema", *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def write_toml(tmp_path: Path, *lines: str) -> Path:
    toml = tmp_path / "collections.toml"
    toml.write_text("\n".join(["[collections.Task.fields]", 'title = "String!"', *lines, ""]))
    return toml


def test_a_default_not_of_its_fields_type_is_refused_not_stored(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, 'priority = { type = "Int", default = "x" }')
    result = serve(tmp_path, "--collections", str(toml))
    line = assert_refused(result, 2, f"{toml}: Task.priority: default: expected an Int", "got 'x' (str)")
    assert line.startswith("tidings: ")


def test_an_enum_default_outside_its_values_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, 'level = { type = "Enum", values = ["LOW", "HIGH"], default = "MID" }')
    for result in (serve(tmp_path, "--collections", str(toml)), export_schema(tmp_path, "--collections", str(toml))):
        assert_refused(result, 2, "Task.level: default: expected one of TaskLevel's values 'LOW', 'HIGH', got 'MID'")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ('{ type = "Int", default = 2147483648 }', "got 2147483648 (int)"),  # GraphQL's Int is 32-bit
        ('{ type = "Int", default = 1.5 }', "got 1.5 (float)"),
        ('{ type = "Float", default = nan }', "expected a Float (a finite number), got nan"),
        ('{ type = "Float", default = true }', "got True (bool)"),
        ('{ type = "Boolean", default = "yes" }', "expected a Boolean"),
        ('{ type = "String", default = 5 }', "expected a String"),
        ('{ type = "DateTime", default = 2030-01-02 }', "got datetime.date(2030, 1, 2) (date)"),
        ('{ type = "JSON", default = { at = 2030-01-02T00:00:00Z } }', "expected a JSON value"),
    ],
)
def test_each_kind_refuses_a_default_it_cannot_carry(tmp_path: Path, spec: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(words)) as refused:
        load_toml(write_toml(tmp_path, f"x = {spec}"))
    assert "Task.x: default: expected " in refused.value.message


def test_defaults_of_their_fields_type_are_kept_as_stored() -> None:
    toml_free = collections_from([Declared])[0].field_map
    assert toml_free["level"].default is Level.HIGH  # given by value
    assert toml_free["weight"].default == 1.0 and isinstance(toml_free["weight"].default, float)
    assert toml_free["due"].default == dt.datetime(2030, 1, 2, tzinfo=dt.UTC)  # naive: UTC, as stored
    assert toml_free["tags"].default == {"a": [1, 2.5, None]}


def test_a_python_declaration_is_checked_as_a_toml_one() -> None:
    with pytest.raises(
        ConfigurationError, match=r"^Bad\.level: default: expected one of Level's values 'low', 'high', got 'mid'$"
    ):

        @collection
        class Bad:
            level: Level = "mid"  # type: ignore[assignment]

    with pytest.raises(ConfigurationError, match=r"^Bad\.status: default: expected a String \(text\), got None"):

        @collection
        class Bad:  # type: ignore[no-redef]
            status: str = None  # type: ignore[assignment]


def test_export_schema_refuses_the_rule_serve_refuses(tmp_path: Path) -> None:
    toml = write_toml(tmp_path, "[collections.Task.rules]", 'read = "rol:admin"')
    words = (
        "Task: read rule: expected public, authenticated, owner:<field>, role:<a,b> or a where mapping, got 'rol:admin'"
    )
    served = assert_refused(serve(tmp_path, "--collections", str(toml)), 2, words)
    exported = assert_refused(export_schema(tmp_path, "--collections", str(toml)), 2, words)
    assert served == exported


@pytest.mark.parametrize(
    ("rules", "words"),
    [
        (
            {"update": "owner:nobody"},
            "Bad: update rule 'owner:nobody': expected owner:<one of title>, got unknown field",
        ),
        ({"delete": "role:,"}, "Bad: delete rule: expected public"),
        ({"read": {"title": {"eqq": "x"}}}, "Bad: read rule: "),
        (
            {"create": 5},
            "Bad: create rule: expected public, authenticated, owner:<field>, role:<a,b> or a where mapping, got 5",
        ),
    ],
)
def test_a_python_collections_rules_are_checked_where_declared(rules: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(words)):

        @collection(rules=Rules(**rules))
        class Bad:
            title: str


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        (
            "--allowed-origins",
            "not-an-origin",
            "expected scheme://host[:port], scheme://host:* or *, got 'not-an-origin'",
        ),
        ("--max-limit", "0", "expected at least 1, got 0"),
        ("--retention-seconds", "-5", "expected at least 0, got -5"),
    ],
)
def test_a_setting_out_of_range_is_refused(tmp_path: Path, flag: str, value: str, words: str) -> None:
    assert_refused(serve(tmp_path, f"{flag}={value}"), 2, f"{flag}: {words}")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"port": 70000}, "--port: expected from 1 to 65535, got 70000"),
        ({"keepalive": math.nan}, "--keepalive: expected a finite number, at least 0, got nan"),
        ({"prune_interval": 0.0}, "--prune-interval: expected more than 0, got 0"),
        ({"queue_bytes": 100}, "--queue-bytes: expected at least 1024, got 100"),
        ({"rate_events_burst": 0}, "--rate-events-burst: expected at least 1, got 0"),
    ],
)
def test_numbers_are_checked_against_their_range(setting: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=f"^{re.escape(message)}$"):
        check_settings(Settings(**setting))


@pytest.mark.parametrize(
    ("origins", "why"),
    [
        ("https://app.example/app", "an origin has no path, query or fragment"),
        ("http://localhost:5173, localhost:3000", "no scheme://"),
        ("https://*.example.com", "'*.example.com' is not a host name; '*' stands only for the port"),
        ("https://app.example:99999", "Port out of range"),
        ("https://user@app.example", "an origin has no user name"),
    ],
)
def test_an_origin_list_names_the_entry_that_is_no_origin(origins: str, why: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^--cors-origins: expected scheme://host\[:port\], ") as refused:
        OriginPolicy.parse(origins, auth_enabled=True, setting="--cors-origins")
    assert why in refused.value.message
    for fine in ("*", "https://app.example/", "http://127.0.0.1:*", "http://[::1]:3000", "capacitor://localhost"):
        assert OriginPolicy.parse(fine, auth_enabled=True).entries == (fine.rstrip("/"),)


def test_a_setting_from_the_environment_is_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIDINGS_MAX_LIMIT", "0")
    assert_refused(serve(tmp_path), 2, "--max-limit: expected at least 1, got 0")


def test_every_numeric_setting_has_a_minimum_its_help_states() -> None:
    from tidings.cli import main

    numeric = [f for f in dataclasses.fields(Settings) if str(f.type).startswith(("int", "float"))]
    assert len(numeric) > 40
    assert [f.name for f in numeric if f.metadata["bound"] is None] == []
    assert [f.name for f in numeric if not f.metadata["bound"].admits(f.default)] == []  # the defaults pass
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert re.search(r"TIDINGS_MAX_LIMIT;\s+default\s+1000;\s+at\s+least\s+1\)", out.getvalue())


# -- what a setting names is unavailable: exit 1 --------------------------------


def test_refused_postgresql_is_one_line_without_the_password(tmp_path: Path) -> None:
    result = serve(tmp_path, db=f"postgresql://u:secret@127.0.0.1:{closed_port()}/x")
    line = assert_refused(result, 1, "--db postgresql://u:***@127.0.0.1:", "connection refused")
    assert "secret" not in result.stdout + result.stderr, line


def test_refused_redis_is_one_line(tmp_path: Path) -> None:
    port = closed_port()
    result = serve(tmp_path, "--broker", f"redis://:hunter22@127.0.0.1:{port}/0")
    assert_refused(result, 1, f"--broker redis://:***@127.0.0.1:{port}/0", "connection refused")
    assert "hunter22" not in result.stdout + result.stderr


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = serve_command(port, "--db", f"sqlite:///{tmp_path / 'x.db'}")
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert_refused(result, 1, f"--port {port}", "already in use")


# -- starting -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, *args: str, stderr: list[str] | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str], str]]:
    """A ``tidings serve`` that started: the process, its stdout lines, its URL.

    ``stderr`` collects what the server wrote there before uvicorn said it listens.
    """
    port = free_port()
    proc = await spawn_serve(port, "--db", "sqlite:///app.db", *args, cwd=tmp_path, stdout=PIPE, stderr=PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    stdout: list[str] = []
    try:
        async with asyncio.timeout(20):
            while not (line := (await proc.stderr.readline()).decode()).startswith("INFO:     Uvicorn running on"):
                assert line, "tidings serve exited before it listened"
                if stderr is not None:
                    stderr.append(line.rstrip("\n"))
            # The banner was flushed before uvicorn started: it is all in the pipe by now.
            while len(stdout) < 7:
                stdout.append((await proc.stdout.readline()).decode().rstrip("\n"))
        yield proc, stdout, f"http://127.0.0.1:{port}"
    finally:
        await stop_serve(proc)


async def test_the_banner_says_what_serves_before_listening(tmp_path: Path) -> None:
    args = ("--jwt-secret", SECRET, "--jwt-issuer", "acme", "--cors-origins", "http://localhost:5173")
    async with running(tmp_path, *args) as (proc, banner, url):
        version = importlib.metadata.version("tidings")
        assert banner == [
            f"tidings {version}",
            f"  database:    sqlite:///app.db (file {tmp_path / 'app.db'})",
            "  broker:      memory:// (this process only)",
            "  collections: Task, Message, Room, ChatMessage (the demo)",
            f"  auth:        HS256 tokens required (--jwt-secret, {len(SECRET)} bytes), issuer 'acme'",
            banner[5],  # worded by the origin policies (tidings/transports/origins.py)
            f"  GraphQL and the playground at {url}/graphql",
        ]
        assert banner[5].startswith("  origins:     ") and "http://localhost:5173" in banner[5]
        assert SECRET not in "\n".join(banner)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.get("/healthz")).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0


async def test_serving_with_the_redis_broker_writes_nothing_but_uvicorns_lines(
    tmp_path: Path, redis_server: RedisProcess
) -> None:
    # redis-py 8 warns (UserWarning, two lines) when the asyncio client gets the synchronous Retry.
    stderr: list[str] = []
    async with running(tmp_path, "--broker", redis_server.url, "--jwt-secret", SECRET, stderr=stderr) as (
        _,
        banner,
        url,
    ):
        assert banner[2] == f"  broker:      {redis_server.url}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            assert (await client.get("/readyz")).status_code == 200
    assert stderr, "uvicorn's startup lines were not read"
    # Only log records at INFO: uvicorn's and tidings' own (no warning, no traceback, nothing unlogged).
    info = re.compile(r"INFO:     |\d{4}-\d\d-\d\d [\d:,]+ INFO tidings(\.migrate)?: ")
    assert [line for line in stderr if not info.match(line)] == [], stderr


def test_describe_names_the_public_key_and_masks_passwords(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "key.pem").write_bytes(pem)
    settings = Settings(
        db="postgresql://app:pg-pass@db.internal/app",
        broker="redis://:redis-pass@cache.internal:6379/0",
        jwt_public_key=str(tmp_path / "key.pem"),
        jwt_audience="api",
    )
    lines = describe(create_app(None, settings))
    text = "\n".join(lines)
    assert "pg-pass" not in text and "redis-pass" not in text
    assert "  database:    postgresql://app:***@db.internal/app" in lines
    assert "  broker:      redis://:***@cache.internal:6379/0" in lines
    assert f"  auth:        RS256 tokens required (--jwt-public-key {tmp_path / 'key.pem'}), audience 'api'" in lines
    demo = describe(create_app(None, Settings(db=f"sqlite:///{tmp_path / 'demo.db'}")))
    assert demo[4].startswith("  auth:        none: demo mode")
    assert demo[5].startswith("  origins:     ") and "http://localhost:*" in demo[5]
    # The key parsed at startup still verifies what its private half signs.
    auth = Authenticator(public_key=str(tmp_path / "key.pem"))
    token = jwt.encode({"sub": "ann", "exp": 2**31}, private, algorithm="RS256")
    assert auth.verify(token).sub == "ann"


def test_mask_url_keeps_what_is_not_a_secret() -> None:
    assert mask_url("sqlite:////var/lib/app.db") == "sqlite:////var/lib/app.db"
    assert mask_url("postgresql://u@h/x") == "postgresql://u@h/x"
    assert mask_url("rediss://user:p%40ss@h:6380/1") == "rediss://user:***@h:6380/1"
    assert (
        mask_url("postgresql://u@h/x?password=pw&sslmode=require") == "postgresql://u@h/x?password=***&sslmode=require"
    )


def test_version_is_the_installed_distributions() -> None:
    result = subprocess.run([TIDINGS, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"tidings {importlib.metadata.version('tidings')}\n"


async def test_the_root_redirects_to_the_playground(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.get("/", headers={"accept": "text/html"})
        assert (response.status_code, response.headers["location"]) == (302, "/graphql")
        page = await client.get("/", headers={"accept": "text/html"}, follow_redirects=True)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
