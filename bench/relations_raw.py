"""The floor for bench/relations.py: Starlette running the nested read's joins by hand on the
same SQLite file (pysqlite on a thread, as tidings reads), answered with orjson.

POST /nested: 50 tasks, each with its project, each project with its 10 latest tasks (and their
project's name): three SELECTs, the ones tidings runs, assembled into the same JSON.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

DB = os.environ.get("BENCH_DB", "bench-relations.db")
_local = threading.local()


def _conn() -> sqlite3.Connection:
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = sqlite3.connect(DB, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.row_factory = sqlite3.Row
    return conn


def _nested(limit: int) -> bytes:
    conn = _conn()
    conn.execute("BEGIN")
    try:
        tasks = conn.execute("SELECT id, title, project_id FROM tasks ORDER BY id LIMIT ?", (limit,)).fetchall()
        ids = sorted({t["project_id"] for t in tasks if t["project_id"]})
        marks = ",".join("?" * len(ids))
        projects = {r["id"]: r for r in conn.execute(f"SELECT id, name FROM projects WHERE id IN ({marks})", ids)}
        latest: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        rows = conn.execute(
            "SELECT id, title, project_id FROM (SELECT id, title, project_id, ROW_NUMBER() OVER "
            "(PARTITION BY project_id ORDER BY created_at DESC, id) AS n FROM tasks "
            f"WHERE project_id IN ({marks})) WHERE n <= 10 ORDER BY project_id, n",
            ids,
        )
        for r in rows:
            latest[r["project_id"]].append(
                {"title": r["title"], "project": {"name": projects[r["project_id"]]["name"]}}
            )
    finally:
        conn.execute("COMMIT")
    out = []
    for t in tasks:
        p = projects.get(t["project_id"])
        project = None if p is None else {"name": p["name"], "tasks": latest[p["id"]]}
        out.append({"title": t["title"], "project": project})
    return orjson.dumps({"data": {"tasks": out}})


async def nested(request: Request) -> Response:
    body = orjson.loads(await request.body())
    limit = int(body.get("variables", {}).get("n", 50))
    return Response(await asyncio.to_thread(_nested, limit), media_type="application/json")


app = Starlette(routes=[Route("/graphql", nested, methods=["POST"])])
