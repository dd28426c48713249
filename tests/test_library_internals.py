"""Every library internal tidings relies on, checked by name.

tidings goes past some libraries' public APIs where none of the same cost exists:
private attributes (Strawberry's ``schema._schema``, graphql-core's
``_relevant_sub_fields``, the asyncpg adapter's ``_handle_exception``), modules that are
not their package's public surface (``uvicorn.protocols.*``,
``graphql.execution.collect_fields``, ``strawberry.schema.schema``), and library classes
it subclasses, overriding methods the library calls back. An upgrade that renames or
reshapes one of these would otherwise fail deep inside a request, or not fail at all:
an override the library no longer calls, a memo reset on an attribute nobody reads.

This module exists so that such an upgrade fails here, by name: each test asserts that
one name still exists with the shape tidings uses, and its message names the tidings
file that relies on it. Pure and fast: no server, no database, no network.

redis-py, prometheus_client and httptools are used through public APIs only (httptools
through uvicorn's protocol, checked here).
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import inspect
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

# -- helpers -------------------------------------------------------------------------------


def _params(fn: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(fn).parameters)


@dataclasses.dataclass(frozen=True)
class Hook:
    """A library method tidings overrides (``exact``: it must accept what the library passes)
    or calls (the leading parameters it passes, positionally or by name)."""

    module: str
    owner: str
    name: str
    params: tuple[str, ...]
    user: str
    exact: bool = True

    @property
    def id(self) -> str:
        return ".".join(part for part in (self.module, self.owner, self.name) if part)


def _resolve(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


HOOKS = [
    # graphql-core's executor: tidings' subclasses override these, and call the others.
    Hook(
        "graphql.execution",
        "Executor",
        "execute_fields",
        ("self", "parent_type", "source_value", "path", "grouped_field_set", "position_context"),
        "tidings/schema/executor.py (Executor.execute_fields)",
    ),
    Hook(
        "graphql.execution",
        "Executor",
        "execute_field",
        ("self", "parent_type", "source", "field_details_list", "path", "position_context"),
        "tidings/realtime/live.py (LiveExecutor.execute_field)",
    ),
    Hook(
        "graphql.execution",
        "Executor",
        "build_resolve_info",
        ("self", "field_def", "field_nodes", "parent_type", "path"),
        "tidings/realtime/live.py (LiveExecutor.execute_field)",
        exact=False,
    ),
    Hook(
        "graphql.execution",
        "Executor",
        "complete_value",
        ("self", "return_type", "field_details_list", "info", "path", "result", "position_context"),
        "tidings/realtime/live.py (LiveExecutor.execute_field)",
        exact=False,
    ),
    Hook(
        "graphql.execution",
        "Executor",
        "handle_field_error",
        ("self", "raw_error", "return_type", "field_details_list", "path"),
        "tidings/schema/executor.py and tidings/realtime/live.py",
        exact=False,
    ),
    Hook(
        "graphql.execution",
        "Executor",
        "build_per_event_executor",
        ("self", "payload"),
        "tidings/realtime/group.py (render_view) and tidings/realtime/live.py (LiveGroup.render)",
        exact=False,
    ),
    Hook(
        "graphql.execution",
        "Executor",
        "execute_operation",
        ("self", "serially"),
        "tidings/realtime/live.py (LiveGroup.render)",
        exact=False,
    ),
    Hook(
        "graphql.execution",
        "",
        "execute_subscription_event",
        ("executor",),
        "tidings/realtime/group.py (render_view)",
        exact=False,
    ),
    # Strawberry: the schema and the ASGI view tidings subclasses.
    Hook(
        "strawberry",
        "Schema",
        "process_errors",
        ("self", "errors", "execution_context"),
        "tidings/engine/build.py (TidingsSchema.process_errors)",
    ),
    Hook(
        "strawberry",
        "Schema",
        "get_extensions",
        ("self", "sync"),
        "tidings/engine/build.py (TidingsSchema.get_extensions)",
    ),
    Hook(
        "strawberry.asgi",
        "GraphQL",
        "execute_single",
        ("self", "request", "request_adapter", "sub_response", "context", "root_value", "request_data"),
        "tidings/transports/http.py (HTTPView.execute_single)",
    ),
    Hook(
        "strawberry.asgi",
        "GraphQL",
        "process_result",
        ("self", "request", "result"),
        "tidings/transports/http.py (HTTPView.process_result)",
    ),
    Hook(
        "strawberry.asgi",
        "GraphQL",
        "decode_json",
        ("self", "data"),
        "tidings/transports/http.py (HTTPView.decode_json)",
    ),
    Hook(
        "strawberry.asgi",
        "GraphQL",
        "encode_json",
        ("self", "data"),
        "tidings/transports/http.py (HTTPView.encode_json)",
    ),
    Hook(
        "strawberry.asgi",
        "GraphQL",
        "get_context",
        ("self", "request", "response"),
        "tidings/transports/http.py (HTTPView.get_context)",
    ),
    # SQLAlchemy and its asyncpg adapter: tidings/store/insert.py's INSERT on the driver's connection.
    Hook("sqlalchemy.util", "", "await_", ("awaitable",), "tidings/store/insert.py (Insert.execute)"),
    Hook(
        "sqlalchemy.dialects.postgresql.asyncpg",
        "AsyncAdapt_asyncpg_connection",
        "_handle_exception",
        ("self", "error"),
        "tidings/store/batch.py (dbapi_error)",
    ),
    Hook(
        "sqlalchemy.exc",
        "DBAPIError",
        "instance",
        ("statement", "params", "orig", "dbapi_base_err"),
        "tidings/store/batch.py (dbapi_error)",
        exact=False,
    ),
    # uvicorn: the server and the protocols tidings subclasses.
    Hook(
        "uvicorn.protocols.websockets.websockets_sansio_impl",
        "WebSocketsSansIOProtocol",
        "keepalive_timeout",
        ("self",),
        "tidings/server.py (WebSocketProtocol.keepalive_timeout)",
    ),
    Hook(
        "uvicorn.protocols.websockets.websockets_sansio_impl",
        "WebSocketsSansIOProtocol",
        "send_receive_event_to_app",
        ("self",),
        "tidings/server.py (WebSocketProtocol.send_receive_event_to_app)",
    ),
    Hook(
        "uvicorn.protocols.http.h11_impl",
        "H11Protocol",
        "data_received",
        ("self", "data"),
        "tidings/serving.py (H11DeadlineProtocol.data_received)",
    ),
    Hook(
        "uvicorn.protocols.http.h11_impl",
        "H11Protocol",
        "on_response_complete",
        ("self",),
        "tidings/serving.py (H11DeadlineProtocol.on_response_complete)",
    ),
    Hook(
        "uvicorn.protocols.http.h11_impl",
        "H11Protocol",
        "connection_made",
        ("self", "transport"),
        "tidings/serving.py (_Deadline.connection_made)",
    ),
    Hook(
        "uvicorn.protocols.http.h11_impl",
        "H11Protocol",
        "connection_lost",
        ("self", "exc"),
        "tidings/serving.py (_Deadline.connection_lost)",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl",
        "HttpToolsProtocol",
        "on_message_begin",
        ("self",),
        "tidings/serving.py (HttpToolsDeadlineProtocol.on_message_begin)",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl",
        "HttpToolsProtocol",
        "on_headers_complete",
        ("self",),
        "tidings/serving.py (HttpToolsDeadlineProtocol.on_headers_complete)",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl",
        "HttpToolsProtocol",
        "on_message_complete",
        ("self",),
        "tidings/serving.py (HttpToolsDeadlineProtocol.on_message_complete)",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl",
        "HttpToolsProtocol",
        "_should_upgrade",
        ("self",),
        "tidings/serving.py (HttpToolsDeadlineProtocol.on_headers_complete)",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl",
        "HttpToolsProtocol",
        "connection_made",
        ("self", "transport"),
        "tidings/serving.py (_Deadline.connection_made)",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl",
        "HttpToolsProtocol",
        "connection_lost",
        ("self", "exc"),
        "tidings/serving.py (_Deadline.connection_lost)",
    ),
    Hook("uvicorn", "Server", "capture_signals", ("self",), "tidings/server.py (Server.capture_signals)"),
    Hook("uvicorn", "Server", "handle_exit", ("self", "sig", "frame"), "tidings/server.py (Server.capture_signals)"),
    Hook("uvicorn", "Server", "shutdown", ("self", "sockets"), "tidings/server.py (Server.shutdown)"),
    Hook("uvicorn", "Config", "bind_socket", ("self",), "tidings/workers.py (supervise)", exact=False),
    # websockets: the server protocol tidings swaps in under uvicorn's.
    Hook(
        "websockets.server",
        "ServerProtocol",
        "fail",
        ("self", "code", "reason"),
        "tidings/server.py (_ServerConnection.fail)",
    ),
    # Starlette: the CORS middleware whose decisions tidings' origin policy takes over.
    Hook(
        "starlette.middleware.cors",
        "CORSMiddleware",
        "is_allowed_origin",
        ("self", "origin"),
        "tidings/transports/origins.py (OriginCORS.is_allowed_origin)",
    ),
    Hook(
        "starlette.middleware.cors",
        "CORSMiddleware",
        "preflight_response",
        ("self", "request_headers"),
        "tidings/transports/origins.py (OriginCORS.preflight_response)",
    ),
]


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.id)
def test_hook_signature(hook: Hook) -> None:
    qualname = f"{hook.owner}.{hook.name}" if hook.owner else hook.name
    try:
        fn = _resolve(hook.module, qualname)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"{hook.module}.{qualname} is gone ({exc}); {hook.user} relies on it")
    assert callable(fn), f"{hook.module}.{qualname} is no longer callable; {hook.user} relies on it"
    found = tuple(_params(fn))
    shape = found if hook.exact else found[: len(hook.params)]
    assert shape == hook.params, (
        f"{hook.module}.{qualname} now takes {found}, tidings expects {hook.params}; {hook.user} relies on it"
    )


MODULE_PATHS = [
    ("graphql.execution.collect_fields", "GroupedFieldSet", "tidings/schema/executor.py"),
    ("graphql.execution.collect_fields", "FieldDetails", "tidings/schema/executor.py"),
    ("strawberry.schema.schema", "StrawberryGraphQLCoreExecutionContext", "tidings/schema/executor.py"),
    ("strawberry.execution", "optimized_is_awaitable", "tidings/engine/runner.py"),
    ("strawberry.resolvers", "is_default_resolver", "tidings/engine/build.py"),
    ("strawberry.types.base", "StrawberryObjectDefinition", "tidings/engine/build.py"),
    ("strawberry.extensions.directives", "DirectivesExtension", "tidings/engine/build.py"),
    ("strawberry.extensions.directives", "DirectivesExtensionSync", "tidings/engine/build.py"),
    ("strawberry.types.graphql", "OperationType", "tidings/metrics.py"),
    ("sqlalchemy.util", "await_", "tidings/store/insert.py"),
    ("sqlalchemy.dialects.postgresql.asyncpg", "AsyncAdapt_asyncpg_connection", "tidings/store/batch.py"),
    ("uvicorn.protocols.websockets.websockets_sansio_impl", "WebSocketsSansIOProtocol", "tidings/server.py"),
    ("uvicorn.protocols.http.h11_impl", "H11Protocol", "tidings/serving.py"),
    ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol", "tidings/serving.py"),
    ("uvicorn.server", "ServerState", "tidings/server.py (uvicorn builds its protocols with it)"),
    ("websockets.server", "ServerProtocol", "tidings/server.py"),
    ("websockets.protocol", "State", "tidings/server.py"),
]


@pytest.mark.parametrize(("module", "name", "user"), MODULE_PATHS, ids=[f"{m}.{n}" for m, n, _ in MODULE_PATHS])
def test_module_path(module: str, name: str, user: str) -> None:
    try:
        imported = importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"module {module} is gone ({exc}); {user} imports {name} from it")
    assert hasattr(imported, name), f"{module}.{name} is gone; {user} imports it from there"


# -- graphql-core ------------------------------------------------------------------------


SDL = """
type Query { item: Item }
type Item { name: String, tags: [Tag] }
type Tag { label: String }
type Subscription { item: Item }
"""


def test_graphql_relevant_sub_fields_is_the_memo_per_event_copies_share() -> None:
    """tidings/realtime/group.py and live.py reset ``_relevant_sub_fields`` on each per-event copy:
    graphql-core memoizes sub-field collection there, keyed by lists made anew per event, and
    the shallow copy shares the subscription's dict, which would grow with every event."""
    from graphql import build_schema, parse
    from graphql.execution import Executor, execute_subscription_event

    user = "tidings/realtime/group.py (render_view) and tidings/realtime/live.py (LiveGroup.render)"
    built = Executor.build(build_schema(SDL), parse("subscription { item { name tags { label } } }"))
    assert isinstance(built, Executor)
    memo = getattr(built, "_relevant_sub_fields", None)
    assert isinstance(memo, dict), f"graphql-core's Executor._relevant_sub_fields is gone; {user} resets it"
    per_event = built.build_per_event_executor({"item": {"name": "a", "tags": [{"label": "x"}]}})
    assert per_event._relevant_sub_fields is memo, (
        f"per-event executors no longer share _relevant_sub_fields (the reset in {user} may go)"
    )
    per_event._relevant_sub_fields = {}
    result: Any = execute_subscription_event(per_event)
    assert result.errors is None and result.data == {"item": {"name": "a", "tags": [{"label": "x"}]}}
    assert per_event._relevant_sub_fields, (
        f"graphql-core no longer memoizes sub-fields in _relevant_sub_fields: {user} resets a dead attribute"
    )
    assert memo == {}, "the per-event reset no longer keeps the subscription's memo from growing"


