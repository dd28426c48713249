"""The playground: GraphiQL from assets in the package, in a real headless Chromium that may reach only 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import parse, validate

from tests.support.browsers import Offline, offline_chromium, watched_page
from tests.support.servers import Server, gql_post, make_server, wait_subscribers
from tidings.engine.build import build_schema
from tidings.model.collection import JSON, collection, collections_from
from tidings.model.loading import load_channels, load_collections
from tidings.playground import example_tabs
from tidings.playground.chat import ChatModel, chat_model
from tidings.resolvers.channels import CHANNEL_MUTATIONS, CHANNEL_SUBSCRIPTIONS

SECRET = "playground-test-secret-of-at-least-32-bytes"
ROOMS = str(Path(__file__).resolve().parent.parent / "examples" / "rooms" / "collections.toml")
RESULT = ".result-window .CodeMirror"
# -- without a browser ---------------------------------------------------------


class Level(enum.Enum):
    LOW = "low"
    HIGH = "high"


@collection
class Reading:
    """Every kind of field, all required: the example mutation must give each a valid literal."""

    label: str
    count: int
    ratio: float
    ok: bool
    at: dt.datetime
    level: Level
    data: JSON


def test_examples_are_valid_operations_for_every_field_kind() -> None:
    for collections, count in ((collections_from([Reading]), 3), (collections_from(_demo()), 4)):
        channels = {"extra_mutations": CHANNEL_MUTATIONS, "extra_subscriptions": CHANNEL_SUBSCRIPTIONS}
        schema, _ = build_schema(collections, **channels)
        tabs = example_tabs(collections)
        assert len(tabs) == count
        for tab in tabs:
            assert validate(schema._schema, parse(tab["query"])) == [], tab["query"]
    tabs = example_tabs(collections_from(_demo()))
    assert "subscription TaskEvents" in tabs[0]["query"]
    assert 'createTask(input: {title: "hello"})' in tabs[1]["query"]
    # The demo's chat tab (its Room and ChatMessage): presence, channel events, typing, a message.
    chat = tabs[3]["query"]
    for name in ("subscription LobbyPresence", "subscription LobbyEvents", "mutation Typing", "createChatMessage"):
        assert name in chat


def _demo() -> list[Any]:
    from tidings.model.demo import COLLECTIONS

    return list(COLLECTIONS)


def test_the_chat_page_runs_on_the_rooms_example_when_its_relations_are_there(tmp_path: Path) -> None:
    assert chat_model(collections_from(_demo())) is ChatModel.DEMO
    rooms = load_collections(ROOMS)
    assert chat_model(rooms) is ChatModel.ROOMS
    assert chat_model([c for c in rooms if c.name != "Membership"]) is None
    # The names without the relations (a room named in a string) are not the rooms model.
    (tmp_path / "flat.toml").write_text(
        "[collections.Room.fields]\nname = 'String!'\nowner = 'String'\n"
        "[collections.Membership.fields]\nuserId = 'String!'\nroom = 'String!'\n"
        "[collections.Message.fields]\nbody = 'String!'\nauthor = 'String'\nroom = 'String!'\n"
    )
    assert chat_model(load_collections(str(tmp_path / "flat.toml"))) is None


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path, jwt_secret=SECRET)
    yield s
    s.stop()


@pytest.fixture
def introspectable_auth_server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path, jwt_secret=SECRET, introspection="authenticated")
    yield s
    s.stop()


async def test_page_and_assets_need_no_token_and_are_cached(auth_server: Server) -> None:
    async with httpx.AsyncClient(base_url=auth_server.url, timeout=10) as client:
        page = await client.get("/graphql", headers={"accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "connect-src 'self'" in page.headers["content-security-policy"]
        assert "unpkg" not in page.text and "jsdelivr" not in page.text and "https://" not in page.text
        config = json.loads(page.text.split('type="application/json">')[1].split("</script>")[0])
        assert config["auth"] is True and config["endpoint"] == "/graphql"
        assert "taskEvents" in config["tabs"][0]["query"]
        srcs = [part.split('"')[0] for part in page.text.split('="/playground/')[1:]]
        srcs.remove("chat")  # the link to the chat demo
        assert sorted(s.split("?")[0] for s in srcs) == ["playground.css", "playground.js"]
        for src in srcs:
            asset = await client.get(f"/playground/{src}")
            assert asset.status_code == 200
            assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
            kind = "text/javascript" if src.startswith("playground.js") else "text/css"
            assert asset.headers["content-type"] == f"{kind}; charset=utf-8"
            assert asset.headers["content-encoding"] == "gzip"  # httpx asks for it
            again = await client.get(f"/playground/{src}", headers={"if-none-match": asset.headers["etag"]})
            assert again.status_code == 304
        assert (await client.get("/playground/nothing.js")).status_code == 404
        # The data still needs a token.
        denied = await client.post("/graphql", json={"query": "{ tasks { id } }"})
        assert denied.status_code == 401
        assert denied.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        # Not a browser: a query by GET still runs as a query.
        assert (await client.get("/graphql", params={"query": "{ tasks { id } }"})).status_code == 401


async def test_chat_page_and_its_script_are_served_with_a_chat_model_only(auth_server: Server, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=auth_server.url, timeout=10) as client:
        playground = await client.get("/graphql", headers={"accept": "text/html"})
        assert '<a id="tidings-chat-link" href="/playground/chat">' in playground.text
        page = await client.get("/playground/chat")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["content-security-policy"].startswith("default-src 'self'; script-src 'self';")
        assert "https://" not in page.text and "http://" not in page.text
        config = json.loads(page.text.split('id="tidings-chat-config" type="application/json">')[1].split("</")[0])
        assert config == {"endpoint": "/graphql", "auth": True, "model": "demo"}
        [src] = [part.split('"')[0] for part in page.text.split('src="')[1:]]
        assert src.startswith("/playground/chat.js?v=")
        script = await client.get(src)
        assert script.status_code == 200
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert "graphql-transport-ws" in script.text
    # Collections other than the demo's: no chat page, no link.
    (tmp_path / "other").mkdir()
    other = make_server(tmp_path / "other", [Reading])
    try:
        async with httpx.AsyncClient(base_url=other.url, timeout=10) as client:
            assert "tidings-chat-link" not in (await client.get("/graphql", headers={"accept": "text/html"})).text
            assert (await client.get("/playground/chat")).status_code == 404
            assert (await client.get("/playground/chat.js")).status_code == 404
    finally:
        other.stop()


async def test_no_page_with_graphiql_off(tmp_path: Path) -> None:
    s = make_server(tmp_path, graphiql=False)
    try:
        async with httpx.AsyncClient(base_url=s.url, timeout=10) as client:
            page = await client.get("/graphql", headers={"accept": "text/html"})
            assert "tidings-config" not in page.text
            assert (await client.get("/playground/playground.js")).status_code == 404
    finally:
        s.stop()


# -- in Chromium -----------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[tuple[Any, Offline]]:
    async with offline_chromium() as pair:
        yield pair


async def open_page(context: Any, offline: Offline, server: Server, transport: str = "ws", page: Any = None) -> Any:
    """The playground of ``server`` (in ``page``, or a new one) with subscriptions over ``transport``."""
    if page is None:
        page = watched_page(offline, await context.new_page())
        await page.goto(f"{server.url}/graphql")
    await page.wait_for_selector(".graphiql-query-editor .CodeMirror")
    await page.click(f"#tidings-transport-{transport}")
    assert await page.evaluate("() => window.__tidingsPlayground.transport()") == transport
    return page


async def cm_value(page: Any, selector: str) -> str:
    return str(await page.evaluate("s => document.querySelector(s).CodeMirror.getValue()", selector))


async def type_authorization(page: Any, value: str) -> None:
    """Types ``{"Authorization": value}`` into GraphiQL's Headers editor, pasting the value as people do."""
    await page.click('.graphiql-editor-tools button[data-name="headers"]')
    editor = page.locator(".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror")
    await editor.click()
    await page.keyboard.press("Control+A")
    await page.keyboard.press("Delete")
    await page.keyboard.type('{"Authorization": "')
    await page.keyboard.insert_text(value)
    await page.keyboard.type('"}')
    # CodeMirror closes brackets and quotes as one types: check what it holds.
    assert json.loads(await editor.evaluate("e => e.CodeMirror.getValue()")) == {"Authorization": value}


