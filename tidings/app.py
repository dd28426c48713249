"""Builds the ASGI app: /graphql (HTTP, WebSocket, SSE), /healthz, GraphiQL."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping, MutableMapping, Sequence
from typing import Any
from urllib.parse import parse_qs

import orjson
import strawberry
from graphql import GraphQLError, OperationType
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.types import ExecutionResult

from tidings.admin import Admin, admin_fields
from tidings.auth.channel_rules import Channel, ChannelRules, channels_from
from tidings.auth.principal import ANONYMOUS, Principal
from tidings.auth.rules import Action, Authorizer, Rules
from tidings.auth.tokens import Authenticator, bearer
from tidings.config import Settings
from tidings.engine.build import build_schema
from tidings.engine.documents import Documents
from tidings.engine.runner import Engine, Request, Streaming
from tidings.errors import BadUserInput, ConfigurationError, ErrorCode, PermissionsChanged, TidingsError, Unavailable
from tidings.events import SystemEventKind
from tidings.hooks import CommitNotifier, HookRunner, Hooks
from tidings.limits import Limits
from tidings.metrics import Metrics, MetricsAccess, count_mutations, exposition, mutation_counter, registry_for
from tidings.model.collection import Collection
from tidings.playground import ASSETS_PATH, Playground
from tidings.pubsub import Broker, broker_from_url
from tidings.realtime.channels import Channels
from tidings.realtime.dispatcher import Dispatcher
from tidings.realtime.fanout import FanOut
from tidings.realtime.group import Subscriber
from tidings.realtime.live import LiveMember
from tidings.resolvers.channels import CHANNEL_MUTATIONS, CHANNEL_SUBSCRIPTIONS
from tidings.resolvers.context import Context, Services
from tidings.resolvers.session import RENEW_TOKEN
from tidings.resolvers.system import SYSTEM_SUBSCRIPTIONS
from tidings.schema.validation import Introspection, validation_rules
from tidings.store import Store
from tidings.tracing import Tracing
from tidings.transports.body import check_request, decode_json, limit_body, respond_bad_request
from tidings.transports.common import TransportContext, declares_json, header, unsupported_media_type
from tidings.transports.negotiation import GRAPHQL_RESPONSE_JSON, buffer_body, route
from tidings.transports.origins import OriginCORS, OriginPolicy
from tidings.transports.sse import SSEEndpoint
from tidings.transports.websocket import serve_websocket

logger = logging.getLogger("tidings")


class HTTPView(GraphQL[Context, None]):
    """Strawberry serves plain HTTP queries and mutations."""

    services: Services
    engine: Engine

    async def get_context(self, request: Any, response: Any) -> Context:
        principal = request.scope.get("tidings.principal", ANONYMOUS)
        return Context(self.services, principal=principal, request=request, response=response)

    def decode_json(self, data: str | bytes) -> object:
        # Tidings._serve_http refused what does not read before the view met it; a path
        # that skipped that still gets Strawberry's 400 (it catches JSONDecodeError), not a 500.
        try:
            return decode_json(data)
        except BadUserInput as exc:
            raise json.JSONDecodeError(exc.message, "", 0) from exc

    def encode_json(self, data: object) -> str | bytes:
        try:
            return orjson.dumps(data)
        except TypeError:  # an int beyond 64 bits in a JSON field
            return json.dumps(data, separators=(",", ":"))

    async def execute_single(
        self,
        request: Any,
        request_adapter: Any,
        sub_response: Any,
        context: Context,
        root_value: Any,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        # Strawberry would execute a subscription as a query here and fail in the resolver:
        # a client's mistake, answered 400 BAD_USER_INPUT rather than logged as a fault.
        query = request_data.query
        if query is not None:
            await self.engine.prepare(Request(query))  # a big document: parsed off the event loop
        if (
            query is not None
            and "subscription" in query
            and self.engine.operation_type(Request(query, None, request_data.operation_name, None))
            is OperationType.SUBSCRIPTION
        ):
            sub_response.status_code = 400
            message = (
                "Subscriptions need a WebSocket (graphql-transport-ws or graphql-ws) "
                "or Server-Sent Events (Accept: text/event-stream)"
            )
            return ExecutionResult(
                data=None, errors=[GraphQLError(message, extensions={"code": ErrorCode.BAD_USER_INPUT.value})]
            )
        tracing = self.engine.services.tracing
        if not tracing.enabled:
            return await super().execute_single(
                request, request_adapter, sub_response, context, root_value, request_data
            )
        kind = self.engine.operation_type(Request(query or "", None, request_data.operation_name, None))
        with tracing.operation("http", kind.value if kind else "invalid", request_data.operation_name):
            return await super().execute_single(
                request, request_adapter, sub_response, context, root_value, request_data
            )

    async def process_result(self, request: Any, result: ExecutionResult) -> GraphQLHTTPResponse:
        response = await super().process_result(request, result)
        if request.scope.get("tidings.media_type") == GRAPHQL_RESPONSE_JSON and is_request_error(result):
            # GraphQL over HTTP: no execution, so no data entry, and a 4xx (set in __call__).
            response.pop("data", None)
            request.scope["tidings.request_error"] = True
        return response

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("tidings.media_type") != GRAPHQL_RESPONSE_JSON:
            await super().__call__(scope, receive, send)
            return

        async def send_as_graphql_response(message: MutableMapping[str, Any]) -> None:
            # Strawberry writes application/json; its own refusals (text/plain) keep their type.
            if message["type"] == "http.response.start":
                headers = [
                    (b"content-type", b"application/graphql-response+json; charset=utf-8")
                    if key == b"content-type" and value.split(b";")[0].strip() == b"application/json"
                    else (key, value)
                    for key, value in message.get("headers", [])
                ]
                status = message["status"]
                if status == 200 and scope.get("tidings.request_error"):
                    status = 400
                message = {**message, "headers": headers, "status": status}
            await send(message)

        await super().__call__(scope, receive, send_as_graphql_response)


def _query_parameters(scope: Mapping[str, Any]) -> dict[str, Any]:
    """A GET's GraphQL request, its JSON parameters decoded, as the view reads it (the last of
    a repeated parameter; a blank one kept: the view would refuse ``variables=`` too).
    ``BadUserInput`` if it is no GraphQL request; no ``query`` is the view's to answer."""
    params = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    data: dict[str, Any] = {key: values[-1] for key, values in params.items()}
    for key in ("variables", "extensions"):
        if key in data:
            data[key] = decode_json(data[key])
    return check_request(data, needs_query=False)