def test_graphql_grouped_field_set_shape() -> None:
    """tidings/schema/executor.py plans leaves from ``GroupedFieldSet``: response key -> [FieldDetails(node)]."""
    from graphql import FieldNode, build_schema, parse
    from graphql.execution import Executor

    seen: list[Any] = []

    class Spy(Executor[Any]):
        def execute_fields(self, parent_type: Any, source_value: Any, path: Any, grouped: Any, position: Any) -> Any:
            seen.append(grouped)
            return super().execute_fields(parent_type, source_value, path, grouped, position)

    built = Spy.build(build_schema(SDL), parse("{ item { name } }"), root_value={"item": {"name": "a"}})
    assert isinstance(built, Executor)
    result: Any = built.execute_operation()
    assert result.data == {"item": {"name": "a"}}
    user = "tidings/schema/executor.py (_leaves)"
    assert seen, f"graphql-core no longer calls Executor.execute_fields; {user} overrides it"
    grouped = seen[-1]
    assert isinstance(grouped, dict), f"GroupedFieldSet is no longer a dict of response keys; {user} reads it so"
    details = grouped["name"]
    assert isinstance(details, list) and isinstance(details[0].node, FieldNode), (
        f"GroupedFieldSet values are no longer lists of FieldDetails with a .node; {user} reads details[0].node"
    )


