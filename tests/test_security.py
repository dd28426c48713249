"""Security review findings (issue 10): owner spoofing, simple content types, secrets in logs, what the server says."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.support.processes import spawn_serve, stop_serve
from tests.support.servers import Server, free_port, make_server
from tests.support.wsclient import WS
from tests.test_auth import SECRET, call, token
from tidings import Rules, Settings, collection
from tidings.errors import ConfigurationError
from tidings.protocols.sse import SSEParser
from tidings.server import SampledLog


@collection(rules=Rules(create="authenticated", update="owner:owner"))
class Card:
    title: str
    owner: str | None = None


@collection(rules=Rules(read="owner:owner", update="authenticated"))
class Diary:
    title: str
    owner: str | None = None


@collection(rules=Rules(create={"owner": {"eq": "$sub"}}, update={"owner": {"eq": "$sub"}}))
class Claim:
    title: str
    owner: str | None = None


@collection(rules=Rules(read={"assignee": {"eq": "$sub"}}))
class Chore:
    title: str
    assignee: str | None = None


@pytest.fixture
def owners(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path, [Card, Diary, Claim, Chore], jwt_secret=SECRET, admin_role="root", jwt_leeway=0)
    yield s
    s.stop()


def code(r: httpx.Response) -> str:
    body = r.json()
    assert "errors" in body, body
    return str(body["errors"][0]["extensions"]["code"])


async def write(server: Server, tok: str, mutation: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = (await call(server, tok, mutation, variables)).json()
    assert "errors" not in body, body
    return body["data"]


async def test_create_cannot_name_another_owner(owners: Server) -> None:
    alice, bob, root = token("alice", "acme"), token("bob", "acme"), token("ops", "acme", role="root")
    planted = await call(owners, bob, 'mutation { createCard(input: {title: "t", owner: "alice"}) { id owner } }')
    assert code(planted) == "FORBIDDEN"
    assert (await call(owners, alice, "{ cards { id } }")).json()["data"]["cards"] == []
    own = await write(owners, bob, 'mutation { createCard(input: {title: "t", owner: "bob"}) { owner } }')
    assert own["createCard"]["owner"] == "bob"
    filled = await write(owners, bob, 'mutation { createCard(input: {title: "t"}) { owner } }')
    assert filled["createCard"]["owner"] == "bob"
    handed = await write(owners, root, 'mutation { createCard(input: {title: "t", owner: "alice"}) { owner } }')
    assert handed["createCard"]["owner"] == "alice"
    # An owner rule on read alone binds the field just the same.
    diary = await call(owners, bob, 'mutation { createDiary(input: {title: "d", owner: "alice"}) { id } }')
    assert code(diary) == "FORBIDDEN"
    assert (await call(owners, alice, "{ diarys { id } }")).json()["data"]["diarys"] == []


async def test_update_cannot_move_a_record_to_another_owner(owners: Server) -> None:
    alice, bob, root = token("alice", "acme"), token("bob", "acme"), token("ops", "acme", role="root")
    move = 'mutation($id: ID!, $o: String) { updateDiary(id: $id, input: {owner: $o, title: "x"}) { owner } }'
    bobs = (await write(owners, bob, 'mutation { createDiary(input: {title: "mine"}) { id } }'))["createDiary"]["id"]
    alices = (await write(owners, alice, 'mutation { createDiary(input: {title: "a"}) { id } }'))["createDiary"]["id"]
    # update="authenticated" lets bob edit alice's diary, but not plant his own in her view...
    assert code(await call(owners, bob, move, {"id": bobs, "o": "alice"})) == "FORBIDDEN"
    assert (await call(owners, alice, "{ diarys { title } }")).json()["data"]["diarys"] == [{"title": "a"}]
    # ...and an unchanged owner in the input is no move.
    assert (await write(owners, bob, move, {"id": alices, "o": "alice"}))["updateDiary"]["owner"] == "alice"
    assert (await write(owners, root, move, {"id": bobs, "o": "alice"}))["updateDiary"]["owner"] == "alice"


async def test_where_rules_on_writes_check_the_written_record(owners: Server) -> None:
    alice, bob = token("alice", "acme"), token("bob", "acme")
    create = 'mutation($o: String) { createClaim(input: {title: "c", owner: $o}) { id } }'
    assert code(await call(owners, bob, create, {"o": "alice"})) == "FORBIDDEN"
    cid = (await write(owners, bob, create, {"o": "bob"}))["createClaim"]["id"]
    give = 'mutation($id: ID!) { updateClaim(id: $id, input: {owner: "alice"}) { id } }'
    assert code(await call(owners, bob, give, {"id": cid})) == "FORBIDDEN"
    assert (await call(owners, alice, "{ claims { id } }")).json()["data"]["claims"] == [{"id": cid}]  # read: public
    one = await call(owners, alice, "query($id: ID!) { claim(id: $id) { owner } }", {"id": cid})
    assert one.json()["data"]["claim"] == {"owner": "bob"}
    # A read-only where rule is visibility, not ownership: assigning to someone else is the point.
    await write(owners, bob, 'mutation { createChore(input: {title: "dishes", assignee: "alice"}) { id } }')
    assert (await call(owners, alice, "{ chores { title } }")).json()["data"]["chores"] == [{"title": "dishes"}]
    # The account column is not an input: a caller cannot create into another tenant.
    other = await call(owners, bob, 'mutation { createCard(input: {title: "t", account: "globex"}) { id } }')
    assert code(other) == "BAD_USER_INPUT"


MUTATION = orjson.dumps({"query": 'mutation { createTask(input: {title: "forged"}) { id } }'})
SIMPLE_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]


async def task_count(client: httpx.AsyncClient) -> int:
    return len((await client.post("/graphql", json={"query": "{ tasks { id } }"})).json()["data"]["tasks"])


@pytest.mark.parametrize("content_type", SIMPLE_TYPES)
async def test_posts_without_a_json_content_type_are_415_on_every_path(
    server: Server, content_type: str | None
) -> None:
    # A "simple" request needs no CORS preflight: executing one would be cross-site request forgery.
    ctype = {"content-type": content_type} if content_type else {}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        reserved = (await client.put("/graphql")).text
        attempts = {
            "sse distinct": {"accept": "text/event-stream"},
            "sse single connection": {"x-graphql-event-stream-token": reserved},
            "json": {"accept": "application/json"},
        }
        for path, headers in attempts.items():
            r = await client.post("/graphql", content=MUTATION, headers={**headers, **ctype})
            assert r.status_code == 415, (path, r.status_code, r.text)
        # GET needs no preflight either: it never runs a mutation, on any path.
        mutation = {"query": orjson.loads(MUTATION)["query"], "operationId": "m"}
        for headers in attempts.values():
            r = await client.get("/graphql", params=mutation, headers=headers)
            assert r.status_code == 405, (headers, r.status_code, r.text)
        assert await task_count(client) == 0
        ok = await client.post(
            "/graphql", content=MUTATION, headers={"accept": "text/event-stream", "content-type": "application/json"}
        )
        assert ok.status_code == 200 and await task_count(client) == 1
        broken = await client.post(
            "/graphql", content=b"{nope", headers={"accept": "text/event-stream", "content-type": "application/json"}
        )
        assert broken.status_code == 400 and broken.json()["errors"][0]["message"] == "Malformed JSON"


def server_faults(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """The records of tidings' and uvicorn's loggers that are errors or carry a traceback."""
    ours = [r for r in records if r.name.split(".")[0] in ("tidings", "uvicorn")]
    return [r for r in ours if r.exc_info or r.levelno >= logging.ERROR]


NOT_A_REQUEST = [
    b"\xff",  # not UTF-8
    b'{"query": "{ tasks { id } }", "variables": {"t": "\xff"}}',  # not UTF-8 inside a string
    b"null",
    b"0",
    b'"x"',
    b"[]",
    b"{}",
    b'{"query": "{ tasks { id } }", "variables": 0}',
]
JSON_PATHS = ("application/json", "application/graphql-response+json")  # answered in the type asked for


@pytest.mark.parametrize("body", NOT_A_REQUEST)
async def test_a_body_that_is_no_graphql_request_is_400_bad_user_input_on_every_path(
    server: Server, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        reserved = (await client.put("/graphql")).text
        paths = {
            **{accept: {"accept": accept} for accept in JSON_PATHS},
            "sse distinct": {"accept": "text/event-stream"},
            "sse single connection": {"x-graphql-event-stream-token": reserved},
        }
        for path, headers in paths.items():
            r = await client.post("/graphql", content=body, headers={**headers, "content-type": "application/json"})
            assert r.status_code == 400, (path, r.status_code, r.text)
            assert r.headers["content-type"].startswith(path if path in JSON_PATHS else "application/json"), path
            assert code(r) == "BAD_USER_INPUT", (path, r.text)
        assert await task_count(client) == 0
    assert not server_faults(caplog.records)


@pytest.mark.parametrize(
    "params", ["query={tasks{id}}&variables=%FF", "query={tasks{id}}&variables=0", "query={tasks{id}}&extensions=[]"]
)
async def test_a_get_whose_json_parameters_are_no_graphql_request_is_400_bad_user_input_on_every_path(
    http: httpx.AsyncClient, params: str
) -> None:
    for accept in [*JSON_PATHS, "text/event-stream"]:
        r = await http.get(f"/graphql?{params}", headers={"accept": accept})
        assert r.status_code == 400, (accept, r.status_code, r.text)
        assert code(r) == "BAD_USER_INPUT", (accept, r.text)


class LogTail:
    """The lines a process wrote so far; ``wait_for`` awaits one containing a string."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def append(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()

    async def wait_for(self, needle: str, timeout: float = 5.0) -> str:
        async def find() -> str:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if needle in line:
                        return line
                seen = len(self.lines)
                self._changed.clear()  # no await since the scan: no line can slip in between
                await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)

    @property
    def text(self) -> str:
        return "".join(self.lines)


