"""Runs one operation a transport received: a query or mutation is executed, a subscription
goes to the dispatcher (or channels, presence, system events), a ``query @live`` to the live hub.

Documents come from ``tidings.engine.documents`` (parsed and validated once per text, within
bounds). Size: ~560 lines, over the house's ~500, because each kind of subscription's start
(selection, guard, cursor, group key) sits beside the one operation lookup they share; the
next split is those starts into a module of their own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from inspect import isawaitable
from typing import Any

import orjson
import strawberry
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    Visitor,
    execute,
    visit,
)
from graphql.execution import ExecutionResult as GraphQLExecutionResult
from graphql.execution import Executor, get_argument_values
from strawberry.execution import optimized_is_awaitable
from strawberry.types import ExecutionResult

from tidings.auth.principal import Principal
from tidings.auth.rules import Action
from tidings.engine.documents import Documents, Parsed
from tidings.engine.streams import StreamSubscriber, start_stream
from tidings.errors import BadUserInput, CursorInvalid, TidingsError
from tidings.events import Operation
from tidings.filters import And, parse_filter
from tidings.limits import Limits, refuse_operation
from tidings.model.collection import Collection
from tidings.realtime.channel_events import ChannelSubscriber
from tidings.realtime.channels import Channels
from tidings.realtime.dispatcher import Dispatcher
from tidings.realtime.group import Selection, Sink, Subscriber
from tidings.realtime.live import LiveHub, LiveMember, is_live
from tidings.realtime.live_plan import LiveQueries
from tidings.realtime.related import RelatedRows, nested_plan
from tidings.realtime.system import SystemEvents, SystemSubscriber
from tidings.resolvers.context import Context, Services
from tidings.schema.executor import Executor as FieldExecutor
from tidings.schema.extensions import classify_all, finish_errors, log_unexpected, snapshot_extensions


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    query: str
    variables: dict[str, Any] | None = None
    operation_name: str | None = None
    extensions: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Rejected:
    """The operation did not start: send these errors (protocol ``error``)."""

    errors: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class Finished:
    """A query or mutation ran: send this one result, then complete."""

    payload: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Streaming:
    """A subscription is live; ``subscriber`` is what to unsubscribe."""

    subscriber: Subscriber | ChannelSubscriber | LiveMember | SystemSubscriber | StreamSubscriber
    request: Request | None = None  # set once announced to the on_subscribe hooks


Outcome = Rejected | Finished | Streaming


def _error(message: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"message": message, "extensions": {"code": code, **extra}}


def _tidings_error(exc: TidingsError) -> dict[str, Any]:
    return {"message": exc.message, "extensions": exc.extensions}


class Engine:
    def __init__(
        self,
        schema: strawberry.Schema,
        services: Services,
        dispatcher: Dispatcher,
        collections: list[Collection],
        *,
        documents: Documents,
        limits: Limits | None = None,
        suggestions: bool = True,
        live_max_rows: int = 1000,
        channels: Channels | None = None,
        count_mutations: Callable[[OperationDefinitionNode, Sequence[GraphQLError] | None], None] | None = None,
        expiring_lead: float = 60.0,
    ) -> None:
        self.schema = schema
        self.suggestions = suggestions
        self.limits = limits
        self.services = services
        self.dispatcher = dispatcher
        self.by_field = {c.events_field: c for c in collections}
        self.channels = channels  # serves channelEvents and presence, when the app has channels
        self.system = SystemEvents(expiring_lead=expiring_lead)  # systemEvents, per connection
        self.documents = documents  # the app's one parser and validator, shared with Strawberry's view
        self.live_hub = LiveHub(services.store, lambda: dispatcher.position)
        dispatcher.observers.append(self.live_hub.observe)
        dispatcher.flushers.append(self.live_hub.flush)
        dispatcher.schema_listeners.append(self.system.schema_updated)
        self.live = LiveQueries(
            schema._schema,
            services.store,
            services.permissions,
            collections,
            self.live_hub,
            max_rows=live_max_rows,
            max_limit=services.max_limit,
        )
        # Counts a mutation's root fields by outcome (tidings_mutations_total), when the app keeps metrics.
        self.count_mutations = count_mutations

    def _parse(self, query: str, principal: Principal | None) -> Parsed:
        """``query`` for ``principal`` (None: only to learn what it is, see ``Documents.get``)."""
        return self.documents.get(self.schema._schema, query, principal)

    async def prepare(self, request: Request) -> None:
        """Parse and validate a big document off the event loop, before a transport looks at it."""
        await self.documents.prepare(self.schema._schema, request.query)

    async def operation_type(self, request: Request, principal: Principal | None = None) -> OperationType | None:
        """The type of the operation a request would run (None if it cannot run, for ``principal``
        when given; without, whoever asks: introspection is not judged)."""
        await self.prepare(request)
        parsed = self._parse(request.query, principal)
        if parsed.document is None or parsed.errors:
            return None
        op = _find_operation(parsed.document, request.operation_name)
        return op.operation if op is not None else None

    async def validate(self, request: Request, principal: Principal) -> list[dict[str, Any]]:
        """The errors that keep ``principal``'s request from running (empty when it can run)."""
        await self.prepare(request)
        parsed = self._parse(request.query, principal)
        if parsed.errors or parsed.document is None:
            return [dict(e.formatted) for e in classify_all(list(parsed.errors), suggestions=self.suggestions)]
        if _find_operation(parsed.document, request.operation_name) is None:
            return [_error("Unknown or ambiguous operation name", "BAD_USER_INPUT")]
        return []

    def _runnable(self, request: Request, principal: Principal) -> tuple[DocumentNode, OperationDefinitionNode] | None:
        """The document and operation of a valid query or mutation ``execute`` runs itself, else None.

        None for what needs more than one result or a proper refusal: errors in the
        document, an unknown operation name, a subscription, a ``query @live``.
        """
        parsed = self._parse(request.query, principal)
        if parsed.document is None or parsed.errors:
            return None
        op = _find_operation(parsed.document, request.operation_name)
        if op is None or op.operation is OperationType.SUBSCRIPTION or is_live(op):
            return None
        return parsed.document, op

    async def executable(self, request: Request, principal: Principal) -> OperationType | None:
        """The type of a valid query or mutation ``execute`` can answer at once for ``principal``, else None."""
        await self.prepare(request)
        runnable = self._runnable(request, principal)
        return runnable[1].operation if runnable is not None else None

    async def execute(self, request: Request, context: Context) -> ExecutionResult:
        """Execute a query or mutation: the one path for HTTP, WebSocket and SSE, so the same
        limits, read snapshot, error codes and metrics apply to each."""
        runnable = self._runnable(request, context.principal)
        if runnable is None:
            # Strawberry answers what cannot run (its messages), through the same extensions.
            return await self.schema.execute(
                request.query,
                variable_values=request.variables,
                context_value=context,
                operation_name=request.operation_name,
                operation_extensions=request.extensions,
            )
        return await self._execute(*runnable, request, context)

    async def _execute(
        self, document: DocumentNode, operation: OperationDefinitionNode, request: Request, context: Context
    ) -> ExecutionResult:
        """graphql-core's execution of a parsed, valid document, with what the schema's extensions
        do around it (RateLimit, ReadSnapshot, ErrorCodes, MutationCounter), without Strawberry's
        per-request extension machinery (a tenth of a millisecond per request)."""
        refused = await refuse_operation(context, operation.operation.value)
        if refused is not None:
            return ExecutionResult(data=None, errors=finish_errors([refused], context, suggestions=self.suggestions))
        try:
            result = execute(
                self.schema._schema,
                document,
                context_value=context,
                variable_values=request.variables,
                operation_name=request.operation_name,
                executor_class=FieldExecutor,
                is_awaitable=optimized_is_awaitable,  # type: ignore[arg-type]  # a TypeGuard in all but name
                operation_extensions=request.extensions,
            )
            if isawaitable(result):
                result = await result
        except Exception as exc:  # outside any resolver (they are graphql-core's to catch): masked
            result = _failed(exc)
        finally:
            # Also when a resolver raised or the request was cancelled: the connection goes back.
            try:
                await context.close()
            except Exception as exc:  # reading the snapshot's position failed: no answer to trust
                result = _failed(exc)
        errors = result.errors
        if errors:
            log_unexpected(errors)  # the originals, before masking
            errors = finish_errors(list(errors), context, suggestions=self.suggestions, data=result.data)
        if operation.operation is OperationType.MUTATION and self.count_mutations is not None:
            self.count_mutations(operation, errors)
        return ExecutionResult(data=result.data, errors=errors or None, extensions=snapshot_extensions(context))

    async def run(
        self,
        request: Request,
        *,
        principal: Principal,
        sink: Sink,
        op_id: str,
        connection: Any = None,
        allow: frozenset[OperationType] | None = None,
        after: str | None = None,
    ) -> Outcome:
        """Run one operation. ``after`` (an SSE Last-Event-ID) overrides the ``after`` argument."""
        await self.prepare(request)
        tracing = self.services.tracing
        if not tracing.enabled:
            return await self._run(request, principal, sink, op_id, connection, allow, after)
        kind = await self.operation_type(request)
        transport = getattr(getattr(sink, "stats", None), "transport", "sse")
        with tracing.operation(transport, kind.value if kind else "invalid", request.operation_name):
            return await self._run(request, principal, sink, op_id, connection, allow, after)

    async def _run(
        self,
        request: Request,
        principal: Principal,
        sink: Sink,
        op_id: str,
        connection: Any,
        allow: frozenset[OperationType] | None,
        after: str | None,
    ) -> Outcome:
        parsed = self._parse(request.query, principal)
        if parsed.errors or parsed.document is None:
            errors = classify_all(list(parsed.errors), suggestions=self.suggestions)
            return Rejected([dict(e.formatted) for e in errors])
        operation = _find_operation(parsed.document, request.operation_name)
        if operation is None:
            return Rejected([_error("Unknown or ambiguous operation name", "BAD_USER_INPUT")])
        if allow is not None and operation.operation not in allow:
            return Rejected([_error(f"{operation.operation.value} operations are not allowed here", "BAD_USER_INPUT")])
        live = operation.operation is OperationType.QUERY and is_live(operation)
        if (live or operation.operation is OperationType.SUBSCRIPTION) and self.limits is not None:
            limited = await self.limits.check_subscribe(principal, sink)
            if limited is not None:
                return Rejected([_tidings_error(limited)])
        if live:
            started = await self._live(request, parsed.document, operation, principal, sink, op_id)
            return self._announce(started, request)
        if operation.operation is not OperationType.SUBSCRIPTION:
            context = Context(self.services, principal=principal, connection=connection, client=sink)
            result = await self.execute(request, context)
            payload: dict[str, Any] = {"data": result.data}
            if result.errors:
                payload["errors"] = [e.formatted for e in result.errors]
            if result.extensions:
                payload["extensions"] = result.extensions
            return Finished(payload)
        try:
            outcome = await self._subscribe(request, parsed.document, operation, principal, sink, op_id, after)
        except TidingsError as exc:
            return Rejected([_tidings_error(exc)])
        if isinstance(outcome, Streaming) and self.limits is not None:
            # Set after the replay: the event rate counts live events only. No await
            # between here and the transport registering the stream.
            outcome.subscriber.rate = self.limits.event_bucket()
        return self._announce(outcome, request)

    def _announce(self, outcome: Outcome, request: Request) -> Outcome:
        """A stream that started: tell the on_subscribe hooks (stop tells on_unsubscribe)."""
        if not isinstance(outcome, Streaming):
            return outcome
        subscriber = outcome.subscriber
        self.services.hooks.subscribed(subscriber.sink, subscriber.op_id, request)
        return Streaming(subscriber, request)

    async def _subscribe(
        self,
        request: Request,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        principal: Principal,
        sink: Sink,
        op_id: str,
        after_override: str | None,
    ) -> Outcome:
        built = Executor.build(
            self.schema._schema,
            document,
            context_value=None,
            raw_variable_values=request.variables,
            operation_name=request.operation_name,
        )
        if isinstance(built, list):
            return Rejected([dict(e.formatted) for e in classify_all(built, suggestions=self.suggestions)])
        node = _root_field(operation.selection_set, document)
        if node.name.value == "systemEvents":
            return Streaming(self.system.subscribe(sink, op_id, built))
        if self.channels is not None and node.name.value in ("channelEvents", "presence"):
            return await self._subscribe_channel(request, node, built, principal, sink, op_id, after_override)
        collection = self.by_field.get(node.name.value)
        if collection is None:  # one of your own (an async generator)
            context = Context(self.services, principal=principal, client=sink)
            started = await start_stream(
                self.schema._schema, document, request.variables, request.operation_name, context, sink, op_id
            )
            return Rejected(started) if isinstance(started, list) else Streaming(started)
        subscription_type = self.schema._schema.subscription_type
        assert subscription_type is not None
        args = get_argument_values(subscription_type.fields[node.name.value], node, built.variable_values)
        authorizer = self.services.authorizer
        guard = authorizer.guard(collection.name, principal, Action.READ)
        guard_for = authorizer.read_guards(principal)
        where = parse_filter(args.get("where"), collection.filter_fields, guard_for=guard_for)
        store = self.services.store
        nested = nested_plan(
            self.schema._schema,
            document,
            node,
            built.variable_values,
            collection,
            store.collections,
            guard_for,
            self.services.max_limit,
        )
        related = RelatedRows(store, collection, And((guard, where)), nested)
        ops = args.get("operations")
        after = await self._check_cursor(args.get("after") if after_override is None else after_override)
        record_id = args.get("id")
        changed_fields = _changed_fields(args.get("changedFields"))
        selection = Selection(
            collection=collection,
            where=where,
            operations=frozenset(Operation(o.value) for o in ops) if ops else None,
            record_id=str(record_id) if record_id is not None else None,
            guard=guard,
            epoch=self.services.store.epoch,
            changed_fields=changed_fields,
            related=related if related.needed else None,
        )
        account = authorizer.index_account(principal)
        # Members of a group share every decision and every byte, so the key holds all
        # that decides them: the document, its variables, and the read guard itself
        # (account, owner and claim values already substituted), not who the caller is.
        # Two users whose rules resolve to the same guard share; any difference splits.
        # `after` is not in the key, nor the variable that only feeds it: it shapes only the
        # replay, so clients resuming from different seqs join one group (and share the replay).
        variables = request.variables or {}
        for name in _after_only_variables(document, node):
            variables = {k: v for k, v in variables.items() if k != name}
        key = (
            request.query,
            request.operation_name,
            orjson.dumps(variables, option=orjson.OPT_SORT_KEYS),
            repr(guard),
            account,
            related.scope if related.needed else None,
        )
        subscriber = await self.dispatcher.subscribe(
            key=key,
            selection=selection,
            executor=built,
            account=account,
            sink=sink,
            op_id=op_id,
            after=after,
        )
        return Streaming(subscriber)

    async def _subscribe_channel(
        self,
        request: Request,
        node: FieldNode,
        built: Executor[Any],
        principal: Principal,
        sink: Sink,
        op_id: str,
        after_override: str | None,
    ) -> Outcome:
        assert self.channels is not None and self.schema._schema.subscription_type is not None
        field = self.schema._schema.subscription_type.fields[node.name.value]
        args = get_argument_values(field, node, built.variable_values)
        render_key = (request.query, request.operation_name, orjson.dumps(request.variables or {}))
        if node.name.value == "presence":
            joined = await self.channels.presence.join(
                principal, args, executor=built, render_key=render_key, sink=sink, op_id=op_id
            )
            return Streaming(joined)
        subscriber = await self.channels.events.subscribe(
            principal,
            args,
            executor=built,
            render_key=render_key,
            sink=sink,
            op_id=op_id,
            after_override=after_override,
        )
        return Streaming(subscriber)

    async def _live(
        self,
        request: Request,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        principal: Principal,
        sink: Sink,
        op_id: str,
    ) -> Outcome:
        """A ``query @live``: its first result and then patches go out through ``sink``."""
        try:
            started = await self.live.start(
                request.query, request.operation_name, request.variables, document, operation, principal, sink, op_id
            )
        except TidingsError as exc:
            return Rejected([_tidings_error(exc)])
        if isinstance(started, list):
            return Rejected([dict(e.formatted) for e in classify_all(started, suggestions=self.suggestions)])
        return Streaming(started)

    def stop(self, outcome: Streaming) -> None:
        if outcome.request is not None:
            self.services.hooks.unsubscribed(outcome.subscriber.sink, outcome.subscriber.op_id, outcome.request)
        if isinstance(outcome.subscriber, SystemSubscriber):
            self.system.unsubscribe(outcome.subscriber)
            return
        if isinstance(outcome.subscriber, LiveMember):
            self.live_hub.unsubscribe(outcome.subscriber)
            return
        if isinstance(outcome.subscriber, StreamSubscriber):
            outcome.subscriber.stop()
            return
        if isinstance(outcome.subscriber, ChannelSubscriber):
            outcome.subscriber.close()
            return
        self.dispatcher.unsubscribe(outcome.subscriber)

    def cursor(self, seq: int) -> str:
        """The resume cursor of ``seq`` in this event log: ``<epoch>:<seq>``."""
        return f"{self.services.store.epoch}:{seq}"

    async def _check_cursor(self, value: Any) -> int | None:
        """The seq to resume after, from a cursor or a plain seq this log could have issued.

        Checked here, before the dispatcher replays anything: a cursor of another
        event log (its epoch differs) or one ahead of the head would otherwise be
        accepted and then deliver nothing, or the wrong events, without a word.
        """
        parsed = _parse_cursor(value)
        if parsed is None:
            return None
        epoch, seq = parsed
        if epoch is not None and epoch != self.services.store.epoch:
            raise CursorInvalid(
                f"Cursor {value!s:.60} is from another event log (the database was replaced or reset): "
                "re-query, then subscribe again with the cursor of that response"
            )
        # position may trail the log by a doorbell in flight (a query just read seq N the
        # dispatcher has not reached): only a seq past the log's own head is refused.
        if seq > self.dispatcher.position and seq > await self.services.store.last_seq():
            raise CursorInvalid(
                f"Cursor {value!s:.60} is ahead of this event log's head (the database was replaced or reset): "
                "re-query, then subscribe again with the cursor of that response"
            )
        return seq