def test_graphql_execute_takes_an_executor_class_and_custom_args() -> None:
    """tidings/engine/runner.py (Engine._execute) runs ``graphql.execute`` with tidings' executor,
    Strawberry's ``is_awaitable`` and ``operation_extensions`` passed through to the executor."""
    import graphql

    params = inspect.signature(graphql.execute).parameters
    user = "tidings/engine/runner.py (Engine._execute)"
    for name in ("executor_class", "is_awaitable", "context_value", "variable_values", "operation_name"):
        assert name in params, f"graphql.execute no longer takes {name}=; {user} passes it"
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), (
        f"graphql.execute no longer passes extra keywords to the executor; {user} passes operation_extensions="
    )


# -- Strawberry ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tidings_schema() -> Any:
    from tidings.engine.build import build_schema
    from tidings.model.collection import collections_from
    from tidings.model.demo import COLLECTIONS

    return build_schema(collections_from(COLLECTIONS))[0]


def test_strawberry_schema_has_its_graphql_core_schema_as_schema(tidings_schema: Any) -> None:
    """tidings/engine/runner.py validates, executes and subscribes against ``schema._schema``."""
    from graphql import GraphQLSchema

    inner = getattr(tidings_schema, "_schema", None)
    user = "tidings/engine/runner.py (Engine: validate, execute, Executor.build, subscription_type)"
    assert isinstance(inner, GraphQLSchema), f"strawberry.Schema._schema is no longer a GraphQLSchema; {user}"
    assert inner.subscription_type is not None and "taskEvents" in inner.subscription_type.fields, (
        f"strawberry.Schema._schema no longer holds the schema's subscriptions; {user}"
    )


