"""Interop: the real npm GraphQL clients against a real uvicorn-served tidings.

Each client lives in a node script under tests/interop/ (graphql-ws, graphql-sse in
distinct and single connection mode, @urql/core, @apollo/client). The script
subscribes with a filter and prints every event it receives as one JSON line; this
side makes mutations over HTTP, some of which must not match the filter, and then
asserts the exact events, in order, and that nothing else arrived (the script keeps
listening a moment after the last expected event and fails on any extra).

Needs `npm ci` in tests/interop: without node_modules these tests skip, or fail under CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backends import unavailable
from tests.conftest import Server, wait_subscribers

INTEROP = Path(__file__).parent / "interop"
CLIENTS = ["graphql-ws", "graphql-sse-distinct", "graphql-sse-single", "urql", "apollo"]
# Clients whose script also runs a follow-up query over HTTP (urql fetchExchange, apollo HttpLink).
WITH_QUERY = {"urql", "apollo"}
SCRIPT_TIMEOUT_MS = 12_000
PROCESS_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def node() -> str:
    node_bin = shutil.which("node")
    problem = None
    if node_bin is None:
        problem = "node is not installed"
    elif not (INTEROP / "node_modules").is_dir():
        problem = "tests/interop/node_modules is missing: run `npm ci` in tests/interop"
    if problem:
        unavailable(problem)
    assert node_bin is not None
    return node_bin


# -- the node side -----------------------------------------------------------


@dataclass
class NodeRun:
    proc: asyncio.subprocess.Process
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    lines: list[str] = field(default_factory=list)
    stderr: bytes = b""
    returncode: int | None = None

    @property
    def events(self) -> list[Any]:
        return [json.loads(x)["event"] for x in self.lines if x.startswith('{"event"')]

    @property
    def queries(self) -> list[Any]:
        return [json.loads(x)["query"] for x in self.lines if x.startswith('{"query"')]

    def describe(self) -> str:
        out = "\n".join(self.lines)
        return f"rc={self.returncode}\nstdout:\n{out}\nstderr:\n{self.stderr.decode(errors='replace')}"


@contextlib.asynccontextmanager
async def node_client(node: str, client: str, server: Server, count: int, kind: str) -> AsyncIterator[NodeRun]:
    """Start one interop script; on exit from the block, wait for it (bounded) and collect its output."""
    proc = await asyncio.create_subprocess_exec(
        node,
        f"{client}.mjs",
        "--url",
        server.url,
        "--count",
        str(count),
        "--kind",
        kind,
        "--timeout",
        str(SCRIPT_TIMEOUT_MS),
        "--linger",
        "300",
        cwd=INTEROP,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    run = NodeRun(proc)

    async def read_stdout() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            text = raw.decode().rstrip("\n")
            run.lines.append(text)
            if text == "READY":
                run.ready.set()

    async def read_stderr() -> None:
        assert proc.stderr is not None
        run.stderr = await proc.stderr.read()

    readers = asyncio.gather(read_stdout(), read_stderr())
    try:
        yield run
        await asyncio.wait_for(proc.wait(), PROCESS_TIMEOUT)
        await asyncio.wait_for(readers, 5)
        run.returncode = proc.returncode
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if not readers.done():
            readers.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await readers


async def wait_ready(server: Server, runs: list[NodeRun], timeout: float = 10.0) -> None:
    """Every script said READY and the server holds all their subscriptions."""
    deadline = asyncio.get_running_loop().time() + timeout
    for run in runs:
        remaining = deadline - asyncio.get_running_loop().time()
        waiter = asyncio.ensure_future(run.ready.wait())
        exited = asyncio.ensure_future(run.proc.wait())
        done, _ = await asyncio.wait(
            {waiter, exited}, timeout=max(remaining, 0.01), return_when=asyncio.FIRST_COMPLETED
        )
        waiter.cancel()
        exited.cancel()
        if waiter not in done:
            await asyncio.sleep(0.1)
            raise AssertionError(f"client never became ready: lines={run.lines!r} rc={run.proc.returncode}")
    await wait_subscribers(server, len(runs), timeout=max(deadline - asyncio.get_running_loop().time(), 0.1))


# -- the HTTP side and the expected events -------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    type: str
    fields: tuple[str, ...]  # every field of the collection, in schema order (CREATED's changedFields)
    record: tuple[str, ...]  # selected on record (besides __typename)
    previous: tuple[str, ...]  # selected on previous
    matches: Callable[[dict[str, Any]], bool]


KINDS = {
    "task": Kind(
        "task",
        "Task",
        ("title", "status", "priority", "assignedTo", "dueAt", "tags"),
        ("id", "title", "status", "priority", "version"),
        ("title", "status", "priority"),
        lambda r: r["status"] == "open",
    ),
    "message": Kind(
        "message",
        "Message",
        ("room", "author", "body"),
        ("id", "room", "author", "body", "version"),
        ("room", "author", "body"),
        lambda r: r["room"] == "r1",
    ),
}


class Board:
    """Makes mutations over HTTP and works out which events the filter must let through."""

    def __init__(self, http: httpx.AsyncClient, kind: Kind) -> None:
        self.http = http
        self.kind = kind
        self.seq = 0
        self.records: dict[str, dict[str, Any]] = {}
        self.expected: list[dict[str, Any]] = []
        self.selection = " ".join(kind.record)

    async def _mutate(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post("/graphql", json={"query": query, "variables": variables})
        body = response.json()
        assert response.status_code == 200 and "errors" not in body, body
        return dict(next(iter(body["data"].values())))

    async def create(self, **values: Any) -> str:
        t = self.kind.type
        after = await self._mutate(
            f"mutation($i: Create{t}Input!) {{ create{t}(input: $i) {{ {self.selection} }} }}", {"i": values}
        )
        self._event("CREATED", None, after, list(self.kind.fields))
        return str(after["id"])

    async def update(self, id_: str, **values: Any) -> None:
        t = self.kind.type
        before = self.records[id_]
        after = await self._mutate(
            f"mutation($id: ID!, $i: Update{t}Input!) {{ update{t}(id: $id, input: $i) {{ {self.selection} }} }}",
            {"id": id_, "i": values},
        )
        changed = [k for k, v in values.items() if before[k] != v]
        if not changed:  # a no-op update writes no event and takes no seq
            assert after == before
            return
        assert after["version"] == before["version"] + 1
        self._event("UPDATED", before, after, changed)

    async def delete(self, id_: str) -> None:
        t = self.kind.type
        last = await self._mutate(f"mutation($id: ID!) {{ delete{t}(id: $id) {{ {self.selection} }} }}", {"id": id_})
        assert last == self.records[id_]
        self._event("DELETED", last, None, [])

    def _event(
        self, operation: str, before: dict[str, Any] | None, after: dict[str, Any] | None, changed: list[str]
    ) -> None:
        self.seq += 1
        record = after if after is not None else before
        assert record is not None
        if after is None:
            del self.records[record["id"]]
        else:
            self.records[record["id"]] = after
        was = before is not None and self.kind.matches(before)
        now = after is not None and self.kind.matches(after)
        if not (was or now):
            return
        match = "STAYED" if was and now else "ENTERED" if now else "LEFT"
        previous = {f: (before[f] if before is not None and f in changed else None) for f in self.kind.previous}
        self.expected.append(
            {
                "__typename": f"{self.kind.type}Event",
                "operation": operation,
                "seq": str(self.seq),
                "id": record["id"],
                "match": match,
                "changedFields": changed,
                "actor": None,
                "previous": {"__typename": f"{self.kind.type}Previous", **previous},
                "record": {"__typename": self.kind.type, **record},
            }
        )

    async def play(self) -> list[Any]:
        """The scenario for this kind; returns what the follow-up query must answer."""
        if self.kind.name == "task":
            other = await self.create(title="other", status="closed")  # not open: nothing
            a = await self.create(title="a", status="open")  # ENTERED
            await self.update(a, priority=3)  # STAYED
            await self.update(other, priority=9)  # still closed: nothing
            await self.update(a, status="closed")  # LEFT
            await self.update(other, status="open")  # ENTERED
            await self.update(other, title="other")  # no-op: no event at all
            await self.delete(other)  # DELETED, LEFT
            await self.delete(a)  # was closed: nothing
            await self.create(title="c", status="closed")  # nothing
            z = await self.create(title='z ✓ "quoted"\nline', status="open")  # ENTERED, last
            return [{"__typename": "Task", "id": z, "title": 'z ✓ "quoted"\nline', "status": "open"}]
        m1 = await self.create(room="r1", author="ann", body="hello")  # ENTERED
        m2 = await self.create(room="r2", author="bob", body="elsewhere")  # nothing
        await self.update(m1, body="héllo\nwörld ✓ data: x\n\nevent: y")  # STAYED (SSE-hostile text)
        await self.update(m2, room="r1")  # ENTERED
        await self.update(m1, room="r3")  # LEFT
        await self.delete(m1)  # in r3: nothing
        await self.create(room="r2", author="cy", body="noise")  # nothing
        await self.delete(m2)  # DELETED, LEFT
        m4 = await self.create(room="r1", author="dee", body="last")  # ENTERED, last
        return [{"__typename": "Message", "id": m4, "room": "r1", "body": "last"}]


def check_events(run: NodeRun, board: Board) -> None:
    assert run.returncode == 0, run.describe()
    assert run.lines[0] == "READY" and run.lines[-1] == "DONE", run.describe()
    events = run.events
    timestamps = [dt.datetime.fromisoformat(e.pop("timestamp")) for e in events]
    assert events == board.expected, run.describe()
    assert timestamps == sorted(timestamps)
    assert all(t.tzinfo is not None for t in timestamps)


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10, trust_env=False) as client:
        yield client


# -- the tests ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["task", "message"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_client_receives_exactly_the_filtered_events(
    node: str, server: Server, http: httpx.AsyncClient, client: str, kind: str
) -> None:
    board = Board(http, KINDS[kind])
    expected_count = {"task": 6, "message": 6}[kind]
    async with node_client(node, client, server, expected_count, kind) as run:
        await wait_ready(server, [run])
        query_answer = await board.play()
        assert len(board.expected) == expected_count
    check_events(run, board)
    if client in WITH_QUERY:
        assert run.queries == [query_answer], run.describe()
    else:
        assert run.queries == []
    # Each client unsubscribed / disconnected on its way out: the server let go of it.
    await wait_subscribers(server, 0, exact=True)


async def test_all_clients_at_once_see_the_same_stream(node: str, server: Server, http: httpx.AsyncClient) -> None:
    board = Board(http, KINDS["task"])
    async with contextlib.AsyncExitStack() as stack:
        runs = [await stack.enter_async_context(node_client(node, client, server, 6, "task")) for client in CLIENTS]
        await wait_ready(server, runs)
        await board.play()
    for run in runs:
        check_events(run, board)
    await wait_subscribers(server, 0, exact=True)