def _failed(exc: Exception) -> GraphQLExecutionResult:
    """No data, and ``exc`` as the error (logged, then masked, as a resolver's would be)."""
    return GraphQLExecutionResult(None, [GraphQLError(str(exc), original_error=exc)])


def _changed_fields(values: Any) -> frozenset[str] | None:
    """The columns a ``changedFields`` argument names (its enum values); an empty list would match no update."""
    if values is None:
        return None
    if not values:
        raise BadUserInput("changedFields must name at least one field, or be left out", field="changedFields")
    return frozenset(str(getattr(v, "value", v)) for v in values)


def _parse_cursor(value: Any) -> tuple[str | None, int] | None:
    """``<epoch>:<seq>`` or a plain ``<seq>`` (decimal digits) as (epoch or None, seq)."""
    if value is None:
        return None
    text = str(value)
    epoch, colon, digits = text.rpartition(":")
    if (
        not digits.isdigit()
        or not digits.isascii()
        or len(digits) > 18
        or (colon and not (0 < len(epoch) <= 32 and epoch.isascii() and epoch.isalnum()))
    ):
        raise BadUserInput(
            f"after must be a cursor (epoch:seq) or a seq (decimal digits), got {text[:40]!r}", field="after"
        )
    return (epoch if colon else None), int(digits)