def test_strawberry_execution_context_takes_operation_extensions() -> None:
    """tidings/schema/executor.py subclasses Strawberry's graphql-core execution context, which
    takes ``operation_extensions`` (tidings/engine/runner.py passes them) and keeps them for ``Info``."""
    from graphql import build_schema, parse
    from graphql.execution import Executor
    from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

    from tidings.schema.executor import Executor as FieldExecutor

    user = "tidings/schema/executor.py (Executor) and tidings/engine/runner.py (operation_extensions=)"
    assert issubclass(StrawberryGraphQLCoreExecutionContext, Executor), (
        f"Strawberry's execution context no longer extends graphql-core's Executor; {user}"
    )
    built = FieldExecutor.build(build_schema(SDL), parse("{ item { name } }"), operation_extensions={"a": 1})
    assert getattr(built, "operation_extensions", None) == {"a": 1}, (
        f"Strawberry's execution context no longer takes operation_extensions; {user}"
    )


def test_strawberry_default_resolvers_are_marked_and_replaced(tidings_schema: Any) -> None:
    """tidings/engine/build.py replaces the resolvers Strawberry marks default (``_is_default``,
    read through ``strawberry.resolvers.is_default_resolver``) with direct attribute reads,
    found through ``schema.schema_converter.type_map``; ``_attribute`` sets the same mark."""
    from strawberry.resolvers import is_default_resolver

    user = "tidings/engine/build.py (_direct_resolvers, _attribute)"

    def marked() -> None: ...

    marked._is_default = True  # type: ignore[attr-defined]
    assert is_default_resolver(marked) and not is_default_resolver(lambda: None), (
        f"strawberry.resolvers.is_default_resolver no longer reads _is_default; {user} sets and reads it"
    )
    converter = tidings_schema.schema_converter
    concrete = converter.type_map.get("Task")
    assert concrete is not None and hasattr(concrete, "definition") and hasattr(concrete, "implementation"), (
        f"strawberry's schema_converter.type_map no longer holds (definition, implementation) types; {user}"
    )
    title = tidings_schema._schema.type_map["Task"].fields["title"]
    assert getattr(title.resolve, "attribute", None) == "title", (
        f"Task.title kept Strawberry's resolver: its default-resolver mark or field attributes changed; {user}"
    )


