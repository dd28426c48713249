"""README.md's snippets, run as written (only the address changed to the test server's).

The SSE curl line, registering the custom scalars for gql, and an ariadne-codegen typed
client generated from `tidings export-schema` and used for a query, a mutation and a
subscription. (The JavaScript snippets live in tests/interop/ and are checked there.)
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import datetime as dt
import inspect
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.backends import unavailable
from tests.conftest import Server, wait_subscribers
from tests.processes import TIDINGS

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
CODEGEN = ROOT / ".venv-codegen" / "bin" / "ariadne-codegen"
DEMO_ADDRESS = "127.0.0.1:8000"


def readme_blocks(section: str, lang: str) -> list[str]:
    """The fenced ``lang`` blocks of one README section (its ## heading), as written."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end != -1 else len(text)]
    return [m.group(1) for m in re.finditer(rf"^```{lang}\n(.*?)^```$", body, re.M | re.S)]


def the_block(section: str, lang: str, containing: str) -> str:
    blocks = [b for b in readme_blocks(section, lang) if containing in b]
    assert len(blocks) == 1, f"README {section!r}: {len(blocks)} {lang} blocks containing {containing!r}"
    return blocks[0]


def at(server: Server, snippet: str) -> str:
    assert DEMO_ADDRESS in snippet
    return snippet.replace(DEMO_ADDRESS, server.url.removeprefix("http://"))


async def run_snippet(source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """Run a README Python block as the asyncio REPL would (top-level await allowed)."""
    code = compile(source, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        await asyncio.wait_for(result, 10)
    return namespace


def export_schema(directory: Path) -> None:
    sdl = subprocess.run([TIDINGS, "export-schema"], capture_output=True, check=True, timeout=30).stdout
    (directory / "schema.graphql").write_bytes(sdl)


async def test_sse_curl_line_streams_events(server: Server, http: httpx.AsyncClient) -> None:
    command = at(server, the_block("Subscribe", "sh", "curl"))
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True
    )
    try:
        await wait_subscribers(server, 1)
        response = await http.post("/graphql", json={"query": 'mutation { createTask(input: {title: "x"}) { id } }'})
        assert response.status_code == 200 and "errors" not in response.json()
        assert proc.stdout is not None
        lines: list[str] = []
        while "data" not in "".join(lines):
            raw = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert raw, (await proc.stderr.read() if proc.stderr else b"").decode()
            if not raw.startswith(b":"):  # heartbeats
                lines.append(raw.decode())
        fields = dict(line.rstrip("\n").split(": ", 1) for line in lines if ": " in line)
        event = json.loads(fields["data"])["data"]["taskEvents"]
        assert fields["event"] == "next"
        assert event == {"cursor": f"{server.tidings.store.epoch}:1", "seq": "1", "operation": "CREATED"}
        assert fields["id"] == event["cursor"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 5)


async def test_gql_with_the_custom_scalars_registered(
    server: Server, tmp_path: Path, monkeypatch: Any, http: httpx.AsyncClient
) -> None:
    export_schema(tmp_path)
    monkeypatch.chdir(tmp_path)
    ns = await run_snippet(at(server, the_block("Subscribe", "python", "update_schema_scalars")), {})
    due = dt.datetime(2030, 1, 2, 9, 30, tzinfo=dt.UTC)
    assert ns["due"] == due and isinstance(ns["due"], dt.datetime)
    assert ns["created"]["createTask"]["tags"] == {"labels": ["a", "b"], "points": 3}
    # What the server stored: the datetime and the JSON value, not strings of them.
    task_id = ns["created"]["createTask"]["id"]
    body = (await http.post("/graphql", json={"query": f'{{ task(id: "{task_id}") {{ dueAt tags }} }}'})).json()
    assert dt.datetime.fromisoformat(body["data"]["task"]["dueAt"]) == due
    assert body["data"]["task"]["tags"] == {"labels": ["a", "b"], "points": 3}


async def test_ariadne_codegen_client_for_a_query_a_mutation_and_a_subscription(
    server: Server, tmp_path: Path, monkeypatch: Any
) -> None:
    if not CODEGEN.exists():
        unavailable("ariadne-codegen is not installed in .venv-codegen")
    export_schema(tmp_path)
    (tmp_path / "pyproject.toml").write_text(the_block("Subscribe", "toml", "ariadne-codegen"))
    (tmp_path / "queries.graphql").write_text(the_block("Subscribe", "graphql", "subscription TaskEvents"))
    generated = await asyncio.create_subprocess_exec(
        str(CODEGEN), cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(generated.communicate(), 60)
    assert generated.returncode == 0, out.decode()
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        ns = await run_snippet(at(server, the_block("Subscribe", "python", "from tasks_client import")), {})
    finally:
        for name in [m for m in sys.modules if m == "tasks_client" or m.startswith("tasks_client.")]:
            del sys.modules[name]
    due = dt.datetime(2030, 1, 2, 9, 30, tzinfo=dt.UTC)
    created = ns["created"].create_task
    assert created.due_at == due and created.tags == {"points": 3}
    [listed] = ns["open_tasks"].tasks
    assert (listed.id, listed.due_at, listed.tags) == (created.id, due, {"points": 3})
    event = ns["first"].task_events
    assert event.operation.value == "CREATED" and event.cursor == f"{server.tidings.store.epoch}:1"
    assert (event.record.id, event.record.due_at, event.record.tags) == (created.id, due, {"points": 3})
    await wait_subscribers(server, 0, exact=True)  # aclose() ended the subscription
