"""One request, one snapshot: concurrently resolving root fields share one connection, always closed."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.backends import fresh_database
from tests.support.servers import Server, gql_post, make_server, until

ALIASES = 10
REQUESTS = 20
NEWEST = "a{i}: tasks(orderBy: [{{priority: DESC}}], limit: 1) {{ priority }}"
QUERY = "{ " + " ".join(NEWEST.format(i=i) for i in range(ALIASES)) + " }"
CREATE = "mutation($p: Int!) { createTask(input: {title: 'x', priority: $p}) { id } }".replace("'", '"')


def checked_out(server: Server) -> int:
    pool: Any = server.tidings.store.read_pool
    return int(pool.checkedout())


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_aliased_root_fields_read_one_snapshot_on_one_connection(tmp_path: Path, kind: str) -> None:
    server = make_server(tmp_path, db=await fresh_database(kind, tmp_path))
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            # One writer, one task per event: the newest priority of a snapshot is its seq.
            written = 0

            async def write(n: int) -> None:
                nonlocal written
                for _ in range(n):
                    result = await gql_post(http, CREATE, {"p": written + 1})
                    assert "errors" not in result, result
                    written += 1

            await write(3)
            await until(lambda: checked_out(server) == 0)
            writer = asyncio.create_task(write(30))
            results = await asyncio.wait_for(asyncio.gather(*(gql_post(http, QUERY) for _ in range(REQUESTS))), 20)
            await asyncio.wait_for(writer, 20)
            for result in results:
                assert "errors" not in result, result
                seen = {result["data"][f"a{i}"][0]["priority"] for i in range(ALIASES)}
                assert seen == {int(result["extensions"]["seq"])}, result
            await until(lambda: checked_out(server) == 0)
    finally:
        server.stop()


async def test_a_database_fault_reading_the_snapshot_is_masked_and_releases_the_connection(tmp_path: Path) -> None:
    server = make_server(tmp_path, gap_check_interval=60.0)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert "errors" not in await gql_post(http, CREATE, {"p": 1})
            # Reading the snapshot's event-log position fails (on SQLite it is read as the snapshot opens).
            with sqlite3.connect(tmp_path / "test.db") as db:
                db.execute("ALTER TABLE tidings_events RENAME TO moved_away")
            try:
                result = await gql_post(http, "{ tasks { priority } }")
            finally:
                with sqlite3.connect(tmp_path / "test.db") as db:
                    db.execute("ALTER TABLE moved_away RENAME TO tidings_events")
            assert result["data"] is None, result
            assert [(e["message"], e["extensions"]) for e in result["errors"]] == [
                ("Internal server error", {"code": "INTERNAL_SERVER_ERROR"})
            ], result
            assert "tidings_events" not in str(result)
            await until(lambda: checked_out(server) == 0)
    finally:
        server.stop()
    # The fault is an incident, logged with its traceback: expected here, and nothing else
    # (the autouse no_server_errors fixture's collector is told so).
    collectors = [h for h in logging.getLogger("tidings").handlers if type(h).__name__ == "_ErrorLogs"]
    assert len(collectors) == 1
    records: list[logging.LogRecord] = collectors[0].records  # type: ignore[attr-defined]
    assert {r.getMessage() for r in records} == {"Unexpected error in a resolver"}
    records.clear()


async def test_a_fault_as_the_snapshot_closes_is_masked_and_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the position is read as the snapshot closes, after the resolvers: a fault
    there is an answer without data, masked, logged, and the connection still goes back."""
    from tidings.resolvers.context import Context

    original = Context.close

    async def failing_close(self: Context) -> None:
        await original(self)
        raise RuntimeError("could not read tidings_events")

    server = make_server(tmp_path, gap_check_interval=60.0)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert "errors" not in await gql_post(http, CREATE, {"p": 1})
            monkeypatch.setattr(Context, "close", failing_close)
            result = await gql_post(http, "{ tasks { priority } }")
            monkeypatch.setattr(Context, "close", original)
            assert result["data"] is None, result
            assert result["errors"] == [
                {"message": "Internal server error", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}
            ], result
            await until(lambda: checked_out(server) == 0)
    finally:
        server.stop()
    collectors = [h for h in logging.getLogger("tidings").handlers if type(h).__name__ == "_ErrorLogs"]
    records: list[logging.LogRecord] = collectors[0].records  # type: ignore[attr-defined]
    assert {r.getMessage() for r in records} == {"Unexpected error in a resolver"}
    records.clear()
