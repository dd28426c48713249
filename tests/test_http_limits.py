"""The HTTP layer's limits, over raw sockets: body size (413 before the body is read) and
slow clients (headers and body must arrive within their deadlines)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import Server, gql_post, make_server
from tidings.serving import H11DeadlineProtocol, http_protocol

LIMIT = 65_536


@pytest.fixture
def small(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path, max_message_size=LIMIT, header_timeout=0.5, body_timeout=0.5)
    yield s
    s.stop()


async def _reserve(server: Server) -> str:
    async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
        reserved = await client.put("/graphql")
        assert reserved.status_code == 201
        return reserved.text


async def _head(server: Server, path: str, extra: dict[str, str]) -> bytes:
    headers = {"host": "127.0.0.1", "content-type": "application/json", **extra}
    if path == "sse":
        headers["accept"] = "text/event-stream"
    elif path == "single":
        headers["x-graphql-event-stream-token"] = await _reserve(server)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST /graphql HTTP/1.1\r\n{lines}\r\n".encode()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    return status, json.loads(await reader.readexactly(length))


PATHS = ["json", "sse", "single"]


@pytest.mark.parametrize("path", PATHS)
async def test_declared_oversized_body_is_refused_before_it_is_sent(small: Server, path: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", small.port)
    try:
        writer.write(await _head(small, path, {"content-length": str(50 * LIMIT)}))
        # Not one byte of the body is sent: the answer comes from the headers alone.
        status, body = await asyncio.wait_for(_read_response(reader), 5)
        assert status == 413
        assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "maxBytes": LIMIT}
        # The body is never read: the connection ends at the body deadline.
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def _recv_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Read one response off a raw socket (queued data stays readable after a reset)."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data:
        data += await loop.sock_recv(sock, 65_536) or b"EOF"
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(int(h.split(b":", 1)[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))
    while len(rest) < length:
        rest += await loop.sock_recv(sock, 65_536)
    return int(head.split(b" ", 2)[1]), json.loads(rest[:length])


@pytest.mark.parametrize("path", PATHS)
async def test_chunked_upload_that_keeps_sending_is_answered_then_cut_off(small: Server, path: str) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.create_connection(("127.0.0.1", small.port))
    sock.setblocking(False)
    chunk = b"x" * 16_384
    head = await _head(small, path, {"transfer-encoding": "chunked"})

    async def upload() -> bool:
        """Send for ever (a chunk a millisecond); True when the server cuts the connection."""
        prefix = b'{"query": "{ __typename }", "variables": {"pad": "'
        try:
            await loop.sock_sendall(sock, head + b"%x\r\n%s\r\n" % (len(prefix), prefix))
            while True:
                await loop.sock_sendall(sock, b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await asyncio.sleep(0.001)
        except ConnectionError:
            return True

    uploading = asyncio.create_task(upload())
    try:
        # Answered while the client is still sending...
        status, body = await asyncio.wait_for(_recv_response(sock), 5)
        assert not uploading.done()
        assert status == 413
        assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "maxBytes": LIMIT}
        # ...and the rest, discarded, is cut off at the body deadline (0.5 s).
        assert await asyncio.wait_for(uploading, 5)
    finally:
        uploading.cancel()
        sock.close()


@pytest.mark.parametrize("path", ["json", "sse"])
async def test_body_just_under_the_limit_is_served(small: Server, path: str) -> None:
    envelope = {"query": "{ tasks { id } }", "variables": {"pad": ""}}
    pad = LIMIT - len(json.dumps(envelope).encode())
    envelope["variables"] = {"pad": "x" * pad}
    content = json.dumps(envelope).encode()
    assert len(content) == LIMIT
    headers = {"content-type": "application/json"}
    if path == "sse":
        headers["accept"] = "text/event-stream"
    async with httpx.AsyncClient(base_url=small.url, timeout=5) as client:
        response = await client.post("/graphql", content=content, headers=headers)
    assert response.status_code == 200
    assert '"tasks":[]' in response.text.replace(" ", "")


async def _closed_by_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, trickle: bytes) -> None:
    """Send ``trickle`` a byte every 50 ms (about a second and a half's worth, then nothing) until the server closes."""

    async def drip() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in trickle:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)

    dripping = asyncio.create_task(drip())
    try:
        with contextlib.suppress(ConnectionError):
            assert await reader.read() == b""
    finally:
        dripping.cancel()


HEADERS_TRICKLE = b"X-Padding: " + b"a" * 200


@pytest.mark.parametrize("protocol", ["default", "h11"])
async def test_slow_headers_are_cut_off_while_others_are_served(tmp_path: Path, protocol: str) -> None:
    overrides = {"http": type("H11", (H11DeadlineProtocol,), {"header_timeout": 0.5})} if protocol == "h11" else {}
    server = make_server(tmp_path, header_timeout=0.5, uvicorn_overrides=overrides)
    try:
        slow = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(5)]
        for _, writer in slow:
            writer.write(b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closing = asyncio.gather(*(_closed_by_server(r, w, HEADERS_TRICKLE) for r, w in slow))
        async with httpx.AsyncClient(base_url=server.url, timeout=5) as client:
            assert (await gql_post(client, "{ tasks { id } }"))["data"] == {"tasks": []}
        await asyncio.wait_for(closing, 5)
        # A connection that sends nothing at all is closed as well.
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", server.port)
        assert await asyncio.wait_for(idle_reader.read(), 5) == b""
        idle_writer.close()
        for _, writer in slow:
            writer.close()
    finally:
        server.stop()


async def test_slow_body_is_cut_off(small: Server) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", small.port)
    writer.write(await _head(small, "json", {"content-length": "1000"}))
    await asyncio.wait_for(_closed_by_server(reader, writer, b'{"query": "' + b" " * 500), 5)
    writer.close()


def test_protocol_is_built_from_the_settings() -> None:
    protocol: Any = http_protocol(3.0, 7.0)
    assert (protocol.header_timeout, protocol.body_timeout) == (3.0, 7.0)