def test_strawberry_execution_context_fields() -> None:
    """The extensions read these off Strawberry's ExecutionContext."""
    from strawberry.types import ExecutionContext

    fields = {f.name for f in dataclasses.fields(ExecutionContext)}
    for name in ("result", "schema", "context", "graphql_document", "operation_type", "operation_name"):
        assert name in fields or hasattr(ExecutionContext, name), (
            f"strawberry ExecutionContext.{name} is gone; tidings/schema/extensions.py, tidings/limits.py "
            "(RateLimit) and tidings/metrics.py (MutationCounter) read it"
        )


# -- SQLAlchemy and asyncpg ------------------------------------------------------------------


def test_sqlalchemy_asyncpg_adapter_translates_driver_errors() -> None:
    """tidings/store/insert.py and batch.py runs INSERTs on asyncpg's connection itself and raises its errors as
    SQLAlchemy would: the adapter's ``_handle_exception`` translates, ``DBAPIError.instance`` wraps.
    Without it a unique violation would no longer surface as ``sa.exc.IntegrityError``."""
    import asyncpg
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection, PGDialect_asyncpg

    from tidings.store.batch import dbapi_error

    class Driver:  # an open asyncpg connection, as far as the adapter asks
        def is_closed(self) -> bool:
            return False

    dbapi = PGDialect_asyncpg.import_dbapi()
    adapter = AsyncAdapt_asyncpg_connection(dbapi, Driver())
    conn = types.SimpleNamespace(
        connection=types.SimpleNamespace(dbapi_connection=adapter),
        dialect=types.SimpleNamespace(loaded_dbapi=dbapi),
        invalidated=False,
    )
    error = dbapi_error(conn, "INSERT", [1], asyncpg.UniqueViolationError("duplicate key value"))  # type: ignore[arg-type]
    assert isinstance(error, sa.exc.IntegrityError), (
        f"asyncpg's UniqueViolationError became {error!r}, not sa.exc.IntegrityError: "
        "AsyncAdapt_asyncpg_connection._handle_exception changed; tidings/store/batch.py (dbapi_error) relies on it"
    )


def test_sqlalchemy_await_needs_the_greenlet() -> None:
    """tidings/store/insert.py awaits asyncpg from the greenlet SQLAlchemy runs sync code in."""
    import sqlalchemy as sa
    from sqlalchemy.util import await_

    async def nothing() -> None: ...

    with pytest.raises(sa.exc.MissingGreenlet):
        await_(nothing())


