"""Builds the ASGI app: /graphql (HTTP, WebSocket, SSE), /healthz, GraphiQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import strawberry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from strawberry.asgi import GraphQL

from tidings.auth.principal import ANONYMOUS, Principal
from tidings.auth.rules import Authorizer
from tidings.auth.tokens import Authenticator, bearer
from tidings.config import Settings
from tidings.errors import ErrorCode, TidingsError
from tidings.pubsub import Broker, broker_from_url
from tidings.realtime.dispatcher import Dispatcher
from tidings.realtime.engine import Engine
from tidings.resolvers.context import Context, Services
from tidings.resolvers.session import RENEW_TOKEN
from tidings.schema.build import build_schema
from tidings.schema.collection import Collection
from tidings.store import Store
from tidings.transports.common import TransportContext, header
from tidings.transports.sse import SSEEndpoint
from tidings.transports.websocket import serve_websocket

logger = logging.getLogger("tidings")


class HTTPView(GraphQL[Context, None]):
    """Strawberry serves plain HTTP queries and mutations (and GraphiQL)."""

    services: Services

    async def get_context(self, request: Any, response: Any) -> Context:
        principal = request.scope.get("tidings.principal", ANONYMOUS)
        return Context(self.services, principal=principal, request=request, response=response)


class Tidings:
    """Everything one server process runs, wired together."""

    def __init__(self, collections: Sequence[Collection], settings: Settings, *, broker: Broker | None = None) -> None:
        self.settings = settings
        self.collections = list(collections)
        self.store = Store(settings.db, self.collections)
        self.broker = broker or broker_from_url(settings.broker)
        self.dispatcher = Dispatcher(
            self.store, self.broker, gap_check_interval=settings.gap_check_interval, channel=settings.channel
        )
        self.authenticator = Authenticator(
            secret=settings.jwt_secret,
            public_key=settings.jwt_public_key,
            algorithm=settings.jwt_algorithm,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            leeway=settings.jwt_leeway,
            claim_sub=settings.claim_sub,
            claim_account=settings.claim_account,
            claim_role=settings.claim_role,
        )
        self.authorizer = Authorizer.from_settings(self.collections, settings, auth_enabled=self.authenticator.enabled)
        self.schema, self.types = build_schema(
            self.collections, extra_mutations=[RENEW_TOKEN], max_depth=settings.max_depth
        )
        self.services = Services(
            store=self.store, publisher=self.dispatcher, authorizer=self.authorizer, max_limit=settings.max_limit
        )
        self.engine = Engine(
            self.schema, self.services, self.dispatcher, self.collections, max_depth=settings.max_depth
        )
        self.transport = TransportContext(settings, self.engine, self.authenticator)
        self.sse = SSEEndpoint(self.transport)
        self.http = HTTPView(
            self.schema, graphql_ide="graphiql" if settings.graphiql else None, allow_queries_via_get=True
        )
        self.http.services = self.services
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.store.start()
        await self.broker.start()
        await self.dispatcher.start()
        self._tasks = [
            asyncio.create_task(self._keepalive(), name="tidings-keepalive"),
            asyncio.create_task(self._prune(), name="tidings-retention"),
        ]
        if not self.authenticator.enabled:
            logger.warning("No JWT secret or key configured: the API is open to anyone (demo mode)")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.dispatcher.close()
        await self.broker.close()
        await self.store.close()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.settings.keepalive)
            for conn in list(self.transport.connections):
                conn.keepalive()

    async def _prune(self) -> None:
        s = self.settings
        while True:
            await asyncio.sleep(s.prune_interval)
            try:
                await self.prune()
            except Exception:
                logger.exception("Retention pass failed")

    async def prune(self) -> int:
        s = self.settings
        keep_after = (
            dt.datetime.now(dt.UTC) - dt.timedelta(seconds=s.retention_seconds) if s.retention_seconds else None
        )
        return await self.store.prune(keep_after=keep_after, keep_last=s.retention_events or None)

    # -- ASGI --------------------------------------------------------------------

    async def graphql(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await serve_websocket(self.transport, scope, receive, send)
            return
        accept = header(scope, b"accept") or ""
        is_sse = (
            scope["method"] in ("PUT", "DELETE")
            or "text/event-stream" in accept
            or header(scope, b"x-graphql-event-stream-token") is not None
        )
        if is_sse:
            await self.sse(scope, receive, send)
            return
        try:
            principal = self.http_principal(scope)
        except TidingsError as exc:
            status = 401 if exc.code is ErrorCode.UNAUTHENTICATED else 403
            response = JSONResponse({"errors": [{"message": exc.message, "extensions": exc.extensions}]}, status)
            await response(scope, receive, send)
            return
        scope["tidings.principal"] = principal
        await self.http(scope, receive, send)

    def http_principal(self, scope: dict[str, Any]) -> Principal:
        principal = self.authenticator.optional(bearer(header(scope, b"authorization")))
        self.authorizer.check_connect(principal)
        return principal


class _App(Starlette):
    """Starlette, with WebSocket connections to /graphql handed straight to tidings.

    A WebSocket lives for hours; going through the middleware stack would keep
    its frames (and their memory) alive for every connection, for nothing: CORS
    does not apply to WebSockets and the transport handles its own errors.
    """

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            path, root = scope["path"], scope.get("root_path", "")
            if (path[len(root) :] if root and path.startswith(root) else path) == "/graphql":
                scope["app"] = self
                await self.state.tidings.graphql(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class _GraphQLEndpoint:
    def __init__(self, tidings: Tidings) -> None:
        self.tidings = tidings

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.tidings.graphql(scope, receive, send)


def create_app(
    collections: Sequence[Any] | None = None, settings: Settings | None = None, *, broker: Broker | None = None
) -> Starlette:
    """The ASGI app for ``collections`` (declared classes or Collections; default the demo)."""
    from tidings.schema.collection import collections_from

    if collections is None:
        from tidings.schema.demo import COLLECTIONS

        collections = COLLECTIONS
    settings = settings or Settings.from_env()
    tidings = Tidings(collections_from(list(collections)), settings, broker=broker)

    async def healthz(_: StarletteRequest) -> Response:
        return JSONResponse({"status": "ok", "seq": str(tidings.dispatcher.position)})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await tidings.start()
        try:
            yield
        finally:
            await tidings.stop()

    cors = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    middleware = (
        [
            Middleware(
                CORSMiddleware, allow_origins=cors, allow_methods=["GET", "POST", "PUT", "DELETE"], allow_headers=["*"]
            )
        ]
        if cors
        else []
    )
    endpoint = _GraphQLEndpoint(tidings)
    app = _App(
        routes=[
            Route("/healthz", healthz),
            # WebSockets to /graphql never reach the router: _App hands them to tidings.
            Route("/graphql", endpoint, methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"]),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
    app.state.tidings = tidings
    return app


def export_schema(collections: Sequence[Any] | None = None) -> str:
    from tidings.schema.collection import collections_from

    if collections is None:
        from tidings.schema.demo import COLLECTIONS

        collections = COLLECTIONS
    schema, _ = build_schema(collections_from(list(collections)), extra_mutations=[RENEW_TOKEN])
    return strawberry.Schema.as_str(schema)
