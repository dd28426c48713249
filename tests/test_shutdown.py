"""A real ``tidings serve`` process: SIGTERM with every kind of client, resume on the next process, keepalive."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.support.processes import Process, serving
from tidings.protocols.sse import SSEParser

pytestmark = pytest.mark.timeout(40)

EVENTS = "subscription { taskEvents%s { seq } }"
TITLED_EVENTS = "subscription { taskEvents%s { seq record { title } } }"  # each as large as its title
CREATE = 'mutation($t: String!) { createTask(input: {title: $t, status: "open"}) { id } }'


def seq_of(message: dict[str, Any]) -> int:
    payload = message.get("payload", message)
    return int(payload["data"]["taskEvents"]["seq"])


class WSClient:
    """graphql-transport-ws or legacy graphql-ws: the seqs received, then the close code."""

    def __init__(self, url: str, subprotocol: str) -> None:
        self.url = url
        self.subprotocol = subprotocol
        self.seqs: list[int] = []

    async def subscribe(self, after: int = 0) -> ClientConnection:
        ws = await connect(self.url, subprotocols=[self.subprotocol])  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
        kind = "subscribe" if self.subprotocol == "graphql-transport-ws" else "start"
        query = EVENTS % f'(after: "{after}")'  # from the log's start at first: no race with the first write
        await ws.send(json.dumps({"id": "1", "type": kind, "payload": {"query": query}}))
        return ws

    async def read(self, ws: ClientConnection, until: int | None = None) -> int | None:
        """Read events until ``until`` is seen (then None) or the close (its code)."""
        try:
            while until is None or not self.seqs or self.seqs[-1] < until:
                message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if message["type"] in ("next", "data"):
                    self.seqs.append(seq_of(message))
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else None
        return None


class SSEClient:
    """graphql-sse, distinct or single connection mode: the seqs received until the stream ends."""

    def __init__(self, url: str, single: bool, query: str = EVENTS) -> None:
        self.url = url
        self.single = single
        self.query = query
        self.seqs: list[int] = []
        self.last_event_id = "0"  # from the log's start: no race between subscribing and the first write

    @contextlib.asynccontextmanager
    async def subscribe(self, client: httpx.AsyncClient, after: int = 0) -> AsyncIterator[httpx.Response]:
        headers = {"accept": "text/event-stream"}
        if not self.single:
            headers["last-event-id"] = self.last_event_id
            async with client.stream("GET", self.url, params={"query": self.query % ""}, headers=headers) as response:
                assert response.status_code == 200
                yield response
            return
        token = (await client.put(self.url)).text
        async with client.stream("GET", self.url, params={"token": token}, headers=headers) as response:
            assert response.status_code == 200
            query = {"query": self.query % f'(after: "{after}")', "extensions": {"operationId": "op"}}
            run = await client.post(self.url, json=query, headers={"x-graphql-event-stream-token": token})
            assert run.status_code == 202
            yield response

    async def read(self, response: httpx.Response, until: int | None = None) -> bool:
        """Read events until ``until`` is seen (then False) or the response ends (True)."""
        # One parser and one iterator per response: it is read in several steps.
        parser, chunks = response.extensions.setdefault("tidings.sse", (SSEParser(), response.aiter_text()))
        while until is None or not self.seqs or self.seqs[-1] < until:
            try:
                chunk = await asyncio.wait_for(anext(chunks), 10)
            except (StopAsyncIteration, httpx.RemoteProtocolError):
                return True
            for event in parser.feed(chunk):
                if event.event == "next":
                    self.seqs.append(seq_of(json.loads(event.data)))
                    self.last_event_id = event.id
        return False


async def create_until_refused(url: str, done: list[int], enough: asyncio.Event) -> None:
    """Create tasks one after another until the server stops answering (at most 300)."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        for i in range(300):
            try:
                response = await client.post("/graphql", json={"query": CREATE, "variables": {"t": f"t{i}"}})
            except httpx.HTTPError:
                return
            if response.status_code != 200:
                return
            done.append(i)
            if len(done) == 10:
                enough.set()
    enough.set()