async def run_tab(page: Any, name: str, authorization: str = "") -> None:
    """Opens GraphiQL tab ``name``, types the Authorization header (a tab change resets the editors), runs it."""
    await page.click(f'.graphiql-tab-button:text-is("{name}")')
    if authorization:
        await type_authorization(page, authorization)
    await page.click(".graphiql-execute-button")


async def result(page: Any, predicate: str, timeout: float = 10_000) -> Any:
    """The result pane's JSON, once ``predicate`` (a JS expression over ``r``) holds for it."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        await page.wait_for_function(
            f"""() => {{
                const text = document.querySelector('{RESULT}').CodeMirror.getValue();
                try {{ const r = JSON.parse(text); return {predicate}; }} catch {{ return false; }}
            }}""",
            timeout=timeout,
        )
    except PlaywrightTimeout:
        shown = await cm_value(page, RESULT)
        raise AssertionError(f"the result pane never satisfied {predicate}; it shows {shown!r}") from None
    return json.loads(await cm_value(page, RESULT))


async def subscribe_then_mutate(
    context: Any, offline: Offline, server: Server, transport: str, authorization: str
) -> None:
    watcher = await open_page(context, offline, server, transport)
    await run_tab(watcher, "TaskEvents", authorization)
    try:
        await wait_subscribers(server, 1, timeout=10)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the result pane shows {await cm_value(watcher, RESULT)!r}") from None

    writer = await open_page(context, offline, server, transport)
    await run_tab(writer, "CreateTask", authorization)
    created = await result(writer, "r.data && r.data.createTask")
    assert created["data"]["createTask"]["title"] == "hello"

    event = await result(watcher, "r.data && r.data.taskEvents")
    assert event["data"]["taskEvents"]["operation"] == "CREATED"
    assert event["data"]["taskEvents"]["record"]["id"] == created["data"]["createTask"]["id"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_browser_subscription_sees_mutation_from_another_tab(
    server: Server, browser: tuple[Any, Offline], transport: str
) -> None:
    context, offline = browser
    await subscribe_then_mutate(context, offline, server, transport, authorization="")
    page = context.pages[0]
    assert "tidings token" in await page.inner_text("#tidings-auth-hint")
    if shot := os.environ.get("TIDINGS_PLAYGROUND_SCREENSHOT"):  # to look at the page: a .png path
        await page.screenshot(path=shot.replace(".png", f"-{transport}.png"))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_browser_token_in_headers_editor_reaches_every_transport(
    introspectable_auth_server: Server, browser: tuple[Any, Offline], transport: str
) -> None:
    context, offline = browser
    server = introspectable_auth_server
    token = server.tidings.authenticator.mint({"sub": "alice", "account": "acme"})
    await subscribe_then_mutate(context, offline, server, transport, authorization=f"Bearer {token}")
    # Introspection without the token failed; with it typed, docs and completion load.
    await context.pages[0].wait_for_function("() => window.__tidingsPlayground.hasSchema()")


SCHEMA_QUERY = "TidingsPlaygroundSchema"  # the operation name of the page's schema fetch


async def headers_shown(page: Any) -> Any:
    """What GraphiQL's Headers editor holds, as JSON."""
    await page.click('.graphiql-editor-tools button[data-name="headers"]')
    editor = page.locator(".graphiql-editor-tool .graphiql-editor:not(.hidden) .CodeMirror")
    return json.loads(await editor.evaluate("e => e.CodeMirror.getValue()"))