@contextlib.asynccontextmanager
async def serve_process(tmp_path: Path, *args: str) -> AsyncIterator[tuple[str, LogTail]]:
    """A real `tidings serve` process; yields its URL and its log (stdout and stderr)."""
    port = free_port()
    proc = await spawn_serve(port, "--db", f"sqlite:///{tmp_path / 'serve.db'}", *args, stdout=PIPE, stderr=STDOUT)
    log = LogTail()

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            log.append(raw.decode(errors="replace"))

    reader = asyncio.create_task(read())
    try:
        await log.wait_for("Application startup complete", 20)
        yield f"http://127.0.0.1:{port}", log
    finally:
        await stop_serve(proc)
        await asyncio.wait_for(reader, 5)


async def test_sse_token_parameter_never_reaches_the_log(tmp_path: Path) -> None:
    jwt_token = token("ann", "acme")
    async with (
        serve_process(tmp_path, "--jwt-secret", SECRET, "--log-level", "info") as (url, log),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        params = {"query": "subscription { taskEvents { seq } }", "token": jwt_token, "api_key": "k-123"}
        async with client.stream("GET", "/graphql", params=params, headers={"accept": "text/event-stream"}) as r:
            assert r.status_code == 200
        refused = await client.get("/graphql", params={"query": "{ tasks { id } }", "access_token": jwt_token})
        assert refused.status_code == 401
        logged = await log.wait_for("GET /graphql?query=subscription")
        await log.wait_for("access_token=")
    text = log.text
    assert jwt_token not in text and jwt_token.split(".")[2] not in text and "k-123" not in text
    assert "token=[REDACTED]" in logged and "api_key=[REDACTED]" in logged, logged
    assert "access_token=[REDACTED]" in text


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "auth").mkdir()
    s = make_server(tmp_path / "auth", jwt_secret=SECRET, jwt_leeway=0)
    yield s
    s.stop()