async def test_sigterm_ends_every_stream_exits_0_and_resume_delivers_the_rest_once(tmp_path: Path) -> None:
    db = tmp_path / "shutdown.db"
    ws_clients = [WSClient("", "graphql-transport-ws"), WSClient("", "graphql-ws")]
    sse_clients = [SSEClient("", single=False), SSEClient("", single=True)]
    async with serving(tmp_path, db, "--shutdown-timeout", "5") as first:
        for c in ws_clients:
            c.url = first.ws_url
        for s in sse_clients:
            s.url = first.url + "/graphql"
        async with (
            httpx.AsyncClient(timeout=10) as distinct_http,
            httpx.AsyncClient(timeout=10) as single_http,
            sse_clients[0].subscribe(distinct_http) as distinct,
            sse_clients[1].subscribe(single_http) as single,
        ):
            sockets = [await c.subscribe() for c in ws_clients]
            # A first event read by every client proves each is subscribed.
            async with httpx.AsyncClient(base_url=first.url, timeout=5) as http:
                await http.post("/graphql", json={"query": CREATE, "variables": {"t": "probe"}})
            for c, ws in zip(ws_clients, sockets, strict=True):
                assert await c.read(ws, until=1) is None
            assert not await sse_clients[0].read(distinct, until=1)
            assert not await sse_clients[1].read(single, until=1)
            # Writes keep coming while the signal lands: some are delivered before the close, the rest on resume.
            created: list[int] = []
            enough = asyncio.Event()
            writer = asyncio.create_task(create_until_refused(first.url, created, enough))
            await asyncio.wait_for(enough.wait(), 10)
            first.proc.send_signal(signal.SIGTERM)
            codes = await asyncio.gather(*(c.read(ws) for c, ws in zip(ws_clients, sockets, strict=True)))
            ended = await asyncio.gather(sse_clients[0].read(distinct), sse_clients[1].read(single))
            await asyncio.wait_for(writer, 10)
            assert await first.exit_status(timeout=7) == 0
        assert codes == [1012, 1012]
        assert list(ended) == [True, True]
        assert first.problems() == []

    async with serving(tmp_path, db) as second:
        async with httpx.AsyncClient(base_url=second.url, timeout=5) as http:
            head = int((await http.get("/healthz")).json()["seq"])
            tasks = await http.post("/graphql", json={"query": "{ tasks(limit: 1000) { id } }"})
            count = len(tasks.json()["data"]["tasks"])
        assert head == count >= 11
        for c in ws_clients:
            c.url = second.ws_url
            ws = await c.subscribe(after=c.seqs[-1])
            assert await c.read(ws, until=head) is None
            await ws.close()
        for s in sse_clients:
            s.url = second.url + "/graphql"
            async with httpx.AsyncClient(timeout=10) as client, s.subscribe(client, after=s.seqs[-1]) as response:
                assert not await s.read(response, until=head)
    for client in [*ws_clients, *sse_clients]:
        assert client.seqs == list(range(1, head + 1)), client


async def test_keepalive_0_turns_keepalives_off_instead_of_spinning(tmp_path: Path) -> None:
    async with serving(tmp_path, tmp_path / "idle.db", "--keepalive", "0") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            assert (await http.get("/healthz")).status_code == 200
        before = server.cpu_seconds()
        await asyncio.sleep(1.0)  # a measuring window with nothing connected, not a wait for an event
        assert server.cpu_seconds() - before < 0.3
        server.proc.send_signal(signal.SIGTERM)
        assert await server.exit_status(timeout=5) == 0


async def stalled_websocket(server: Process, http: httpx.AsyncClient, body: str) -> ClientConnection:
    """A graphql-transport-ws client that reads its first event and then nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    # max_queue=1: the client library stops reading its socket once one frame waits unread.
    subprotocols: Any = ["graphql-transport-ws"]
    ws = await connect(server.ws_url, sock=sock, max_queue=1, ping_interval=None, subprotocols=subprotocols)
    await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
    assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
    await http.post("/graphql", json={"query": CREATE, "variables": {"t": body}})
    query = TITLED_EVENTS % '(after: "0")'  # replays the first write: no race with subscribing
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
    while json.loads(await asyncio.wait_for(ws.recv(), 5)).get("type") != "next":
        pass
    return ws


async def publish(http: httpx.AsyncClient, body: str, seconds: float, interval: float = 0.04) -> int:
    """A write every ``interval`` seconds for ``seconds``; returns the count."""
    count = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        await http.post("/graphql", json={"query": CREATE, "variables": {"t": body}})
        count += 1
        await asyncio.sleep(interval)  # the publishing rate
    return count


# Queue bounds out of reach, so that only the write deadline can act. The events are large
# (~1.5 MB/s) so that the kernel's socket buffers (up to 4 MB here) fill within seconds:
# only then do writes wait.
NO_QUEUE_BOUND = ("--queue-bytes", "1000000000", "--queue-messages", "1000000", "--write-timeout", "1")
LARGE = "x" * 150_000


async def close_after_reading(ws: ClientConnection) -> tuple[int, str]:
    """Read what was left for the client, then its close frame."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_client_that_stops_reading_is_closed_4008_not_1011_by_the_ping_timeout(tmp_path: Path) -> None:
    flags = ("--keepalive", "1", "--write-timeout", "0")
    async with serving(tmp_path, tmp_path / "slow.db", *flags) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            ws = await stalled_websocket(server, http, "x" * 2000)
            await publish(http, "x" * 2000, seconds=4.0)  # ~50 KB/s: only the keepalive notices the stall
        assert await close_after_reading(ws) == (
            4008,
            "Keepalive ping timeout; reconnect and resume with your last seq",
        )


async def test_write_deadline_closes_a_websocket_that_stops_reading_4008_without_keepalive(tmp_path: Path) -> None:
    async with serving(tmp_path, tmp_path / "slow.db", "--keepalive", "0", *NO_QUEUE_BOUND) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
            ws = await stalled_websocket(server, http, "first")
            await publish(http, LARGE, seconds=5.0, interval=0.1)
        assert await close_after_reading(ws) == (4008, "Send queue overflow; reconnect and resume with your last seq")


async def test_write_deadline_ends_an_sse_stream_that_stops_reading(tmp_path: Path) -> None:
    async with serving(tmp_path, tmp_path / "slow.db", *NO_QUEUE_BOUND) as server:
        client = SSEClient(server.url + "/graphql", single=False, query=TITLED_EVENTS)
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=5) as http,
            httpx.AsyncClient(timeout=10) as stalled,  # reads its socket only when asked to
            client.subscribe(stalled) as response,
        ):
            await http.post("/graphql", json={"query": CREATE, "variables": {"t": "first"}})
            assert not await client.read(response, until=1)
            published = await publish(http, LARGE, seconds=5.0, interval=0.1)
            assert await client.read(response)  # what was sent before the deadline, then the end
        assert 1 <= len(client.seqs) < published + 1
        assert client.seqs == list(range(1, len(client.seqs) + 1))