def is_request_error(result: ExecutionResult) -> bool:
    """A parse, validation or variable coercion error: execution never started.

    Field errors always carry a ``path``; request errors never do.
    """
    return result.data is None and bool(result.errors) and all(e.path is None for e in result.errors or ())


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
    ) -> None:
        self.settings = settings
        self.collections = list(collections)
        self.store = Store(settings.db, self.collections, outage_wait=settings.db_outage_wait)
        self.broker = broker or broker_from_url(settings.broker, db=settings.db)
        self.tracing = Tracing(settings.tracing == "on", tracer_provider=tracer_provider)
        self.dispatcher = Dispatcher(
            self.store,
            self.broker,
            gap_check_interval=settings.gap_check_interval,
            channel=settings.channel,
            tracing=self.tracing,
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
        introspection, suggestions = Introspection(settings.introspection_mode()), settings.switch("suggestions")
        self.metrics = Metrics(self.store)
        self.metrics.dispatcher = self.dispatcher
        self.dispatcher.latency = self.metrics.latency
        self.metrics_access = MetricsAccess(settings.metrics)
        self.metrics_registry, self.metrics_shared = registry_for(self.metrics)
        admin_queries, admin_mutations = admin_fields(lambda: self.admin)
        self.documents = Documents(
            validation_rules(max_depth=settings.max_depth), introspection=introspection, max_tokens=settings.max_tokens
        )
        self.schema, self.types = build_schema(
            self.collections,
            extra_queries=admin_queries,
            extra_extensions=[mutation_counter(self.metrics, _mutation_collections(self.collections))],
            extra_mutations=[RENEW_TOKEN, *CHANNEL_MUTATIONS, *admin_mutations],
            extra_subscriptions=[*CHANNEL_SUBSCRIPTIONS, *SYSTEM_SUBSCRIPTIONS],
            suggestions=suggestions,
            documents=self.documents,
        )
        self.limits = Limits.from_settings(settings, broker_url=getattr(self.broker, "url", settings.broker))
        self.channels = Channels(
            self.broker,
            ChannelRules(channels, auth_enabled=self.authenticator.enabled, admin_role=settings.admin_role),
            topic=settings.channel + ":channels",
            limits=self.limits,
            max_payload=settings.channel_max_payload,
            presence_ttl=settings.presence_ttl,
        )
        self.services = Services(
            store=self.store,
            publisher=FanOut(self.dispatcher, self.channels, {c.name: c.channels for c in self.collections}),
            authorizer=self.authorizer,
            max_limit=settings.max_limit,
            limits=self.limits,
            channels=self.channels,
            tracing=self.tracing,
        )
        # Hooks: before-hooks run in the request; after-hooks through one bounded queue.
        self.hooks = HookRunner(hooks, max_pending=settings.hook_queue)
        self.services.hooks = self.hooks
        self.services.publisher = CommitNotifier(self.services.publisher, self.hooks)
        if self.hooks.hooks.publish:
            self.channels.before_publish = self.hooks.publishing
        self.engine = Engine(
            self.schema,
            self.services,
            self.dispatcher,
            self.collections,
            limits=self.limits,
            documents=self.documents,
            suggestions=suggestions,
            live_max_rows=settings.live_max_rows,
        )
        self.engine.channels = self.channels
        mutation_fields = _mutation_collections(self.collections)
        self.engine.count_mutations = lambda operation, errors: count_mutations(
            self.metrics, mutation_fields, operation, errors
        )
        self.engine.system.expiring_lead = settings.token_expiring_lead
        self.transport = TransportContext(settings, self.engine, self.authenticator, metrics=self.metrics)
        self.metrics.connections = self.transport.connections
        self.admin = Admin(self.transport, self.broker, settings.channel)
        self.sse = SSEEndpoint(self.transport)
        self.cors_origins = OriginPolicy.parse(
            settings.cors_origins, auth_enabled=self.authenticator.enabled, setting="--cors-origins"
        )
        # Browsers get tidings' playground (local assets), never Strawberry's CDN page.
        self.http = HTTPView(self.schema, graphql_ide=None, allow_queries_via_get=True)
        self.playground = (
            Playground(self.collections, auth_enabled=self.authenticator.enabled, introspection=introspection)
            if settings.graphiql
            else None
        )
        self.http.services = self.services
        self.http.engine = self.engine
        self._tasks: list[asyncio.Task[None]] = []
        self.draining = False
        self._lag_mark: tuple[int, float] | None = None  # (a log head the dispatcher had not reached, when)

    async def start(self) -> None:
        await self.store.start()
        await self.broker.start()
        await self.limits.start()
        await self.dispatcher.start()
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
        """Replace collections' permission rules (by collection name; the others keep theirs).

        Every request from now on is checked against the new rules. Each open connection whose
        permissions changed gets PERMISSIONS_CHANGED on its ``systemEvents``, and each of its
        subscriptions and live queries whose read scope changed ends with ``PERMISSIONS_CHANGED``
        (or the new rules' FORBIDDEN/UNAUTHENTICATED): none keeps delivering under the old
        rules. Returns how many operations ended. This process only: call it on each.
        """
        old = self.authorizer
        unknown = set(rules) - set(old.collections)
        if unknown:
            raise ConfigurationError(f"reload_rules names unknown collections {sorted(unknown)}")
        collections = [
            dataclasses.replace(c, rules=_rules(rules[c.name])) if c.name in rules else c
            for c in old.collections.values()
        ]
        new = Authorizer(collections, multi_tenant=old.multi_tenant, admin_role=old.admin_role, anonymous=old.anonymous)
        # No await from here to the end: no event is delivered between the swap and the
        # scope checks, so none reaches a subscriber under rules it no longer has.
        self.authorizer = self.services.authorizer = self.engine.live.authorizer = new
        ended = 0
        for conn in list(self.transport.connections):
            principal: Principal | None = getattr(conn, "principal", None)
            if principal is None or not _permissions_differ(old, new, principal, rules):
                continue
            stale = [
                (op_id, error)
                for op_id, outcome in list(conn.streams.items())
                if (error := _stale_scope(old, new, principal, outcome)) is not None
            ]
            self.engine.system.emit(
                conn,
                SystemEventKind.PERMISSIONS_CHANGED,
                "Your permissions changed: operations whose scope changed ended; subscribe again to continue",
                {"ended": [op_id for op_id, _ in stale]},
            )
            for op_id, error in stale:
                conn.finish(op_id, [error])
            ended += len(stale)
        logger.info("Rules reloaded for %s: %d operations ended", ", ".join(sorted(rules)) or "nothing", ended)
        return ended

    async def readiness(self) -> dict[str, str]:
        """Each dependency's state, "ok" or why not: the database answers a short query (and, after
        a write failed UNAVAILABLE, commits a probe write), the broker a ping, and the dispatcher
        reaches the log's head within ``ready_lag`` seconds."""
        timeout = self.settings.ready_timeout
        checks: dict[str, str] = {}
        head: int | None = None
        try:
            async with asyncio.timeout(timeout):
                head = await self.store.last_seq()
                if self.store.write_fault is not None:
                    # Writes failed for the database's fault: ready again once one commits. The
                    # probe is that write, made here, since an unready process may get no others.
                    await self.store.probe_write()
            checks["database"] = "ok"
        except Unavailable as exc:
            checks["database"] = f"writes failing: {exc.message}"
        except Exception as exc:
            checks["database"] = _why(exc, timeout)
        try:
            async with asyncio.timeout(timeout):
                await self.broker.ping()
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = _why(exc, timeout)
        checks["dispatcher"] = "ok" if head is None else self._lag_check(head)
        return checks

    def _lag_check(self, head: int) -> str:
        # Behind is normal for a moment: fail only when a head seen ``ready_lag`` seconds ago
        # is still not reached. No waiting here: each probe compares with the last one's mark.
        position, now = self.dispatcher.position, time.monotonic()
        if position >= head:
            self._lag_mark = None
            return "ok"
        if self._lag_mark is None or position >= self._lag_mark[0]:
            self._lag_mark = (head, now)
            return "ok"
        behind = now - self._lag_mark[1]
        if behind <= self.settings.ready_lag:
            return "ok"
        return f"at seq {position}, behind the log's head {self._lag_mark[0]} for {behind:.1f} s"

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

    async def graphql(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await serve_websocket(self.transport, scope, receive, send)
            return
        if self.playground is not None and self.playground.wants_page(scope):
            # The page holds no data: served without a token, like its assets.
            await self.playground.page(scope)(scope, receive, send)
            return
        # Every HTTP path (JSON, SSE, single-connection) reads its body through the limit.
        await limit_body(self._serve_http, scope, receive, send, self.settings.max_message_size)

    async def _serve_http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        chosen = await route(self.engine, scope, receive)
        receive = chosen.receive
        if chosen.sse:
            if self.draining:
                # The process is shutting down: the client's retry reaches the next one.
                restarting = Response("Server restarting; retry", 503, {"retry-after": "1"}, "text/plain")
                await restarting(scope, receive, send)
                return
            await self.sse(scope, receive, send)
            return
        if scope["method"] == "POST" and not declares_json(scope):
            await JSONResponse(unsupported_media_type(scope), 415)(scope, receive, send)
            return
        if scope["method"] == "GET" and self._is_mutation(scope):
            # GraphQL over HTTP: 405 (Strawberry says 400); a GET must never change anything.
            refusal = {
                "errors": [{"message": "Mutations need POST", "extensions": {"code": ErrorCode.BAD_USER_INPUT.value}}]
            }
            await JSONResponse(refusal, 405, {"allow": "POST"})(scope, receive, send)
            return
        try:
            principal = self.http_principal(scope)
        except TidingsError as exc:
            self.metrics.auth_failed("http", exc)
            status = 401 if exc.code is ErrorCode.UNAUTHENTICATED else 403
            response = JSONResponse({"errors": [{"message": exc.message, "extensions": exc.extensions}]}, status)
            await response(scope, receive, send)
            return
        scope["tidings.principal"] = principal
        scope["tidings.media_type"] = chosen.media_type
        try:
            if scope["method"] == "POST":
                body, receive = await buffer_body(receive)
                data = check_request(decode_json(body))
            else:
                _query_parameters(scope)
        except BadUserInput as exc:
            content_type = (
                b"application/graphql-response+json; charset=utf-8"
                if chosen.media_type == GRAPHQL_RESPONSE_JSON
                else b"application/json"
            )
            await respond_bad_request(send, exc, content_type)
            return
        if scope["method"] == "POST":
            request = Request(data["query"], data.get("variables"), data.get("operationName"), data.get("extensions"))
            await self.engine.prepare(request)  # a big document: parsed off the event loop
            if self.engine.executable(request, principal) is not None:
                await self._execute_http(request, scope, receive, send)
                return
        # Everything else (GET, batches, bodies Strawberry refuses, documents with errors,
        # unknown operation names, subscriptions) keeps Strawberry's view and its answers.
        await self.http(scope, receive, send)

    async def _execute_http(self, request: Request, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A valid query or mutation POSTed as JSON: executed by the engine, as over WebSocket and SSE,
        answered as Strawberry's view would (same body, status, headers), without the view's layers."""
        http_request = StarletteRequest(scope, receive)
        sub_response = await self.http.get_sub_response(http_request)
        context = await self.http.get_context(http_request, sub_response)
        tracing = self.engine.services.tracing
        if tracing.enabled:
            kind = self.engine.operation_type(request)
            with tracing.operation("http", kind.value if kind else "invalid", request.operation_name):
                result = await self.engine.execute(request, context)
        else:
            result = await self.engine.execute(request, context)
        payload = await self.http.process_result(http_request, result)
        encoded = self.http.encode_json(payload)
        body = encoded.encode() if isinstance(encoded, str) else encoded
        status = sub_response.status_code or 200
        if scope.get("tidings.media_type") == GRAPHQL_RESPONSE_JSON:
            content_type = b"application/graphql-response+json; charset=utf-8"
            if status == 200 and scope.get("tidings.request_error"):
                status = 400
        else:
            content_type = b"application/json"
        headers = [(b"content-length", str(len(body)).encode()), (b"content-type", content_type)]
        headers.extend(sub_response.headers.raw)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if sub_response.background is not None:
            await sub_response.background()

    def _is_mutation(self, scope: dict[str, Any]) -> bool:
        params = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        query, name = params.get("query", [""])[0], params.get("operationName", [None])[0]
        if "mutation" not in query:
            return False
        return self.engine.operation_type(Request(query, None, name, None)) is OperationType.MUTATION

    def http_principal(self, scope: dict[str, Any]) -> Principal:
        principal = self.authenticator.optional(bearer(header(scope, b"authorization")))
        self.authorizer.check_connect(principal)
        return principal


def _rules(value: Rules | Mapping[str, Any]) -> Rules:
    return value if isinstance(value, Rules) else Rules.from_mapping(value)


def _decision(authorizer: Authorizer, collection: str, principal: Principal, action: Action) -> str:
    """What ``authorizer`` lets ``principal`` do: its guard, or the error refusing it."""
    try:
        return repr(authorizer.guard(collection, principal, action))
    except TidingsError as exc:
        return exc.code.value  # refused before and after: the same, whatever the message says


def _permissions_differ(old: Authorizer, new: Authorizer, principal: Principal, names: Mapping[str, Any]) -> bool:
    return any(_decision(old, n, principal, a) != _decision(new, n, principal, a) for n in names for a in Action)


def _stale_scope(old: Authorizer, new: Authorizer, principal: Principal, outcome: Streaming) -> dict[str, Any] | None:
    """The error ending ``outcome`` if its read scope changed, else None (channels and system events keep)."""
    subscriber = outcome.subscriber
    if isinstance(subscriber, Subscriber):
        names: Sequence[str] = (subscriber.group.selection.collection.name,)
    elif isinstance(subscriber, LiveMember):
        names = sorted(subscriber.group.collections)
    else:
        return None
    for name in names:
        if _decision(old, name, principal, Action.READ) == _decision(new, name, principal, Action.READ):
            continue
        try:
            new.guard(name, principal, Action.READ)
        except TidingsError as exc:
            return {"message": exc.message, "extensions": exc.extensions}
        error = PermissionsChanged(f"{name}: your read permission changed; subscribe again to continue")
        return {"message": error.message, "extensions": error.extensions}
    return None


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")


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

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
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

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.tidings.graphql(scope, receive, send)


def create_app(
    collections: Sequence[Any] | None = None,
    settings: Settings | None = None,
    *,
    broker: Broker | None = None,
    hooks: Hooks | None = None,
    tracer_provider: Any = None,
) -> Starlette:
    """The ASGI app for ``collections`` (declared classes or Collections; default the demo).

    ``hooks``: a ``tidings.Hooks`` whose callables react to connections, operations, writes and publishes.
    ``tracer_provider``: the OpenTelemetry provider of ``--tracing on`` (default: the global one).
    """
    from tidings.model.collection import collections_from

    if collections is None:
        from tidings.model.demo import CHANNELS, COLLECTIONS

        collections = [*COLLECTIONS, *CHANNELS]
    settings = settings or Settings.from_env()
    declared, channels = channels_from(list(collections))
    tidings = Tidings(
        collections_from(declared),
        settings,
        broker=broker,
        channels=channels,
        hooks=hooks,
        tracer_provider=tracer_provider,
    )

    async def healthz(_: StarletteRequest) -> Response:
        return JSONResponse({"status": "ok", "seq": str(tidings.dispatcher.position)})

    async def readyz(_: StarletteRequest) -> Response:
        # Ready: this process can serve now. Liveness (/healthz) asks nothing of the dependencies.
        checks = await tidings.readiness()
        ready = all(state == "ok" for state in checks.values()) and not tidings.draining
        status = "ready" if ready else "draining" if tidings.draining else "unavailable"
        body = {"status": status, "checks": checks, "seq": str(tidings.dispatcher.position)}
        return JSONResponse(body, 200 if ready else 503)

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
    app = _App(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", metrics),
            Route("/readyz", readyz),
            # WebSockets to /graphql never reach the router: _App hands them to tidings.
            Route("/graphql", endpoint, methods=list(GRAPHQL_METHODS)),
            *([Route(f"{ASSETS_PATH}/{{name}}", tidings.playground.asset)] if tidings.playground else []),
            *([Route("/", to_playground)] if tidings.playground else []),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
    app.state.tidings = tidings
    app.graphql_http = endpoint if cors.is_empty else OriginCORS(endpoint, **cors_options)
    app.own_middleware = len(middleware)
    return app


def export_schema(collections: Sequence[Any] | None = None) -> str:
    from tidings.model.collection import collections_from

    if collections is None:
        from tidings.model.demo import COLLECTIONS

        collections = COLLECTIONS
    admin_queries, admin_mutations = admin_fields(None)
    schema, _ = build_schema(
        collections_from(channels_from(list(collections))[0]),
        extra_queries=admin_queries,
        extra_mutations=[RENEW_TOKEN, *CHANNEL_MUTATIONS, *admin_mutations],
        extra_subscriptions=[*CHANNEL_SUBSCRIPTIONS, *SYSTEM_SUBSCRIPTIONS],
    )
    return strawberry.Schema.as_str(schema)
