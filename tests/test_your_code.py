"""Your own code beside the generated API, over a real server on SQLite and PostgreSQL: the kanban
example (examples/kanban) with transactions observed atomic by a live query and an event
subscriber, rules and errors inside transactions, your own subscriptions on every transport."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import strawberry

import tidings
from examples.kanban.app import app as KANBAN
from tests.support.authdemo import Note
from tests.support.backends import fresh_database
from tests.support.processes import TIDINGS, ServeProcess, popen_serve, serving
from tests.support.servers import Server, free_port, gql_post, make_server, until
from tests.support.wsclient import WS
from tests.test_auth import SECRET, token
from tests.test_live import LiveClient
from tests.test_readme import the_block
from tests.test_realtime_sse import read_events
from tidings.cli import main
from tidings.errors import ConfigurationError
from tidings.launch import build_app

pytestmark = pytest.mark.timeout(60)

BOARD = """query Board($b: String!) @live {
  cards(where: {boardId: {eq: $b}, archived: {eq: false}}, orderBy: [{columnId: ASC}, {position: ASC}], limit: 100) {
    id columnId position
  }
  open: cardsCount(where: {boardId: {eq: $b}, archived: {eq: false}})
}"""
PLAIN = BOARD.replace(" @live", "")
EVENTS = """subscription($b: String!) {
  cardEvents(where: {boardId: {eq: $b}}) { seq operation id record { columnId position archived } }
}"""
MOVE = """mutation($id: ID!, $c: ID!, $p: Int!, $v: Int) {
  moveCard(id: $id, columnId: $c, position: $p, expectedVersion: $v) { id columnId position version }
}"""


class Passes:
    """The dispatcher's passes, as the seqs each dispatched (observers, then the flush that ends one)."""

    def __init__(self) -> None:
        self.current: list[int] = []
        self.passes: list[list[int]] = []

    def observe(self, event: Any) -> None:
        self.current.append(event.seq)

    def flush(self) -> None:
        if self.current:
            self.passes.append(self.current)
            self.current = []

    def containing(self, seq: int) -> list[int]:
        return next(p for p in self.passes if seq in p)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def kanban(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("kanban")
    server = make_server(tmp, app=KANBAN, db=asyncio.run(fresh_database(request.param, tmp)))
    passes = Passes()

    async def watch() -> None:
        server.tidings.dispatcher.observers.append(passes.observe)
        server.tidings.dispatcher.flushers.append(passes.flush)

    server.call(watch())
    server.passes = passes  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
async def client(kanban: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=kanban.url, timeout=10) as http:
        yield http


async def ok(http: httpx.AsyncClient, query: str, **variables: Any) -> Any:
    body = await gql_post(http, query, variables)
    assert "errors" not in body, body
    return body["data"]


async def new_board(http: httpx.AsyncClient, cards: dict[str, int]) -> tuple[str, dict[str, str], list[list[str]]]:
    """A board with a column per ``cards`` key holding that many cards (positions 0, 1, ...)."""
    board = uuid.uuid4().hex
    columns: dict[str, str] = {}
    ids: list[list[str]] = []
    for n, (name, count) in enumerate(cards.items()):
        made = await ok(
            http,
            "mutation($b: String!, $n: String!, $p: Int!) { createColumn(input: {boardId: $b, name: $n, position: $p})"
            " { id } }",
            b=board,
            n=name,
            p=n,
        )
        columns[name] = made["createColumn"]["id"]
        ids.append([])
        for i in range(count):
            card = await ok(
                http,
                "mutation($i: CreateCardInput!) { addCard(input: $i) { id position } }",
                i={"boardId": board, "columnId": columns[name], "title": f"{name}{i}", "position": i},
            )
            ids[-1].append(card["addCard"]["id"])
    return board, columns, ids


async def head(server: Server) -> int:
    return int(server.call(server.tidings.store.last_seq()))


async def events_up_to(ws: WS, last: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while not got or int(got[-1]["seq"]) < last:
        message = await ws.recv()
        assert message["type"] == "next", message
        got.append(message["payload"]["data"]["cardEvents"])
    return got


async def test_each_move_is_one_live_revision_and_one_dispatch_pass_in_seq_order(
    kanban: Server, client: httpx.AsyncClient
) -> None:
    board, columns, (todo, _) = await new_board(client, {"todo": 4, "done": 1})
    live = await WS.open(kanban.ws_url)
    await live.init()
    await live.subscribe("1", BOARD, {"b": board})
    result = LiveClient()
    result.take((await live.recv())["payload"])
    assert result.data == await ok(client, PLAIN, b=board)
    events = await WS.open(kanban.ws_url)
    await events.init()
    await events.subscribe("e", EVENTS, {"b": board})
    await until(lambda: kanban.tidings.dispatcher.subscriber_count >= 1)
    moves = [(todo[0], columns["done"], 0), (todo[2], columns["todo"], 0), (todo[1], columns["done"], 9)]
    for card, column, position in moves:
        before = await head(kanban)
        moved = (await ok(client, MOVE, id=card, c=column, p=position))["moveCard"]
        after = await head(kanban)
        assert moved["columnId"] == column
        assert after - before >= 2  # the card and the cards renumbered around it
        # The live result: one revision, holding the whole move (never half of it).
        message = await live.recv()
        result.take(message["payload"])
        assert int(message["payload"]["extensions"]["seq"]) == after
        assert result.data == await ok(client, PLAIN, b=board)
        positions = {c["columnId"]: [] for c in result.data["cards"]}
        for c in result.data["cards"]:
            positions[c["columnId"]].append(c["position"])
        assert all(p == list(range(len(p))) for p in positions.values())
        # The event subscriber: every write of the move, consecutive seqs, in order, one dispatch pass.
        got = await events_up_to(events, after)
        assert [int(e["seq"]) for e in got] == list(range(before + 1, after + 1))
        assert {e["operation"] for e in got} == {"UPDATED"}
        assert kanban.passes.containing(after) == list(range(before + 1, after + 1))  # type: ignore[attr-defined]
    assert await live.no_message(0.2)
    await live.close()
    await events.close()


async def test_close_sprint_archives_every_open_card_in_one_revision(kanban: Server, client: httpx.AsyncClient) -> None:
    board, _, _ = await new_board(client, {"todo": 12, "doing": 8})
    live = await WS.open(kanban.ws_url, subprotocol="graphql-ws")  # the legacy protocol too
    await live.init()
    await live.subscribe("1", BOARD, {"b": board})
    result = LiveClient()
    result.take((await live.recv())["payload"])
    assert result.data["open"] == 20
    before = await head(kanban)
    closed = await ok(client, "mutation($b: ID!) { closeSprint(boardId: $b, sprint: 1) { sprint archived } }", b=board)
    assert closed["closeSprint"] == {"sprint": 1, "archived": 20}
    assert await head(kanban) == before + 20
    message = await live.recv()
    assert message["type"] == "data"
    result.take(message["payload"])
    assert result.data == {"cards": [], "open": 0}
    assert kanban.passes.containing(before + 20) == list(range(before + 1, before + 21))  # type: ignore[attr-defined]
    assert await live.no_message(0.2)
    await live.close()


async def test_a_move_that_raced_another_fails_conflict_and_writes_nothing(
    kanban: Server, client: httpx.AsyncClient
) -> None:
    board, columns, (todo,) = await new_board(client, {"todo": 3})
    card = await ok(client, "query($id: ID!) { card(id: $id) { version } }", id=todo[2])
    await ok(client, MOVE, id=todo[2], c=columns["todo"], p=0)  # someone else moved it first
    before = await head(kanban)
    body = await gql_post(client, MOVE, {"id": todo[2], "c": columns["todo"], "p": 1, "v": card["card"]["version"]})
    assert body["errors"][0]["extensions"]["code"] == "CONFLICT"
    assert await head(kanban) == before
    board_view = await ok(
        client, "query($b: ID!) { board(id: $b) { columns { name } cards { id position } } }", b=board
    )
    assert board_view["board"]["columns"] == [{"name": "todo"}]
    assert [c["id"] for c in board_view["board"]["cards"]] == [todo[2], todo[0], todo[1]]


# -- rules, hooks and errors inside a transaction -----------------------------------


hooks = tidings.Hooks()
HOOKED: list[tuple[str, str | None]] = []


@hooks.before_write
async def no_shouting(write: tidings.WriteInfo) -> None:
    HOOKED.append((write.action, write.id))
    if str(write.input.get("title", "")).isupper():
        raise tidings.BadUserInput("No shouting", field="title")


@strawberry.type
class NoteMutation:
    @strawberry.mutation
    async def retitle(
        self, info: tidings.Info, ids: list[strawberry.ID], title: str | None, expected_version: int | None = None
    ) -> list[Note]:
        async with tidings.transaction(info) as tx:
            staged = [await tx.update(Note, i, {"title": title}, expected_version=expected_version) for i in ids]
        return [s.record for s in staged]  # type: ignore[misc]


@strawberry.type
class NoteSubscription:
    @strawberry.subscription
    async def ticks(self, info: tidings.Info, count: int) -> AsyncGenerator[str, None]:
        for n in range(count):
            yield f"{info.context.principal.sub}:{n}"


NOTES = tidings.App(collections=[Note], hooks=hooks, mutations=[NoteMutation], subscriptions=[NoteSubscription])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def notes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("notes")
    db = asyncio.run(fresh_database(request.param, tmp))
    server = make_server(tmp, app=NOTES, db=db, jwt_secret=SECRET, rate_events=3.0, rate_events_burst=3)
    yield server
    server.stop()


async def as_user(server: Server, tok: str, query: str, **variables: Any) -> Any:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        return await gql_post(http, query, variables, headers={"authorization": f"Bearer {tok}"})


RETITLE = """mutation($ids: [ID!]!, $t: String, $v: Int) {
  retitle(ids: $ids, title: $t, expectedVersion: $v) { id title version }
}"""


async def test_transaction_writes_as_its_caller_through_rules_hooks_and_expected_version(notes: Server) -> None:
    alice, bob = token("alice", "acme"), token("bob", "acme")
    create = "mutation($t: String!) { createNote(input: {title: $t, owner: $o}) { id } }".replace("$o", '"%s"')
    mine = [(await as_user(notes, alice, create % "alice", t=f"a{i}"))["data"]["createNote"]["id"] for i in range(2)]
    theirs = (await as_user(notes, bob, create % "bob", t="b"))["data"]["createNote"]["id"]
    titles = "query($ids: [ID!]) { notes(where: {id: {in: $ids}}, orderBy: [{title: ASC}]) { title version } }"

    async def unchanged() -> None:
        found = await as_user(notes, alice, titles, ids=[*mine, theirs])
        assert found["data"]["notes"] == [
            {"title": "a0", "version": 1},
            {"title": "a1", "version": 1},
            {"title": "b", "version": 1},
        ]

    start = await head(notes)
    cases = [
        ({"ids": [*mine, theirs], "t": "x"}, "FORBIDDEN"),  # bob's note: the third write fails, the first two roll back
        ({"ids": mine, "t": "x", "v": 7}, "CONFLICT"),
        ({"ids": mine, "t": None}, "BAD_USER_INPUT"),  # title is required: checked before anything is written
        ({"ids": mine, "t": "LOUD"}, "BAD_USER_INPUT"),  # the before_write hook refuses
        ({"ids": [mine[0], uuid.uuid4().hex], "t": "x"}, "NOT_FOUND"),
    ]
    for variables, code in cases:
        body = await as_user(notes, alice, RETITLE, **variables)
        assert body["data"] is None
        assert [e["extensions"]["code"] for e in body["errors"]] == [code], body
        await unchanged()
        assert await head(notes) == start
    assert ("update", mine[0]) in HOOKED
    body = await as_user(notes, alice, RETITLE, ids=mine, t="done", v=1)
    assert body["data"]["retitle"] == [
        {"id": mine[0], "title": "done", "version": 2},
        {"id": mine[1], "title": "done", "version": 2},
    ]
    written = notes.call(notes.tidings.store.read_events(start))
    assert [(e.record_id, e.operation.value, e.actor) for e in written] == [
        (mine[0], "UPDATED", "alice"),
        (mine[1], "UPDATED", "alice"),
    ]
    assert written[1].seq == written[0].seq + 1  # rolled-back transactions may leave holes before, never inside


@pytest.mark.parametrize("transport", ["graphql-transport-ws", "graphql-ws", "sse"])
async def test_your_subscription_runs_as_the_caller_under_the_event_rate(notes: Server, transport: str) -> None:
    tok = token("carol", "acme")
    query = "subscription($n: Int!) { ticks(count: $n) }"
    if transport == "sse":
        async with (
            httpx.AsyncClient(base_url=notes.url, timeout=10) as http,
            http.stream(
                "POST",
                "/graphql",
                json={"query": query, "variables": {"n": 2}},
                headers={"accept": "text/event-stream", "authorization": f"Bearer {tok}"},
            ) as response,
        ):
            assert response.status_code == 200
            got = await read_events(response, 3)
        assert [e.event for e in got] == ["next", "next", "complete"]
        assert [json.loads(e.data)["data"]["ticks"] for e in got[:2]] == ["carol:0", "carol:1"]
        return
    ws = await WS.open(notes.ws_url, subprotocol=transport)
    assert (await ws.init({"token": tok, "authorization": f"Bearer {tok}"}))["type"] == "connection_ack"
    await ws.subscribe("1", query, {"n": 2})
    messages = [await ws.recv() for _ in range(3)]
    assert [m["type"] for m in messages] == (
        ["next", "next", "complete"] if transport == "graphql-transport-ws" else ["data", "data", "complete"]
    )
    assert [m["payload"]["data"]["ticks"] for m in messages[:2]] == ["carol:0", "carol:1"]
    # Over its event rate (3 at once, --rate-events-burst): it ends RATE_LIMITED, as a generated one would.
    await ws.subscribe("2", query, {"n": 10})
    messages = [await ws.recv() for _ in range(4)]
    assert [m["payload"]["data"]["ticks"] for m in messages[:3]] == ["carol:0", "carol:1", "carol:2"]
    assert messages[3]["type"] == "error"
    errors = messages[3]["payload"]
    assert errors[0]["extensions"]["code"] == "RATE_LIMITED"
    await ws.close()


async def test_your_subscription_needs_a_token_like_every_operation(notes: Server) -> None:
    ws = await WS.open(notes.ws_url)
    await ws.send({"type": "connection_init", "payload": {}})
    code, _ = await ws.closed()
    assert code == 4403


# -- merging -----------------------------------------------------------------------


@strawberry.type
class Clash:
    @strawberry.field
    def cards(self) -> int:
        return 0


@strawberry.type(name="CardEvent")
class Mine:
    n: int


@strawberry.type
class MineQuery:
    @strawberry.field
    def mine(self) -> Mine:
        return Mine(n=1)


def test_a_field_named_like_a_generated_one_fails_at_start_with_one_line(tmp_path: Path) -> None:
    settings = tidings.Settings(db=f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(ConfigurationError) as caught:
        tidings.create_app(settings=settings, app=tidings.App(collections=KANBAN.collections, queries=[Clash]))
    assert caught.value.message == (
        f"Query field 'cards' is defined twice: by your code ({__name__}.Clash.cards) and by tidings' "
        "generated API; rename yours (strawberry.field(name=...))"
    )


def test_a_type_named_like_a_generated_one_fails_at_start_with_one_line() -> None:
    with pytest.raises(ConfigurationError) as caught:
        tidings.export_schema(app=tidings.App(collections=KANBAN.collections, queries=[MineQuery]))
    assert "\n" not in caught.value.message
    assert caught.value.message.startswith("Type 'CardEvent' is defined twice (your code and tidings' generated API")


def test_one_app_declaration_serves_twice_in_one_process() -> None:
    # Each build generates its own types; the example's annotations name this build's.
    first = tidings.export_schema(app=KANBAN)
    assert tidings.export_schema(app=KANBAN) == first
    assert "moveCard(id: ID!, columnId: ID!, position: Int!, expectedVersion: Int = null): Card!" in first
    assert "addCard(input: CreateCardInput!): Card!" in first
    assert "type Board {\n  id: ID!\n  columns: [Column!]!\n  cards: [Card!]!\n}" in first


CLASHING = tidings.App(collections=KANBAN.collections, queries=[Clash])
ROOT = Path(__file__).resolve().parent.parent


def test_export_schema_prints_the_apps_sdl_and_refuses_what_serve_refuses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [TIDINGS, "export-schema", "--app", "examples.kanban.app:app"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == tidings.export_schema(app=KANBAN).strip()
    assert main(["export-schema", "--app", f"{__name__}:CLASHING"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"tidings: Query field 'cards' is defined twice: by your code ({__name__}.Clash.cards) and by "
        "tidings' generated API; rename yours (strawberry.field(name=...))"
    ]
    assert main(["migrate", "plan", "--app", "examples.kanban.app:app", "--db", f"sqlite:///{tmp_path / 'm.db'}"]) == 0
    assert "against examples.kanban.app:app:" in capsys.readouterr().out
    assert main(["export-schema", "--collections", "examples.kanban.app:app"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "tidings: --collections examples.kanban.app:app: that is an app, not collections; "
        "serve it with --app examples.kanban.app:app"
    ]


async def test_serve_app_gives_the_banner_your_fields_metrics_and_the_drain(tmp_path: Path) -> None:
    async with serving(tmp_path, tmp_path / "kanban.db", "--app", "examples.kanban.app:app") as served:
        await until(lambda: "GraphQL and the playground at" in served.text(), timeout=10)
        assert "  collections: Column, Card (examples.kanban.app:app)" in served.text().splitlines()
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
            board, columns, (todo, _) = await new_board(http, {"todo": 2, "done": 0})
            moved = await ok(http, MOVE, id=todo[1], c=columns["done"], p=0)
            assert moved["moveCard"]["columnId"] == columns["done"]
            assert (await http.get("/metrics")).status_code == 200
        ws = await WS.open(served.ws_url)
        await ws.init()
        await ws.subscribe(
            "s",
            "subscription($b: ID!) { standup(boardId: $b, count: 1000, every: 0.05) { n openCards } }",
            {"b": board},
        )
        assert (await ws.recv())["payload"]["data"]["standup"] == {"n": 1, "openCards": 2}
        served.proc.send_signal(signal.SIGTERM)
        code, _ = await ws.closed()
        assert code == 1012  # drained: clients reconnect to the next process
        assert await served.exit_status(15) == 0


@pytest.mark.timeout(120)
async def test_serve_app_with_workers_builds_it_in_every_process(tmp_path: Path) -> None:
    db = await fresh_database("postgresql", tmp_path)
    port = free_port()
    log = tmp_path / "workers.log"
    proc = popen_serve(
        log, port, "--workers", "2", "--db", db, "--app", "examples.kanban.app:app", "--log-level", "info"
    )
    served = ServeProcess(proc, port, log)
    try:
        await until(lambda: served.text().count("Application startup complete") == 2, timeout=60)
        async with httpx.AsyncClient(base_url=served.url, timeout=10) as http:
            _, columns, (todo,) = await new_board(http, {"todo": 3})
            for _ in range(4):  # new connections: the kernel hands them to either worker
                async with httpx.AsyncClient(base_url=served.url, timeout=10) as fresh:
                    moved = await ok(fresh, MOVE, id=todo[0], c=columns["todo"], p=2)
                    assert moved["moveCard"]["position"] == 2
        proc.send_signal(signal.SIGTERM)
        assert await served.exit_status(20) == 0
    finally:
        served.kill()


async def test_the_readmes_example_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / "board.py").write_text(the_block("Your own code", "python", "tidings.App("))
    spec = importlib.util.spec_from_file_location("readme_board", tmp_path / "board.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    server = make_server(tmp_path, app=module.app)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            ids = []
            for n in range(3):
                made = await ok(
                    http,
                    "mutation($i: CreateCardInput!) { addCard(input: $i) { id } }",
                    i={"columnId": "c", "title": f"t{n}", "position": n},
                )
                ids.append(made["addCard"]["id"])
            moved = await ok(http, "mutation($id: ID!) { moveCard(id: $id, position: 0) { id position } }", id=ids[2])
            assert moved["moveCard"] == [
                {"id": ids[2], "position": 0},
                {"id": ids[0], "position": 1},
                {"id": ids[1], "position": 2},
            ]
            column = await ok(http, '{ column(id: "c") { id } }')
            assert [c["id"] for c in column["column"]] == [ids[2], ids[0], ids[1]]
    finally:
        server.stop()
        del sys.modules[spec.name]


HOOKS_APP = """
import tidings

hooks = tidings.Hooks()


@hooks.before_write
async def refuse(write):
    raise tidings.Forbidden("read-only")


@tidings.collection
class Memo:
    text: str


app = tidings.create_app([Memo], hooks=hooks)
"""


def test_an_app_create_app_built_is_built_again_with_the_command_lines_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hooksapp.py").write_text(HOOKS_APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    asgi, collections = build_app(tidings.Settings(app="hooksapp:app", db=db))
    module = sys.modules["hooksapp"]
    assert [c.name for c in collections] == ["Memo"]
    assert asgi is not module.app
    assert asgi.state.tidings.settings.db == db
    assert asgi.state.tidings.hooks.hooks is module.hooks
    assert main(["export-schema", "--app", "hooksapp:app"]) == 0
    del sys.modules["hooksapp"]
