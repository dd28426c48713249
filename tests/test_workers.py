"""``tidings serve --workers N``: real processes on one port, sharing the database and the broker.

The chaos test kills a worker with SIGKILL while writes go on through both: its client
reconnects to the port (the other worker, or the one the supervisor starts in its place)
with ``after:`` and misses nothing; every subscriber sees seqs 1..head exactly once, in order,
whichever worker committed them. Which worker holds a connection is read from /proc.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.support.backends import fresh_database, service_url
from tests.support.processes import ServeProcess, popen_serve, serve_command
from tests.support.servers import free_port, make_server
from tidings.filters import MATCH_ALL
from tidings.model.collection import collections_from
from tidings.model.demo import COLLECTIONS
from tidings.store import Store

pytestmark = pytest.mark.timeout(60)

EVENTS = 'subscription { taskEvents(after: "%d") { seq } }'
CREATE = 'mutation($t: String!) { createTask(input: {title: $t, status: "open"}) { id } }'
COUNT = "{ tasks(limit: 1000) { id } }"


@pytest.mark.parametrize("broker", [[], ["--broker", "memory://"]], ids=["auto", "memory"])
def test_workers_refuse_a_broker_that_stays_in_one_process(tmp_path: Path, broker: list[str]) -> None:
    command = serve_command(free_port(), "--workers", "2", "--db", f"sqlite:///{tmp_path / 'w.db'}", *broker)
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "tidings: --workers 2: the memory broker reaches one process only, so events would not cross workers; "
        "use --broker redis://host:6379/0, or a PostgreSQL --db (its LISTEN/NOTIFY broker is the default)"
    ]


class Workers(ServeProcess):
    """A running ``tidings serve --workers 2`` and its log."""

    def pids(self) -> list[int]:
        found = re.search(r"Started 2 workers \(pids (\d+), (\d+)\)", self.text())
        return [int(found[1]), int(found[2])] if found else []

    async def until_log(self, pattern: str, count: int = 1, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.text())) < count:
            assert self.proc.poll() is None, self.text()
            assert time.monotonic() < deadline, f"no {pattern!r} in the log:\n{self.text()}"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def workers(tmp_path: Path, *flags: str) -> AsyncIterator[Workers]:
    port = free_port()
    log = tmp_path / f"workers-{port}.log"
    proc = popen_serve(log, port, "--workers", "2", "--shutdown-timeout", "3", "--log-level", "info", *flags)
    running = Workers(proc, port, log)
    try:
        await running.until_log("Application startup complete", count=2)
        yield running
    finally:
        running.kill()
        for pid in running.pids():  # a worker outliving a killed parent
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def owner(ws: ClientConnection, port: int, pids: list[int]) -> int | None:
    """The worker holding the server side of ``ws``: its socket's inode, looked up in each worker's fds."""
    client_port = ws.local_address[1]
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
                if local == port and remote == client_port:
                    inode = fields[9]
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
    return None


class Subscriber:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.ws: ClientConnection | None = None

    async def connect(self, url: str) -> ClientConnection:
        after = self.seqs[-1] if self.seqs else 0
        ws = await connect(url, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": EVENTS % after}}))
        self.ws = ws
        return ws

    async def read(self, until: int) -> int | None:
        """Events until ``until`` (then None), or the close code (0 for a connection cut without one)."""
        assert self.ws is not None
        try:
            while not self.seqs or self.seqs[-1] < until:
                message = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
                if message["type"] == "next":
                    self.seqs.append(int(message["payload"]["data"]["taskEvents"]["seq"]))
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else 0
        return None


async def one_on_each(server: Workers, pids: list[int]) -> dict[int, Subscriber]:
    """A subscriber on each worker: connect until both have one (the kernel picks the worker)."""
    placed: dict[int, Subscriber] = {}
    extra: list[ClientConnection] = []
    for _ in range(40):
        subscriber = Subscriber()
        ws = await subscriber.connect(server.ws_url)
        pid = owner(ws, server.port, pids)
        if pid is not None and pid not in placed:
            placed[pid] = subscriber
            if len(placed) == 2:
                break
        else:
            extra.append(ws)
    for ws in extra:
        await ws.close()
    assert len(placed) == 2, "every connection went to one worker"
    return placed


async def write(server: Workers, n: int, label: str) -> int:
    """``n`` creates, each on a new connection (so both workers take some); retried when a worker dies."""
    done = 0
    async with httpx.AsyncClient(base_url=server.url, timeout=5, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        while done < n:
            try:
                response = await c.post("/graphql", json={"query": CREATE, "variables": {"t": f"{label}{done}"}})
            except httpx.TransportError:
                continue  # the worker died under the request; it may have committed, the count below says
            assert response.status_code == 200 and "errors" not in response.json(), response.text
            done += 1
    return done


async def head(server: Workers) -> int:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
        return len((await http.post("/graphql", json={"query": COUNT})).json()["data"]["tasks"])


@pytest.mark.parametrize("backend", ["postgres-postgres", "postgres-redis", "sqlite-redis"])
async def test_kill_9_a_worker_its_client_resumes_on_the_port_and_misses_nothing(tmp_path: Path, backend: str) -> None:
    database, broker = backend.split("-")
    db = await fresh_database("postgresql" if database == "postgres" else "sqlite", tmp_path)
    flags = ["--db", db.replace("postgresql+asyncpg://", "postgresql://")]
    if broker == "redis":
        channel = f"tidings:test:{uuid.uuid4().hex[:8]}"  # the shared Redis: a channel of our own
        flags += ["--broker", service_url("TIDINGS_TEST_REDIS_URL", "Redis"), "--channel", channel]
    async with workers(tmp_path, *flags) as server:
        pids = server.pids()
        placed = await one_on_each(server, pids)
        victim, survivor = pids
        assert await write(server, 10, "a") == 10
        for subscriber in placed.values():
            assert await subscriber.read(until=10) is None
        os.kill(victim, signal.SIGKILL)
        writer = asyncio.create_task(write(server, 20, "b"))
        assert await placed[victim].read(until=10**9) == 0  # cut: no close frame from a killed process
        await placed[victim].connect(server.ws_url)  # resumes after its last seq, on whichever worker
        await writer
        total = await head(server)
        assert total >= 30
        for subscriber in placed.values():
            assert await subscriber.read(until=total) is None
            assert subscriber.seqs == list(range(1, total + 1))
        await server.until_log(rf"WARNING tidings\.workers: Worker \d \(pid {victim}\) exited with signal 9")
        server.proc.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*(s.read(until=10**9) for s in placed.values()))
        assert codes == [1012, 1012]
        assert await server.exit_status(10) == 0, server.text()
    assert "ERROR" not in server.text() and "Traceback" not in server.text(), server.text()
    assert survivor in pids


async def test_a_reservation_made_on_another_process_is_refused_with_the_reason(tmp_path: Path) -> None:
    # Two processes on one database, as --workers runs them behind one port: graphql-sse's
    # reservation lives in the process that made it; the other answers 404 and says why.
    one, two = make_server(tmp_path), make_server(tmp_path)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            token = (await client.put(one.url + "/graphql")).text
            headers = {"x-graphql-event-stream-token": token}
            run = {"query": "subscription { taskEvents { seq } }", "extensions": {"operationId": "op"}}
            elsewhere = await client.post(two.url + "/graphql", json=run, headers=headers)
            assert elsewhere.status_code == 404
            assert "single connection mode needs sticky sessions" in elsewhere.text
            stream = await client.get(
                two.url + "/graphql", params={"token": token}, headers={"accept": "text/event-stream"}
            )
            assert stream.status_code == 404 and "sticky sessions" in stream.text
            assert (await client.post(one.url + "/graphql", json=run, headers=headers)).status_code == 202
    finally:
        one.stop()
        two.stop()


async def test_sqlite_writers_in_two_processes_wait_for_each_other_and_keep_seqs_in_commit_order(
    tmp_path: Path,
) -> None:
    # Two stores on one file, each with its own writer thread and connection, as two workers
    # have: an update reads, then writes. A deferred BEGIN fails at once ("database is locked")
    # when the other committed in between; BEGIN IMMEDIATE waits for the lock instead.
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    collections = collections_from(COLLECTIONS)
    stores = [Store(url, collections), Store(url, collections)]
    for store in stores:
        await store.start()
    try:
        coll = stores[0].collections["Task"]
        record, _ = await stores[0].create(coll, {"title": "t", "status": "open"}, account=None, actor=None)

        async def update(store: Store, who: str) -> None:
            for i in range(60):
                values = {"title": f"{who}{i}"}
                await store.update(coll, record["id"], values, expected_version=None, guard=MATCH_ALL, actor=None)

        await asyncio.wait_for(asyncio.gather(update(stores[0], "a"), update(stores[1], "b")), 30)
        events = await stores[1].read_events(0, None, 1000)
        assert [e.seq for e in events] == list(range(1, 122))
        # Each event's `previous` is the title the event before it set: seqs are in commit order.
        titles = [e.record["title"] for e in events]
        assert all(e.previous["title"] == before for e, before in zip(events[1:], titles, strict=False))
    finally:
        for store in stores:
            await store.close()


async def test_workers_drain_and_exit_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    flags = ["--db", f"sqlite:///{tmp_path / 'w.db'}", "--broker", service_url("TIDINGS_TEST_REDIS_URL", "Redis")]
    async with workers(tmp_path, *flags, "--channel", f"tidings:test:{uuid.uuid4().hex[:8]}") as server:
        pids = server.pids()
        subscriber = Subscriber()
        await subscriber.connect(server.ws_url)
        server.proc.kill()
        assert await subscriber.read(until=10**9) == 1012  # drained, not cut
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid) for pid in pids):
            assert time.monotonic() < deadline, "a worker outlived its supervisor"
            await asyncio.sleep(0.05)
    assert server.text().count("The supervisor (pid") == 2


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "zombie"


async def mutate_over(ws: ClientConnection, n: int, label: str) -> None:
    """``n`` creates over ``ws`` (graphql-transport-ws), each answered before the next; events on it are skipped."""
    for i in range(n):
        op = f"{label}{i}"
        payload = {"query": CREATE, "variables": {"t": op}}
        await ws.send(json.dumps({"id": op, "type": "subscribe", "payload": payload}))
        while True:
            message = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if message.get("id") == op:
                assert message["type"] in ("next", "complete"), message
                assert "errors" not in message.get("payload", {}), message
                if message["type"] == "complete":
                    break


def metric(text: str, sample: str) -> float | None:
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    return float(found[1]) if found else None


async def test_metrics_of_every_worker_are_summed_in_a_directory_the_supervisor_makes_and_removes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setenv("TMPDIR", str(temporary))  # where the supervisor makes its directory
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    flags = ["--db", f"sqlite:///{tmp_path / 'w.db'}", "--broker", service_url("TIDINGS_TEST_REDIS_URL", "Redis")]
    async with workers(tmp_path, *flags, "--channel", f"tidings:test:{uuid.uuid4().hex[:8]}") as server:
        [directory] = temporary.glob("tidings-metrics-*")
        placed = await one_on_each(server, server.pids())
        for (pid, subscriber), n in zip(placed.items(), (3, 4), strict=True):
            assert subscriber.ws is not None
            await mutate_over(subscriber.ws, n, f"w{pid}-")
        wanted = {
            'tidings_mutations_total{collection="Task",outcome="ok"}': 7.0,  # 3 on one worker, 4 on the other
            'tidings_connections{transport="ws"}': 2.0,  # one open on each
        }
        seen: dict[str, float | None] = {}
        deadline = time.monotonic() + 15  # each worker writes its figures once a second
        # A new connection per scrape: whichever worker answers sums both.
        async with httpx.AsyncClient(base_url=server.url, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            while seen != wanted:
                assert time.monotonic() < deadline, f"/metrics said {seen}, not {wanted}"
                text = (await http.get("/metrics")).text
                seen = {sample: metric(text, sample) for sample in wanted}
                if seen != wanted:
                    await asyncio.sleep(0.1)
        server.proc.send_signal(signal.SIGTERM)
        assert await server.exit_status(15) == 0, server.text()
    assert not directory.exists(), list(directory.iterdir())
    assert f"figures meet in {directory} (removed at exit)" in server.text()