def is_schema_fetch(response: Any) -> bool:
    return response.request.method == "POST" and SCHEMA_QUERY in (response.request.post_data or "")


@pytest.mark.timeout(60)
async def test_browser_token_is_kept_across_reloads_and_tabs_and_nothing_shows_before_a_run(
    tmp_path: Path, browser: tuple[Any, Offline]
) -> None:
    context, offline = browser
    # --anonymous on: a request without a token reaches validation, where introspection is refused.
    server = make_server(tmp_path, jwt_secret=SECRET, introspection="authenticated", anonymous="on")
    try:
        token = server.tidings.authenticator.mint({"sub": "alice", "account": "acme"})
        page = watched_page(offline, await context.new_page())
        async with page.expect_response(is_schema_fetch) as fetched:
            await page.goto(f"{server.url}/graphql")
        await open_page(context, offline, server, page=page)
        refused = await (await fetched.value).json()
        assert "data" not in refused, refused  # application/graphql-response+json: a request error
        assert {e["extensions"]["code"] for e in refused["errors"]} == {"GRAPHQL_VALIDATION_FAILED"}
        assert "once the token is in Headers" in await page.inner_text("#tidings-auth-hint")

        await type_authorization(page, f"Bearer {token}")  # in the first tab only
        await page.wait_for_function("() => window.__tidingsPlayground.hasSchema()")  # docs, for the token
        # The refused fetch before it left nothing in the result pane: nothing has run.
        assert await cm_value(page, RESULT) == ""
        # GraphiQL keeps headers in localStorage (debounced): the active tab's and the last value.
        await page.wait_for_function(
            """t => Object.entries(localStorage).filter(([k, v]) => v.includes(t))
                .map(([k]) => k.split(':').pop()).sort().join() === 'headers,tabState'""",
            arg=token,
        )

        tabs = await page.locator(".graphiql-tab-button").all_inner_texts()
        await page.reload()
        await page.wait_for_selector(".graphiql-query-editor .CodeMirror")
        kept = {"Authorization": f"Bearer {token}"}
        assert await headers_shown(page) == kept
        await page.wait_for_function("() => window.__tidingsPlayground.hasSchema()")  # the kept token: docs again
        assert await cm_value(page, RESULT) == ""
        # Another tab has the token too: it runs without pasting it again.
        await run_tab(page, "CreateTask")
        created = await result(page, "r.data && r.data.createTask")
        assert created["data"]["createTask"]["title"] == "hello"
        assert await headers_shown(page) == kept
        assert await page.locator(".graphiql-tab-button").all_inner_texts() == tabs  # reopened, no extra one

        # The same introspection from this page without the token: refused by validation.
        anonymous = await page.evaluate(
            """q => fetch('/graphql', {method: 'POST', headers: {'content-type': 'application/json'},
                body: JSON.stringify({query: q})}).then((r) => r.json())""",
            "{ __schema { queryType { name } } }",
        )
        assert anonymous["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED", anonymous
    finally:
        server.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("transport", "authorization", "message", "extensions"),
    [
        ("ws", "", "WebSocket closed with 4403: A bearer token is required", {"closeCode": 4403}),
        ("ws", "Bearer nonsense", "WebSocket closed with 4403: Invalid token", {"closeCode": 4403}),
        ("sse", "", "A bearer token is required", {"code": "UNAUTHENTICATED", "status": 401}),
        ("sse", "Bearer nonsense", "Invalid token", {"code": "UNAUTHENTICATED", "status": 401}),
    ],
)
async def test_browser_refused_subscription_shows_the_error(
    auth_server: Server,
    browser: tuple[Any, Offline],
    transport: str,
    authorization: str,
    message: str,
    extensions: dict[str, Any],
) -> None:
    context, offline = browser
    page = await open_page(context, offline, auth_server, transport)
    assert not await page.evaluate("() => window.__tidingsPlayground.hasSchema()")
    assert "--introspection authenticated" in await page.inner_text("#tidings-auth-hint")  # off by default with auth
    assert await cm_value(page, RESULT) == ""  # nothing has run: nothing to show (no schema fetch either)
    await run_tab(page, "TaskEvents", authorization)
    shown = await result(page, "r.errors")
    [error] = shown["errors"]
    assert error["message"].startswith(message), error
    assert error["extensions"] == extensions
    # The run is over (no spinner, no silent retry): the button offers to run again.
    await page.wait_for_selector(".graphiql-execute-button[aria-label^='Execute']")
    assert auth_server.tidings.dispatcher.subscriber_count == 0