class _VariableUses(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def enter_variable(self, node: VariableNode, *_: Any) -> None:
        self.names.append(node.name.value)


def _after_only_variables(document: DocumentNode, field: FieldNode) -> list[str]:
    """Variables used by the root field's ``after`` argument and nowhere else (besides their definition)."""
    names = [
        arg.value.name.value
        for arg in field.arguments or ()
        if arg.name.value == "after" and isinstance(arg.value, VariableNode)
    ]
    if not names:
        return names
    uses = _VariableUses()
    visit(document, uses)
    return [name for name in names if uses.names.count(name) == 2]


def _find_operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode | None:
    ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name is None:
        return ops[0] if len(ops) == 1 else None
    for op in ops:
        if op.name is not None and op.name.value == name:
            return op
    return None


def _root_field(selection_set: SelectionSetNode, document: DocumentNode) -> FieldNode:
    """The single root field of a subscription (validation guarantees one)."""
    fragments = {d.name.value: d for d in document.definitions if hasattr(d, "type_condition") and hasattr(d, "name")}
    for sel in selection_set.selections:
        if isinstance(sel, FieldNode):
            if sel.name.value.startswith("__"):
                continue
            return sel
        if isinstance(sel, InlineFragmentNode):
            return _root_field(sel.selection_set, document)
        if isinstance(sel, FragmentSpreadNode):
            return _root_field(fragments[sel.name.value].selection_set, document)  # type: ignore[attr-defined]
    raise BadUserInput("A subscription must select one field")