# -- uvicorn, websockets, h11 ----------------------------------------------------------------


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _protocol(cls: type, loop: asyncio.AbstractEventLoop, **config: Any) -> Any:
    """A protocol instance as uvicorn builds one per connection (no socket, no server)."""
    import uvicorn
    from uvicorn.server import ServerState

    async def app(scope: Any, receive: Any, send: Any) -> None: ...

    options: dict[str, Any] = {"log_config": None, "lifespan": "off", **config}
    return cls(config=uvicorn.Config(app, **options), server_state=ServerState(), app_state={}, _loop=loop)


def test_uvicorn_websocket_protocol_attributes(loop: asyncio.AbstractEventLoop) -> None:
    """tidings/server.py's WebSocketProtocol replaces uvicorn's keepalive timeout and its answer
    to a text message that is not UTF-8 with its own, using the protocol's state, and swaps
    websockets' ServerProtocol class under it."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    from tidings.server import WebSocketProtocol, _ServerConnection

    user = "tidings/server.py (WebSocketProtocol)"
    protocol = _protocol(WebSocketProtocol, loop, ws=WebSocketProtocol)
    for name in (
        "conn",
        "transport",
        "queue",
        "loop",
        "pong_timer",
        "pending_ping_payload",
        "close_sent",
        "read_paused",
        "close_timer",
        "close_timeout",
        "frames",
        "curr_msg_data_type",
        "client",
        "handle_parser_exception",
    ):
        assert hasattr(protocol, name), f"uvicorn's WebSocketsSansIOProtocol no longer has .{name}; {user} uses it"
    assert isinstance(protocol.queue, asyncio.Queue), f"uvicorn's protocol .queue is no longer a Queue; {user}"
    assert type(protocol.conn) is _ServerConnection, f"uvicorn's protocol .conn is no longer websockets'; {user}"
    assert "self.keepalive_timeout" in inspect.getsource(WebSocketsSansIOProtocol.send_keepalive_ping), (
        f"uvicorn no longer schedules keepalive_timeout after a ping; {user} overrides it"
    )
    for handler in (WebSocketsSansIOProtocol.handle_text, WebSocketsSansIOProtocol.handle_cont):
        assert "self.send_receive_event_to_app()" in inspect.getsource(handler), (
            f"uvicorn no longer hands a message to the app through send_receive_event_to_app; {user} overrides it"
        )


def test_websockets_fail_is_how_an_oversized_message_closes() -> None:
    """tidings/server.py's _ServerConnection rewrites the 1009 close reason in ``fail``."""
    from websockets.frames import Frame, Opcode
    from websockets.protocol import State

    from tidings.server import MESSAGE_TOO_LARGE_REASON, _ServerConnection

    conn = _ServerConnection(state=State.OPEN, max_size=10)
    conn.receive_data(Frame(Opcode.TEXT, b"x" * 100).serialize(mask=True))
    assert conn.close_sent is not None and conn.close_sent.code == 1009, "websockets no longer closes 1009"
    assert conn.close_sent.reason == MESSAGE_TOO_LARGE_REASON, (
        "websockets no longer closes an oversized message through ServerProtocol.fail; "
        "tidings/server.py (_ServerConnection.fail) overrides it"
    )
    assert conn.state is State.CLOSING and conn.data_to_send(), "websockets' send_close/data_to_send/state changed"


def _deadline_names() -> set[str]:
    from tidings.serving import H11DeadlineProtocol, _Deadline

    own = {n for n in vars(_Deadline) if not n.startswith("__")} | set(vars(_Deadline).get("__annotations__", {}))
    own -= {"connection_made", "connection_lost", "transport", "client"}  # overridden / read on purpose
    return own | {n for n in vars(H11DeadlineProtocol) if n.startswith("_") and not n.startswith("__")}