async def texts(page: Any, selector: str, expected: list[str]) -> None:
    """Wait until the elements ``selector`` finds hold exactly ``expected`` (their text, in order)."""
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        await page.wait_for_function(
            "([s, e]) => JSON.stringify([...document.querySelectorAll(s)].map((x) => x.textContent)) === e",
            arg=[selector, json.dumps(expected, ensure_ascii=False, separators=(",", ":"))],
        )
    except PlaywrightTimeout:
        shown = await page.locator(selector).all_text_contents()
        raise AssertionError(f"{selector}: {shown!r}, waiting for {expected!r}") from None


async def open_chat(
    context: Any, offline: Offline, server: Server, name: str, token: str | None, ready: str = "", link: str = ""
) -> Any:
    """A chat tab signed in as ``name``, once ``ready`` (a selector; default: in the lobby).

    From the playground's start page, or at ``link`` (a room's ``#room=<id>``) directly."""
    page = watched_page(offline, await context.new_page())
    if link:
        await page.goto(f"{server.url}/playground/chat{link}")
    else:
        await page.goto(f"{server.url}/graphql")
        await page.click("#tidings-chat-link")  # from the playground's start page
    await page.fill("#chat-name", name)
    assert await page.is_visible("#chat-token") is (token is not None)
    if token is not None:
        await page.fill("#chat-token", token)
    await page.click("#chat-join-button")
    await page.wait_for_selector(ready or f"#chat-status:text-is('In lobby as {name}')")
    return page


