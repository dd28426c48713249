"""README.md's snippets, run as written (only the address changed to the test server's).

The SSE curl line, registering the custom scalars for gql, the auth example with its admin
token, and an ariadne-codegen typed client generated from `tidings export-schema` and used
for a query, a mutation and a subscription. (The JavaScript snippets live in tests/interop/
and are checked there.)
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
from pathlib import Path
from typing import Any

import httpx

from tests.support.backends import unavailable
from tests.support.processes import TIDINGS
from tests.support.servers import Server, free_port, wait_subscribers

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


async def test_the_auth_example_runs_as_written_and_its_token_is_an_admin(tmp_path: Path) -> None:
    # The block as written, `tidings` being .venv/bin/tidings (README "Run it"); the test picks
    # the port and the database through the environment, waits for the server to listen
    # before the commands that use it, then runs the Admin section's query with the token.
    port = free_port()
    lines = the_block("Auth, tenants and rules", "sh", "tidings token").replace("localhost:8000", f"localhost:{port}")
    [serve_line] = [i for i, line in enumerate(lines.splitlines()) if line.startswith("tidings serve")]
    ready = f"for _ in $(seq 200); do curl -sf localhost:{port}/healthz >/dev/null && break; sleep 0.1; done"
    [admin_query] = [q for q in readme_blocks("Operations", "graphql") if "connections {" in q]
    query = next(line for line in admin_query.splitlines() if line.startswith("query {"))
    script = [
        *lines.splitlines()[: serve_line + 1],
        ready,
        *lines.splitlines()[serve_line + 1 :],
        "echo",
        f"curl -s localhost:{port}/graphql -H \"authorization: Bearer $TOKEN\" -H 'content-type: application/json' "
        f"-d '{json.dumps({'query': query})}'",
        "echo",
        "kill $! && wait $!",
    ]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    environ |= {
        "PATH": f"{Path(TIDINGS).parent}:{os.environ['PATH']}",
        "TIDINGS_PORT": str(port),
        "TIDINGS_DB": f"sqlite:///{tmp_path / 'auth.db'}",
    }
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        "\n".join(script),
        cwd=tmp_path,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 50)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    answers = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert [answer.get("data") for answer in answers] == [{"tasks": []}, {"connections": []}], (answers, err)


# Runs a README block in .venv-codegen's Python, as a project that installed what the README
# says would, and prints what the test checks (the generated models are not JSON).
CODEGEN_DRIVER = """
import ast, asyncio, inspect, json, sys

async def main():
    namespace = {}
    code = compile(open(sys.argv[1]).read(), "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if inspect.iscoroutine(result):
        await result
    task = lambda t: [t.id, type(t.due_at).__name__, t.due_at.isoformat(), t.tags]
    event = namespace["first"].task_events
    facts = {
        "created": task(namespace["created"].create_task),
        "listed": [task(t) for t in namespace["open_tasks"].tasks],
        "event": [event.operation.value, event.cursor, *task(event.record)],
    }
    print(json.dumps(facts))

asyncio.run(main())
"""


async def test_ariadne_codegen_client_for_a_query_a_mutation_and_a_subscription(server: Server, tmp_path: Path) -> None:
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
    (tmp_path / "snippet.py").write_text(at(server, the_block("Subscribe", "python", "from tasks_client import")))
    (tmp_path / "driver.py").write_text(CODEGEN_DRIVER)
    # Not this test's Python: .venv-codegen has only what tests/codegen/pyproject.toml installs,
    # as a project following the README would (websockets for the subscription among it).
    ran = await asyncio.create_subprocess_exec(
        str(CODEGEN.with_name("python")),
        "driver.py",
        "snippet.py",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(ran.communicate(), 30)
    assert ran.returncode == 0, err.decode()
    facts = json.loads(out)
    due = dt.datetime(2030, 1, 2, 9, 30, tzinfo=dt.UTC).isoformat()
    created_id = facts["created"][0]
    assert facts["created"] == [created_id, "datetime", due, {"points": 3}]
    assert facts["listed"] == [[created_id, "datetime", due, {"points": 3}]]
    cursor = f"{server.tidings.store.epoch}:1"
    assert facts["event"] == ["CREATED", cursor, created_id, "datetime", due, {"points": 3}]
    await wait_subscribers(server, 0, exact=True)  # aclose() ended the subscription