async def test_bad_tokens_get_a_short_reason_and_the_detail_is_logged(
    auth_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    bad_padding = token("ann", "acme")[:-1] + "!"
    header_only = "eyJhbGciOiJIUzI1NiJ9x.e30.sig"
    expired = token("ann", "acme", ttl=-10)
    caplog.set_level(logging.INFO, logger="tidings.auth")
    for tok, reason in ((bad_padding, "Invalid token"), (header_only, "Invalid token"), (expired, "Token expired")):
        ws = await WS.open(auth_server.ws_url)
        await ws.send({"type": "connection_init", "payload": {"token": tok}})
        assert await ws.closed() == (4403, reason)
        http = await call(auth_server, tok, "{ tasks { id } }")
        assert http.status_code == 401
        assert http.json()["errors"][0] == {"message": reason, "extensions": {"code": "UNAUTHENTICATED"}}
        async with httpx.AsyncClient(base_url=auth_server.url, timeout=10) as client:
            sse = await client.get(
                "/graphql", params={"query": "subscription { taskEvents { seq } }", "token": tok},
                headers={"accept": "text/event-stream"},
            )  # fmt: skip
        assert sse.status_code == 401 and sse.json()["errors"][0]["message"] == reason
    details = [r.getMessage() for r in caplog.records if r.name == "tidings.auth"]
    assert any("Signature" in d or "padding" in d or "decode" in d.lower() for d in details), details


async def test_oversized_websocket_message_closes_1009_message_too_large(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.server")
    ws = await WS.open(server.ws_url)
    assert (await ws.init())["type"] == "connection_ack"
    limit = server.tidings.settings.max_message_size
    await ws.send({"type": "ping", "payload": {"pad": "x" * limit}})
    assert await ws.closed() == (1009, "Message too large")
    assert any("exceeds limit" in r.getMessage() for r in caplog.records if r.name == "tidings.server")


async def test_text_messages_that_are_not_utf8_close_1007_with_one_info_line_a_minute(
    server: Server, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tidings.server

    monkeypatch.setattr(tidings.server, "INVALID_TEXT_LOG", SampledLog(logging.getLogger("tidings.server"), 60.0))
    caplog.set_level(logging.INFO)
    for n in range(5):
        ws = await WS.open(server.ws_url)
        if n % 2:
            assert (await ws.init())["type"] == "connection_ack"
        await ws.conn.send(b'{"type": "ping", "payload": "\xff"}', text=True)
        assert (await ws.closed())[0] == 1007
    lines = [r.getMessage() for r in caplog.records if "1007" in r.getMessage() and r.name == "tidings.server"]
    assert len(lines) == 1 and "not UTF-8" in lines[0], lines
    assert not server_faults(caplog.records)


def test_sampled_log_says_how_many_lines_it_left_out() -> None:
    now = [0.0]
    logged: list[str] = []

    class Logger:
        def info(self, message: str, *args: object) -> None:
            logged.append(message % args)

    sampled = SampledLog(Logger(), 60.0, clock=lambda: now[0])  # type: ignore[arg-type]
    for t in (0.0, 1.0, 59.9, 60.0, 61.0, 200.0):
        now[0] = t
        sampled.info("closed %s", t)
    assert logged == [
        "closed 0.0",
        "closed 60.0 (and 2 more in the 60 s before this line, not logged)",
        "closed 200.0 (and 1 more in the 60 s before this line, not logged)",
    ]


INTROSPECTION = ["{ __schema { queryType { name } } }", '{ __type(name: "Task") { name } }']
TYPO = "{ tasks { titel } }"
ENUM_TYPO = "subscription($o: [Operation!]) { taskEvents(operations: $o) { seq } }"


async def errors_everywhere(server: Server, query: str, variables: dict[str, Any] | None = None) -> list[Any]:
    """The errors of ``query`` over HTTP, graphql-transport-ws and SSE, in that order."""
    out: list[Any] = []
    body = {"query": query, "variables": variables or {}}
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        if not query.startswith("subscription"):
            out.append((await client.post("/graphql", json=body)).json()["errors"])
        ws = await WS.open(server.ws_url)
        await ws.init()
        await ws.subscribe("1", query, variables)
        message = await ws.recv()
        assert message["type"] == "error", message
        out.append(message["payload"])
        await ws.close()
        sse = await client.post("/graphql", json=body, headers={"accept": "text/event-stream"})
        if sse.status_code == 400:
            out.append(sse.json()["errors"])
        else:
            events = SSEParser().feed(sse.text)
            assert events[0].event == "next", sse.text
            out.append(orjson.loads(events[0].data)["errors"])
    return out


async def test_introspection_and_suggestions_can_be_turned_off_on_every_path(tmp_path: Path) -> None:
    server = make_server(tmp_path, introspection="off", suggestions="off")
    try:
        for query in INTROSPECTION:
            for errors in await errors_everywhere(server, query):
                assert errors[0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED", errors
                assert "introspection" in errors[0]["message"], errors
        for query, variables in ((TYPO, None), (ENUM_TYPO, {"o": ["CREATD"]})):
            for errors in await errors_everywhere(server, query, variables):
                assert "Did you mean" not in str(errors) and errors[0]["message"], errors
    finally:
        server.stop()


async def test_introspection_and_suggestions_default_on_in_demo_mode_off_with_auth(
    server: Server, auth_server: Server
) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        demo = (await client.post("/graphql", json={"query": INTROSPECTION[0]})).json()
        assert demo["data"]["__schema"]["queryType"]["name"] == "Query"
        typo = (await client.post("/graphql", json={"query": TYPO})).json()
        assert "Did you mean 'title'?" in typo["errors"][0]["message"]
    tok = token("ann", "acme")
    refused = (await call(auth_server, tok, INTROSPECTION[1])).json()
    assert refused["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "Did you mean" not in (await call(auth_server, tok, TYPO)).json()["errors"][0]["message"]


async def results_everywhere(server: Server, query: str, tok: str | None) -> list[dict[str, Any]]:
    """What ``query`` answers, with the token or without, over HTTP POST and GET, graphql-transport-ws and SSE."""
    headers = {"authorization": f"Bearer {tok}"} if tok else {}
    body = {"query": query}
    out: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=10, headers=headers) as client:
        out.append((await client.post("/graphql", json=body)).json())  # the engine's path
        out.append((await client.get("/graphql", params=body, headers={"accept": "application/json"})).json())
        ws = await WS.open(server.ws_url)
        try:
            assert (await ws.init(headers))["type"] == "connection_ack"
            await ws.subscribe("1", query)
            message = await ws.recv()
            out.append({"errors": message["payload"]} if message["type"] == "error" else message["payload"])
        finally:
            await ws.close()
        sse = await client.post("/graphql", json=body, headers={"accept": "text/event-stream"})
        if sse.status_code == 400:
            out.append(sse.json())
        else:
            events = SSEParser().feed(sse.text)
            assert events[0].event == "next", sse.text
            out.append(orjson.loads(events[0].data))
    return out


async def test_introspection_authenticated_answers_callers_with_a_token_and_refuses_the_rest(tmp_path: Path) -> None:
    # Anonymous callers allowed (--anonymous on), so theirs reach validation rather than a 401.
    server = make_server(tmp_path, jwt_secret=SECRET, introspection="authenticated", anonymous="on")
    try:
        tok = token("ann", "acme")
        # One cached document per text, judged per caller: anonymous first, then with a token, and the reverse.
        for query, callers in zip(INTROSPECTION, ((None, tok), (tok, None)), strict=True):
            for caller in callers:
                for answer in await results_everywhere(server, query, caller):
                    if caller is None:
                        assert "data" not in answer or answer["data"] is None, answer
                        assert [e["extensions"]["code"] for e in answer["errors"]] == (
                            ["GRAPHQL_VALIDATION_FAILED"] * len(answer["errors"])
                        ), answer
                        assert "introspection has been disabled" in answer["errors"][0]["message"], answer
                    else:
                        assert "errors" not in answer and answer["data"], answer
        # What is not introspection runs for both, and suggestions stay off with auth.
        for caller in (None, tok):
            for answer in await results_everywhere(server, "{ tasks { id } }", caller):
                assert "errors" not in answer and answer["data"] == {"tasks": []}, answer
        typo = (await call(server, tok, TYPO)).json()
        assert "Did you mean" not in typo["errors"][0]["message"]
    finally:
        server.stop()


async def test_a_refused_named_operation_answers_its_errors_not_unknown_operation(tmp_path: Path) -> None:
    # GraphiQL names its schema fetch: with introspection off it must read the refusal, not a 400 text.
    server = make_server(tmp_path, introspection="off")
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            for query, word in (("query Schema { __schema { queryType { name } } }", "introspection"), (
                "query Typo { tasks { titel } }", "Cannot query field"
            )):  # fmt: skip
                body = {"query": query, "operationName": query.split()[1]}
                for response in (
                    await client.post("/graphql", json=body),
                    await client.get("/graphql", params=body, headers={"accept": "application/json"}),
                ):
                    answer = response.json()
                    assert response.status_code == 200 and answer["data"] is None, answer
                    assert answer["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED", answer
                    assert word in answer["errors"][0]["message"], answer
    finally:
        server.stop()


def test_introspection_setting_says_what_it_takes() -> None:
    assert Settings(introspection="authenticated", jwt_secret=SECRET).introspection_mode() == "authenticated"
    assert Settings(jwt_secret=SECRET).introspection_mode() == "off"
    assert Settings().introspection_mode() == "on"
    with pytest.raises(ConfigurationError, match="needs a JWT secret or key"):
        Settings(introspection="authenticated").introspection_mode()
    with pytest.raises(ConfigurationError, match="auto, on, off or authenticated, got 'users'"):
        Settings(introspection="users").introspection_mode()


async def test_depth_limit_counts_introspection_fields(tmp_path: Path) -> None:
    from graphql import get_introspection_query

    server = make_server(tmp_path, max_depth=3)
    try:
        deep = "{ __schema { types { fields { type { name } } } } }"
        for errors in await errors_everywhere(server, deep):
            assert errors[0]["message"] == "'anonymous' exceeds maximum operation depth of 3", errors
        shallow = "{ __schema { types { fields { name } } } }"
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert "errors" not in (await client.post("/graphql", json={"query": shallow})).json()
    finally:
        server.stop()
    # The ofType chain of a type reference counts once: the query GraphiQL and codegen send passes.
    (tmp_path / "default").mkdir()
    server = make_server(tmp_path / "default")
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            full = (await client.post("/graphql", json={"query": get_introspection_query()})).json()
        assert "errors" not in full and full["data"]["__schema"]["types"]
    finally:
        server.stop()