@pytest.mark.timeout(60)
@pytest.mark.parametrize("auth", [False, True], ids=["demo", "auth"])
async def test_browser_chat_page_two_tabs_see_each_other_typing_and_messages(
    tmp_path: Path, browser: tuple[Any, Offline], auth: bool
) -> None:
    context, offline = browser
    server = make_server(tmp_path, **({"jwt_secret": SECRET} if auth else {}))
    try:
        await chat_in_two_tabs(context, offline, server, auth)
    finally:
        server.stop()


async def chat_in_two_tabs(context: Any, offline: Offline, server: Server, auth: bool) -> None:
    mint = server.tidings.authenticator.mint
    tokens = [mint({"sub": sub, "account": "acme"}) if auth else None for sub in ("ann", "bea")]
    ann = await open_chat(context, offline, server, "Ann", tokens[0])
    bea = await open_chat(context, offline, server, "Bea", tokens[1])
    # Presence: each sees both members.
    for page in (ann, bea):
        await page.wait_for_selector("#chat-count:text-is('2')")
    assert sorted(await ann.locator(".chat-member").all_inner_texts()) == ["Ann", "Bea"]
    # Typing: Bea sees Ann typing (a channel event and her presence meta); Ann does not see herself.
    await ann.fill("#chat-input", "hel")  # fill fires the input event
    await bea.wait_for_selector("#chat-typing:text-is('Ann is typing…')")
    await bea.wait_for_selector(".chat-member:text-is('Ann ✎')")
    assert await ann.inner_text("#chat-typing") == ""
    # A message from Ann reaches Bea, once.
    await ann.fill("#chat-input", "hello from Ann")
    await ann.press("#chat-input", "Enter")
    for page in (bea, ann):
        await texts(page, ".chat-message", ["Ann hello from Ann"])
    await bea.wait_for_selector("#chat-typing:text-is('')")  # sending ends the typing
    # Ann closes her tab: Bea sees her leave.
    await ann.close()
    await bea.wait_for_selector("#chat-count:text-is('1')")
    assert await bea.locator(".chat-member").all_inner_texts() == ["Bea"]


@pytest.mark.timeout(60)
async def test_browser_chat_on_the_rooms_example_is_for_the_members_of_a_room(
    tmp_path: Path, browser: tuple[Any, Offline]
) -> None:
    context, offline = browser
    server = make_server(tmp_path, [*load_collections(ROOMS), *load_channels(ROOMS)], jwt_secret=SECRET)
    try:
        await rooms_chat(context, offline, server)
    finally:
        server.stop()


