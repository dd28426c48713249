"""Builds the ASGI app: /graphql (HTTP, WebSocket, SSE), /healthz, GraphiQL."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import strawberry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tidings.admin import Admin, admin_fields
from tidings.auth.channel_rules import Channel, ChannelRules, channels_from
from tidings.auth.permissions import Permissions
from tidings.auth.rules import Authorizer, Rules
from tidings.auth.tokens import Authenticator
from tidings.config import Settings
from tidings.declaration import App
from tidings.engine.build import YourCode, build_schema
from tidings.engine.documents import Documents
from tidings.engine.permissions import RulesReload
from tidings.engine.runner import Engine
from tidings.errors import ConfigurationError, Unavailable
from tidings.events import SystemEventKind
from tidings.hooks import CommitNotifier, HookRunner, Hooks
from tidings.limits import Limits
from tidings.metrics import (
    LatencyHistogram,
    Metrics,
    MetricsAccess,
    count_mutations,
    exposition,
    mutation_counter,
    registry_for,
)
from tidings.model.collection import Collection
from tidings.playground import ASSETS_PATH, Playground
from tidings.pubsub import Broker, broker_from_url
from tidings.realtime.channel_access import ChannelAccess
from tidings.realtime.channels import Channels
from tidings.realtime.dispatcher import Dispatcher
from tidings.realtime.fanout import FanOut
from tidings.resolvers.channels import CHANNEL_MUTATIONS, CHANNEL_SUBSCRIPTIONS
from tidings.resolvers.context import Services
from tidings.resolvers.session import RENEW_TOKEN
from tidings.resolvers.system import SYSTEM_SUBSCRIPTIONS
from tidings.schema.validation import Introspection, validation_rules
from tidings.store import Store
from tidings.store.migrations import Mode
from tidings.tracing import Tracing
from tidings.transports.common import TransportContext
from tidings.transports.health import Health, Readiness
from tidings.transports.http import HTTPTransport
from tidings.transports.origins import OriginCORS, OriginPolicy
from tidings.transports.sse import SSEEndpoint
from tidings.transports.websocket import serve_websocket
from tidings.types import Receive, Scope, Send

logger = logging.getLogger("tidings")


class Tidings:
    """Everything one server process runs, wired together."""

    def __init__(
        self,
        collections: Sequence[Collection],
        settings: Settings,
        *,
        broker: Broker | None = None,
        channels: Sequence[Channel] = (),
        hooks: Hooks | None = None,
        tracer_provider: Any = None,
        your_code: YourCode | None = None,
    ) -> None:
        self.settings = settings
        self.collections = list(collections)
        self.draining = False  # set by drain(): new SSE streams refused, /readyz says "draining"
        self.store = Store(
            settings.db,
            self.collections,
            outage_wait=settings.db_outage_wait,
            migrate=Mode(settings.migrate_mode()),
            migrations=settings.migrations_directory(),
        )
        self.broker = broker or broker_from_url(settings.broker, db=settings.db)
        self.tracing = Tracing(settings.tracing == "on", tracer_provider=tracer_provider)
        latency = LatencyHistogram()  # commit-to-write seconds: the dispatcher observes, the metrics show
        self.dispatcher = Dispatcher(
            self.store,
            self.broker,
            gap_check_interval=settings.gap_check_interval,
            channel=settings.channel,
            tracing=self.tracing,
            latency=latency,
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
        # The one holder of the authorizer: services, live queries and reloads share it.
        self.permissions = Permissions(
            Authorizer.from_settings(self.collections, settings, auth_enabled=self.authenticator.enabled)
        )
        introspection, suggestions = Introspection(settings.introspection_mode()), settings.switch("suggestions")
        connections: weakref.WeakSet[Any] = weakref.WeakSet()  # the open connections, kept by the transports
        self.metrics = Metrics(self.store, dispatcher=self.dispatcher, latency=latency, connections=connections)
        self.metrics_access = MetricsAccess(settings.metrics)
        self.metrics_registry, self.metrics_shared = registry_for(self.metrics)
        admin_queries, admin_mutations = admin_fields(lambda: self.admin)
        self.documents = Documents(
            validation_rules(max_depth=settings.max_depth), introspection=introspection, max_tokens=settings.max_tokens
        )
        mutation_fields = _mutation_collections(self.collections)
        self.schema, self.types = build_schema(
            self.collections,
            extra_queries=admin_queries,
            extra_extensions=[mutation_counter(self.metrics, mutation_fields)],
            extra_mutations=[RENEW_TOKEN, *CHANNEL_MUTATIONS, *admin_mutations],
            extra_subscriptions=[*CHANNEL_SUBSCRIPTIONS, *SYSTEM_SUBSCRIPTIONS],
            suggestions=suggestions,
            documents=self.documents,
            your_code=your_code,
        )
        self.limits = Limits.from_settings(settings, broker_url=getattr(self.broker, "url", settings.broker))
        # Hooks: before-hooks run in the request; after-hooks through one bounded queue.
        self.hooks = HookRunner(hooks, max_pending=settings.hook_queue)
        channel_rules = ChannelRules(channels, auth_enabled=self.authenticator.enabled, admin_role=settings.admin_role)
        self.channels = Channels(
            self.broker,
            channel_rules,
            topic=settings.channel + ":channels",
            access=ChannelAccess(self.store, self.permissions, self.dispatcher, channel_rules),
            limits=self.limits,
            max_payload=settings.channel_max_payload,
            presence_ttl=settings.presence_ttl,
            before_publish=self.hooks.publishing if self.hooks.hooks.publish else None,
        )
        fan_out = FanOut(self.dispatcher, self.channels, {c.name: c.channels for c in self.collections})
        self.services = Services(
            store=self.store,
            publisher=CommitNotifier(fan_out, self.hooks),
            permissions=self.permissions,
            max_limit=settings.max_limit,
            limits=self.limits,
            channels=self.channels,
            hooks=self.hooks,
            tracing=self.tracing,
        )
        self.engine = Engine(
            self.schema,
            self.services,
            self.dispatcher,
            self.collections,
            limits=self.limits,
            documents=self.documents,
            suggestions=suggestions,
            live_max_rows=settings.live_max_rows,
            channels=self.channels,
            count_mutations=lambda operation, errors: count_mutations(self.metrics, mutation_fields, operation, errors),
            expiring_lead=settings.token_expiring_lead,
        )
        self.transport = TransportContext(
            settings, self.engine, self.authenticator, connections=connections, metrics=self.metrics
        )
        self.admin = Admin(self.transport, self.broker, settings.channel)
        self.sse = SSEEndpoint(self.transport)
        self.cors_origins = OriginPolicy.parse(
            settings.cors_origins, auth_enabled=self.authenticator.enabled, setting="--cors-origins"
        )
        self.http = HTTPTransport(
            self.engine,
            self.authenticator,
            self.sse,
            self.metrics,
            max_message_size=settings.max_message_size,
            is_draining=lambda: self.draining,
        )
        self.playground = (
            Playground(self.collections, auth_enabled=self.authenticator.enabled, introspection=introspection)
            if settings.graphiql
            else None
        )
        self.rules_reload = RulesReload(self.permissions, connections, self.engine.system)
        self.readiness = Readiness(
            self.store, self.broker, self.dispatcher, timeout=settings.ready_timeout, lag=settings.ready_lag
        )
        self.health = Health(self.dispatcher, self.readiness, lambda: self.draining)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def authorizer(self) -> Authorizer:
        """The rules in force now (held by ``permissions``)."""
        return self.permissions.current

    async def start(self) -> None:
        await self.store.start()
        await self.broker.start()
        await self.limits.start()
        await self.dispatcher.start()
        if await self.store.migrator.claim_schema():  # this process brought a new schema: the others hear it
            await self.dispatcher.announce_schema()
        await self.channels.start()
        await self.admin.start()
        await self.hooks.start()
        if self.metrics_shared is not None:
            await self.metrics_shared.start()
        self._tasks = [asyncio.create_task(self._prune(), name="tidings-retention")]
        if self.settings.keepalive > 0:  # 0 turns keepalives off (a zero-second ticker would spin)
            self._tasks.append(asyncio.create_task(self._keepalive(), name="tidings-keepalive"))
        if not self.authenticator.enabled:
            logger.warning("No JWT secret or key configured: the API is open to anyone (demo mode)")
        cors, websocket = self.cors_origins.describe(), self.transport.origins.describe()
        if cors == websocket:
            logger.info("Browser pages from %s may use HTTP, SSE and WebSocket", cors)
        else:
            logger.info("Browser pages from %s may use HTTP and SSE; from %s, WebSocket", cors, websocket)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.hooks.close()
        await self.channels.close()
        if self.metrics_shared is not None:
            await self.metrics_shared.close()
        await self.admin.close()
        await self.dispatcher.close()
        await self.limits.close()
        await self.broker.close()
        await self.store.close()
        self.documents.close()  # its thread: a document still parsing is dropped with the process

    async def publish(
        self,
        channel: str,
        type: str,  # noqa: A002
        data: Any = None,
        *,
        sender: str | None = None,
        account: str | None = None,
    ) -> int:
        """Publish a channel event from server code (no rule or rate applies); its seq.

        ``account``: the tenant whose ``channel`` it is (ignored in demo mode and for global namespaces).
        """
        return await self.channels.publish(channel, type, data, sender=sender, account=account)

    async def drain(self, timeout: float) -> None:
        """End every open connection for a restart, flushing what each has queued, within ``timeout``.

        WebSockets close 1012 and SSE responses end; clients reconnect to the next process
        and resume from their last seq. New SSE streams are refused (503) from now on.
        """
        self.draining = True
        self._announce_shutdown()
        connections = list(self.transport.connections)
        if not connections:
            return
        started = time.monotonic()
        tasks = [asyncio.create_task(conn.drain(timeout), name="tidings-drain") for conn in connections]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        failed = sum(1 for task in done if task.exception() is not None)
        logger.info(
            "Ended %d connections for shutdown in %.2f s (%d past the %.0f s deadline, %d failed)",
            len(connections),
            time.monotonic() - started,
            len(pending),
            timeout,
            failed,
        )

    def _announce_shutdown(self) -> None:
        # Synchronous, before any connection drains: each event is queued ahead of the
        # flush that precedes the 1012 close (or the SSE response's end).
        spread = self.settings.shutdown_reconnect_ms
        for conn in self.engine.system.connections():
            after = random.randint(0, spread) if spread > 0 else 0  # spreads the reconnects
            self.engine.system.emit(
                conn,
                SystemEventKind.SHUTTING_DOWN,
                "Server restarting: reconnect after reconnectAfterMs and resume with your last seq",
                {"reconnectAfterMs": after},
            )

    async def reload_rules(self, rules: Mapping[str, Rules | Mapping[str, Any]]) -> int:
        """Replace collections' permission rules (see ``RulesReload``); how many operations ended."""
        return await self.rules_reload(rules)

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
            except Unavailable as exc:  # the database's state, said by /readyz and the metrics too
                logger.warning("Retention pass failed: %s", exc.message)
            except Exception:
                logger.exception("Retention pass failed")

    async def prune(self) -> int:
        s = self.settings
        keep_after = (
            dt.datetime.now(dt.UTC) - dt.timedelta(seconds=s.retention_seconds) if s.retention_seconds else None
        )
        return await self.store.prune(keep_after=keep_after, keep_last=s.retention_events or None)

    # -- ASGI --------------------------------------------------------------------

    async def graphql(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await serve_websocket(self.transport, scope, receive, send)
            return
        if self.playground is not None and self.playground.wants_page(scope):
            # The page holds no data: served without a token, like its assets.
            await self.playground.page(scope)(scope, receive, send)
            return
        await self.http(scope, receive, send)


def _mutation_collections(collections: Sequence[Collection]) -> dict[str, str]:
    """Mutation field name -> collection name, for ``tidings_mutations_total``."""
    verbs = ("create", "update", "delete", "restore")
    return {f"{verb}{c.name}": c.name for c in collections for verb in verbs}


GRAPHQL_METHODS = ("GET", "POST", "PUT", "DELETE", "OPTIONS")


class _App(Starlette):
    """Starlette, with requests to /graphql handed straight to tidings.

    A WebSocket lives for hours; going through the middleware stack would keep
    its frames (and their memory) alive for every connection, for nothing: CORS
    does not apply to WebSockets and the transport handles its own errors.

    HTTP requests to /graphql go to ``graphql_http``: the CORS layer, then tidings,
    without the router and Starlette's two exception layers (tidings answers its own
    errors; an unexpected exception is a 500 that uvicorn logs, as it is through
    them). Middleware added later with ``add_middleware`` turns the shortcut off.
    """

    graphql_http: Any = None
    own_middleware = 0  # how many of user_middleware create_app put there

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket" or kind == "http":
            path, root = scope["path"], scope.get("root_path", "")
            if (path[len(root) :] if root and path.startswith(root) else path) == "/graphql":
                if kind == "websocket":
                    scope["app"] = self
                    await self.state.tidings.graphql(scope, receive, send)
                    return
                if (
                    self.graphql_http is not None
                    and scope["method"] in GRAPHQL_METHODS
                    and len(self.user_middleware) == self.own_middleware
                ):
                    scope["app"] = self
                    await self.graphql_http(scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


class _GraphQLEndpoint:
    def __init__(self, tidings: Tidings) -> None:
        self.tidings = tidings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.tidings.graphql(scope, receive, send)


def create_app(
    collections: Sequence[Any] | None = None,
    settings: Settings | None = None,
    *,
    broker: Broker | None = None,
    hooks: Hooks | None = None,
    tracer_provider: Any = None,
    app: App | None = None,
) -> Starlette:
    """The ASGI app for ``collections`` (declared classes or Collections; default the demo).

    ``hooks``: a ``tidings.Hooks`` whose callables react to connections, operations, writes and publishes.
    ``tracer_provider``: the OpenTelemetry provider of ``--tracing on`` (default: the global one).
    ``app``: a ``tidings.App`` (collections, hooks and your own Strawberry code) instead of the two.
    """
    from tidings.model.collection import collections_from

    if app is not None:
        if collections is not None or hooks is not None:
            raise ConfigurationError("create_app: give app=tidings.App(...) or collections and hooks, not both")
        collections, hooks = list(app.collections), app.hooks
    if collections is None:
        from tidings.model.demo import CHANNELS, COLLECTIONS

        collections = [*COLLECTIONS, *CHANNELS]
    declaration = app or App(collections=list(collections), hooks=hooks)
    settings = settings or Settings.from_env()
    declared, channels = channels_from(list(collections))
    tidings = Tidings(
        collections_from(declared),
        settings,
        broker=broker,
        channels=channels,
        hooks=hooks,
        tracer_provider=tracer_provider,
        your_code=_your_code(declaration),
    )

    async def metrics(request: StarletteRequest) -> Response:
        status = tidings.metrics_access.check(
            request.client.host if request.client else None, request.headers.get("authorization")
        )
        if status != 200:
            headers = {"www-authenticate": "Bearer"} if status == 401 else None
            return Response(None, status, headers)
        body, content_type = exposition(tidings.metrics_registry)
        return Response(body, 200, media_type=content_type)

    async def to_playground(request: StarletteRequest) -> Response:
        # A browser pointed at the server's root lands on the playground.
        return RedirectResponse(f"{request.scope.get('root_path', '')}/graphql", 302)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await tidings.start()
        try:
            yield
        finally:
            await tidings.stop()

    cors = tidings.cors_origins
    cors_options: dict[str, Any] = {
        "policy": cors,
        "allow_methods": ["GET", "POST", "PUT", "DELETE"],
        "allow_headers": ["*"],
    }
    middleware = [] if cors.is_empty else [Middleware(OriginCORS, **cors_options)]
    endpoint = _GraphQLEndpoint(tidings)
    asgi = _App(
        routes=[
            Route("/healthz", tidings.health.healthz),
            Route("/metrics", metrics),
            Route("/readyz", tidings.health.readyz),
            # WebSockets to /graphql never reach the router: _App hands them to tidings.
            Route("/graphql", endpoint, methods=list(GRAPHQL_METHODS)),
            *([Route(f"{ASSETS_PATH}/{{name}}", tidings.playground.asset)] if tidings.playground else []),
            *([Route("/", to_playground)] if tidings.playground else []),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
    asgi.state.tidings = tidings
    asgi.state.declaration = declaration  # what ``tidings serve --app`` builds again with its own settings
    asgi.graphql_http = endpoint if cors.is_empty else OriginCORS(endpoint, **cors_options)
    asgi.own_middleware = len(middleware)
    return asgi


def _your_code(app: App) -> YourCode:
    return YourCode(app.queries, app.mutations, app.subscriptions, app.types)


def export_schema(collections: Sequence[Any] | None = None, *, app: App | None = None) -> str:
    """The SDL of ``collections`` (default the demo's) or of ``app``."""
    from tidings.model.collection import collections_from

    if app is not None:
        collections = list(app.collections)
    if collections is None:
        from tidings.model.demo import COLLECTIONS

        collections = COLLECTIONS
    admin_queries, admin_mutations = admin_fields(None)
    schema, _ = build_schema(
        collections_from(channels_from(list(collections))[0]),
        extra_queries=admin_queries,
        extra_mutations=[RENEW_TOKEN, *CHANNEL_MUTATIONS, *admin_mutations],
        extra_subscriptions=[*CHANNEL_SUBSCRIPTIONS, *SYSTEM_SUBSCRIPTIONS],
        your_code=_your_code(app) if app is not None else None,
    )
    return strawberry.Schema.as_str(schema)