def test_uvicorn_h11_protocol_state(loop: asyncio.AbstractEventLoop) -> None:
    """tidings/serving.py's H11DeadlineProtocol reads h11's state off uvicorn's ``conn``, and its
    own names must not shadow uvicorn's."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    user = "tidings/serving.py (H11DeadlineProtocol, _Deadline)"
    protocol = _protocol(H11Protocol, loop, http="h11")
    assert isinstance(protocol.conn, h11.Connection), f"uvicorn's H11Protocol.conn is no longer h11's; {user}"
    assert protocol.conn.their_state is h11.IDLE and protocol.conn.trailing_data == (b"", False), (
        f"h11's Connection.their_state/trailing_data changed; {user} reads them"
    )
    assert h11.SEND_BODY is not h11.IDLE
    for name in _deadline_names():
        assert not hasattr(H11Protocol, name) and name not in vars(protocol), (
            f"uvicorn's H11Protocol now has its own {name}; {user} defines one of that name"
        )


def test_uvicorn_httptools_protocol_state(loop: asyncio.AbstractEventLoop) -> None:
    """tidings/serving.py's HttpToolsDeadlineProtocol asks uvicorn's parser whether a request upgrades."""
    pytest.importorskip("httptools")
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    user = "tidings/serving.py (HttpToolsDeadlineProtocol, _Deadline)"
    protocol = _protocol(HttpToolsProtocol, loop, http="httptools")
    assert callable(getattr(protocol.parser, "should_upgrade", None)), (
        f"uvicorn's HttpToolsProtocol.parser.should_upgrade is gone; {user} calls it"
    )
    for name in _deadline_names():
        assert not hasattr(HttpToolsProtocol, name) and name not in vars(protocol), (
            f"uvicorn's HttpToolsProtocol now has its own {name}; {user} defines one of that name"
        )


def test_uvicorn_server_and_config() -> None:
    """tidings/server.py's Server drains before uvicorn's shutdown; tidings/serving.py's options
    are uvicorn.Config's keywords."""
    import uvicorn

    from tidings.config import Settings
    from tidings.serving import uvicorn_options

    user = "tidings/server.py (Server)"
    assert "self.capture_signals()" in inspect.getsource(uvicorn.Server.serve), (
        f"uvicorn.Server.serve no longer enters capture_signals(); {user} overrides it"
    )
    config = uvicorn.Config(lambda: None, log_config=None, timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    for name in ("force_exit", "started", "config"):
        assert hasattr(server, name), f"uvicorn.Server no longer has .{name}; {user} uses it"
    assert "self.servers" in inspect.getsource(uvicorn.Server.startup), (
        f"uvicorn.Server no longer keeps its listening servers in .servers; {user} closes them"
    )
    assert config.timeout_graceful_shutdown == 3, f"uvicorn.Config.timeout_graceful_shutdown changed; {user} sets it"
    accepted = inspect.signature(uvicorn.Config).parameters
    for name in uvicorn_options(Settings()):
        assert name in accepted, f"uvicorn.Config no longer takes {name}=; tidings/serving.py (uvicorn_options)"


# -- Starlette ---------------------------------------------------------------------------------


def test_starlette_cors_asks_tidings_origin_policy() -> None:
    """tidings/transports/origins.py's OriginCORS decides through Starlette's ``is_allowed_origin``
    and ``preflight_response``: if Starlette stopped calling them, its own (empty) list would decide."""
    from tidings.transports.origins import OriginCORS, OriginPolicy

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    cors = OriginCORS(app, policy=OriginPolicy.parse("https://a.example", auth_enabled=True), allow_methods=["*"])

    def call(method: str, origin: str) -> tuple[int, dict[bytes, bytes]]:
        headers = [(b"origin", origin.encode()), (b"host", b"api.example")]
        if method == "OPTIONS":
            headers.append((b"access-control-request-method", b"POST"))
        scope = {"type": "http", "method": method, "path": "/graphql", "headers": headers, "query_string": b""}
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        asyncio.run(cors(scope, receive, send))
        return sent[0]["status"], dict(sent[0]["headers"])

    user = "tidings/transports/origins.py (OriginCORS)"
    status, headers = call("GET", "https://a.example")
    assert headers.get(b"access-control-allow-origin") == b"https://a.example", (
        f"Starlette's CORSMiddleware no longer asks is_allowed_origin for a simple request; {user}"
    )
    status, headers = call("OPTIONS", "https://a.example")
    assert status == 200 and headers.get(b"access-control-allow-origin") == b"https://a.example", (
        f"Starlette's CORSMiddleware no longer answers a preflight through preflight_response; {user}"
    )
    status, headers = call("OPTIONS", "https://evil.example")
    assert status == 400 and not any(k.startswith(b"access-control-") for k in headers), (
        f"Starlette's CORSMiddleware no longer refuses a preflight through preflight_response; {user}"
    )


def test_starlette_user_middleware() -> None:
    """tidings/app.py's _App counts ``user_middleware`` to know whether its shortcut still holds."""
    from starlette.applications import Starlette

    assert Starlette().user_middleware == [], "Starlette.user_middleware is gone; tidings/app.py (_App) reads it"