async def rooms_chat(context: Any, offline: Offline, server: Server) -> None:
    mint = server.tidings.authenticator.mint
    ann_token, bea_token, cy_token = (mint({"sub": sub, "account": "acme"}) for sub in ("ann", "bea", "cy"))
    signed_in = "#chat-status:text-is('Signed in as {}: create a room, or pick one you are a member of')"
    ann = await open_chat(context, offline, server, "Ann", ann_token, signed_in.format("ann"))
    bea = await open_chat(context, offline, server, "Bea", bea_token, signed_in.format("bea"))
    assert await ann.evaluate("window.__tidingsChat.config.model") == "rooms"
    # Ann creates a room: she owns it, and may add members.
    await ann.fill("#chat-new-room", "plans")
    await ann.press("#chat-new-room", "Enter")
    await ann.wait_for_selector("#chat-status:text-is('In plans as Ann')")
    await texts(ann, ".chat-roster-entry", ["ann (owner)"])
    await ann.fill("#chat-add-member", "bea")
    await ann.press("#chat-add-member", "Enter")
    await texts(ann, ".chat-roster-entry span", ["ann (owner)", "bea"])
    # Added, Bea has the room in her list (roomEvents: ENTERED) and opens it; neither manages it but Ann.
    await bea.click("#chat-rooms button:text-is('plans')")
    await bea.wait_for_selector("#chat-status:text-is('In plans as Bea')")
    await texts(bea, ".chat-roster-entry span", ["ann (owner)", "bea"])
    assert await bea.is_hidden("#chat-add-form") and await bea.locator(".chat-remove").count() == 0
    for page in (ann, bea):
        await page.wait_for_selector("#chat-count:text-is('2')")
    # Typing and messages both ways, on the room's channel and its messages.
    await ann.fill("#chat-input", "hel")
    await bea.wait_for_selector("#chat-typing:text-is('Ann is typing…')")
    await ann.fill("#chat-input", "hello Bea")
    await ann.press("#chat-input", "Enter")
    await texts(bea, ".chat-message", ["ann hello Bea"])
    await bea.wait_for_selector("#chat-typing:text-is('')")
    await bea.fill("#chat-input", "hi")
    await ann.wait_for_selector("#chat-typing:text-is('Bea is typing…')")
    await bea.fill("#chat-input", "hi Ann")
    await bea.press("#chat-input", "Enter")
    for page in (ann, bea):
        await texts(page, ".chat-message", ["ann hello Bea", "bea hi Ann"])
    # Bea deletes hers (by API): it leaves both pages (messageEvents DELETED).
    async with httpx.AsyncClient(base_url=server.url, headers={"authorization": f"Bearer {bea_token}"}) as http:
        mine = await gql_post(http, '{ messages(where: {author: {eq: "bea"}}) { id } }')
        deleted = await gql_post(
            http, "mutation($id: ID!) { deleteMessage(id: $id) { id } }", mine["data"]["messages"][0]
        )
        assert "errors" not in deleted, deleted
    for page in (ann, bea):
        await texts(page, ".chat-message", ["ann hello Bea"])
    # Cy, no member, opens the room's link: refused, and shown nothing of it.
    link = await ann.get_attribute("#chat-room-link", "href")
    assert link is not None and link.startswith("#room=")
    cy = await open_chat(context, offline, server, "Cy", cy_token, "#chat-status.error:has-text('FORBIDDEN')", link)
    assert await cy.inner_text("#chat-status") == "You are not a member of this room (FORBIDDEN)"
    assert "is for those who may read Room" in await cy.get_attribute("#chat-status", "title")
    assert await cy.locator(".chat-message, .chat-member, #chat-rooms button").count() == 0
    # Ann removes Bea: Bea's page says so and lets go of the room; Ann sees her leave.
    await ann.click(".chat-remove[data-user='bea']")
    await bea.wait_for_selector("#chat-status.error:has-text('You were removed from plans (FORBIDDEN)')")
    await ann.wait_for_selector("#chat-count:text-is('1')")
    await texts(ann, ".chat-roster-entry span", ["ann (owner)"])
    for selector in (".chat-message", ".chat-member", "#chat-rooms button"):
        await texts(bea, selector, [])
    assert await bea.is_disabled("#chat-input")
    assert await ann.inner_text("#chat-count") == "1"  # Cy never joined
