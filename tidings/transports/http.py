"""Plain HTTP GraphQL on /graphql: routing (JSON, GraphQL over HTTP, SSE), refusals, and
execution through the engine, with Strawberry's view for what the engine does not take."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import orjson
from graphql import GraphQLError, OperationType
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.types import ExecutionResult

from tidings.auth.principal import ANONYMOUS, Principal
from tidings.auth.tokens import Authenticator, bearer
from tidings.engine.runner import Engine, Request
from tidings.errors import BadUserInput, ErrorCode, TidingsError
from tidings.metrics import Metrics
from tidings.resolvers.context import Context
from tidings.transports.body import check_request, decode_json, limit_body, respond_bad_request
from tidings.transports.common import declares_json, header, unsupported_media_type
from tidings.transports.negotiation import GRAPHQL_RESPONSE_JSON, buffer_body, route
from tidings.transports.sse import SSEEndpoint
from tidings.types import Receive, Scope, Send


class HTTPView(GraphQL[Context, None]):
    """Strawberry serves plain HTTP queries and mutations."""

    def __init__(self, engine: Engine, **options: Any) -> None:
        super().__init__(engine.schema, **options)
        self.engine = engine
        self.services = engine.services

    async def get_context(self, request: Any, response: Any) -> Context:
        principal = request.scope.get("tidings.principal", ANONYMOUS)
        return Context(self.services, principal=principal, request=request, response=response)

    def decode_json(self, data: str | bytes) -> object:
        # HTTPTransport.serve refused what does not read before the view met it; a path
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
            # Before Strawberry's own parse, which runs on the loop: a big document parsed off it.
            await self.engine.prepare(Request(query))
        if (
            query is not None
            and "subscription" in query
            and await self.engine.operation_type(Request(query, None, request_data.operation_name, None))
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
        kind = await self.engine.operation_type(Request(query or "", None, request_data.operation_name, None))
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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


class HTTPTransport:
    """/graphql over plain HTTP: SSE streams go to ``sse``; valid JSON queries and mutations
    run on the engine; everything else gets Strawberry's view and its answers."""

    def __init__(
        self,
        engine: Engine,
        authenticator: Authenticator,
        sse: SSEEndpoint,
        metrics: Metrics,
        *,
        max_message_size: int,
        is_draining: Callable[[], bool],
    ) -> None:
        self.engine = engine
        self.authenticator = authenticator
        self.sse = sse
        self.metrics = metrics
        self.max_message_size = max_message_size
        self.is_draining = is_draining
        # Browsers get tidings' playground (local assets), never Strawberry's CDN page.
        self.view = HTTPView(engine, graphql_ide=None, allow_queries_via_get=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Every HTTP path (JSON, SSE, single-connection) reads its body through the limit.
        await limit_body(self.serve, scope, receive, send, self.max_message_size)

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        chosen = await route(self.engine, scope, receive)
        receive = chosen.receive
        if chosen.sse:
            if self.is_draining():
                # The process is shutting down: the client's retry reaches the next one.
                restarting = Response("Server restarting; retry", 503, {"retry-after": "1"}, "text/plain")
                await restarting(scope, receive, send)
                return
            await self.sse(scope, receive, send)
            return
        if scope["method"] == "POST" and not declares_json(scope):
            await JSONResponse(unsupported_media_type(scope), 415)(scope, receive, send)
            return
        if scope["method"] == "GET" and await self._is_mutation(scope):
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
            if await self.engine.executable(request, principal) is not None:
                await self._execute(request, scope, receive, send)
                return
        # Everything else (GET, batches, bodies Strawberry refuses, documents with errors,
        # unknown operation names, subscriptions) keeps Strawberry's view and its answers.
        await self.view(scope, receive, send)

    async def _execute(self, request: Request, scope: Scope, receive: Receive, send: Send) -> None:
        """A valid query or mutation POSTed as JSON: executed by the engine, as over WebSocket and SSE,
        answered as Strawberry's view would (same body, status, headers), without the view's layers."""
        http_request = StarletteRequest(scope, receive)
        sub_response = await self.view.get_sub_response(http_request)
        context = await self.view.get_context(http_request, sub_response)
        tracing = self.engine.services.tracing
        if tracing.enabled:
            kind = await self.engine.operation_type(request)
            with tracing.operation("http", kind.value if kind else "invalid", request.operation_name):
                result = await self.engine.execute(request, context)
        else:
            result = await self.engine.execute(request, context)
        payload = await self.view.process_result(http_request, result)
        encoded = self.view.encode_json(payload)
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

    async def _is_mutation(self, scope: Scope) -> bool:
        params = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        query, name = params.get("query", [""])[0], params.get("operationName", [None])[0]
        if "mutation" not in query:
            return False
        return await self.engine.operation_type(Request(query, None, name, None)) is OperationType.MUTATION

    def http_principal(self, scope: Scope) -> Principal:
        principal = self.authenticator.optional(bearer(header(scope, b"authorization")))
        self.engine.services.authorizer.check_connect(principal)
        return principal
