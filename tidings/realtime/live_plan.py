"""From a ``query @live`` operation to its live sources: which root fields, kept how,
under which read guards, and the key that groups identical live queries."""

from __future__ import annotations

from typing import Any

import orjson
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLObjectType,
    GraphQLSchema,
    OperationDefinitionNode,
    get_named_type,
)
from graphql.execution import get_argument_values

from tidings.auth.permissions import Permissions
from tidings.auth.principal import Principal
from tidings.auth.rules import Action, Authorizer
from tidings.errors import BadUserInput
from tidings.filters import And, Compare, Filter, GuardFor, Not, Or, compile_predicate, parse_filter, related_targets
from tidings.model.collection import Collection
from tidings.realtime.aggregate_window import AggregateWindow
from tidings.realtime.connection_window import ConnectionWindow
from tidings.realtime.group import Sink
from tidings.realtime.live import LiveExecutor, LiveHub, LiveMember, LiveSource
from tidings.realtime.window import Count, Single, Window
from tidings.resolvers.aggregates import aggregate_field, aggregate_spec, requested
from tidings.resolvers.connections import connection_field, paging
from tidings.resolvers.convert import check_page, order_keys
from tidings.resolvers.crud import count_field
from tidings.resolvers.prefetch import Nested, plan
from tidings.store import Store

__all__ = ["LiveQueries", "order_keys", "reads_column"]


def reads_column(f: Filter, column: str) -> bool:
    """Whether a filter compares ``column`` anywhere."""
    if isinstance(f, Compare):
        return f.column == column
    if isinstance(f, Not):
        return reads_column(f.item, column)
    if isinstance(f, And | Or):
        return any(reads_column(i, column) for i in f.items)
    return False


def root_fields(operation: OperationDefinitionNode) -> list[FieldNode]:
    fields: list[FieldNode] = []
    for selection in operation.selection_set.selections:
        if not isinstance(selection, FieldNode):
            raise BadUserInput("A live query selects fields at its root, not fragments")
        fields.append(selection)
    return fields


class LiveQueries:
    """Turns a ``query @live`` operation into a member of its live group."""

    def __init__(
        self,
        schema: GraphQLSchema,
        store: Store,
        permissions: Permissions,
        collections: list[Collection],
        hub: LiveHub,
        *,
        max_rows: int = 1000,
        max_limit: int = 1000,
    ) -> None:
        self.schema = schema
        self.store = store
        self.permissions = permissions
        self.hub = hub
        self.max_rows = max_rows
        self.max_limit = max_limit
        self.lists = {c.plural: c for c in collections}
        self.singles = {c.single_field: c for c in collections}
        self.counts = {count_field(c): c for c in collections}
        self.connections = {connection_field(c): c for c in collections}
        self.aggregates = {aggregate_field(c): c for c in collections}
        self.collections = {c.name: c for c in collections}

    @property
    def authorizer(self) -> Authorizer:
        """The rules in force now (read on each use: a reload may have replaced them)."""
        return self.permissions.current

    async def start(
        self,
        request_query: str,
        operation_name: str | None,
        variables: dict[str, Any] | None,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        principal: Principal,
        sink: Sink,
        op_id: str,
    ) -> LiveMember | list[GraphQLError]:
        built = LiveExecutor.build(self.schema, document, raw_variable_values=variables, operation_name=operation_name)
        if isinstance(built, list):
            return built
        query_type = self.schema.query_type
        assert query_type is not None
        plans: list[tuple[str, Collection, str, dict[str, Any]]] = []
        nodes: list[FieldNode] = []
        guards: dict[str, Filter] = {}
        for node in root_fields(operation):
            name = node.name.value
            key = node.alias.value if node.alias is not None else name
            if name == "__typename":
                continue
            kind, coll = self._kind(name)
            if coll is None:
                raise BadUserInput(
                    f"{name} cannot be live: live queries keep lists, connections, counts, aggregates and records by id"
                )
            if coll.name not in guards:
                guards[coll.name] = self.authorizer.guard(coll.name, principal, Action.READ)
            args = get_argument_values(query_type.fields[name], node, built.variable_values)
            if kind == "aggregate":
                args["__wanted"] = requested(node, document)
            plans.append((key, coll, kind, args))
            nodes.append(node)
        guard_for = self.authorizer.read_guards(principal)
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        sources = []
        for (key, coll, kind, args), node in zip(plans, nodes, strict=True):
            nested: tuple[Nested, ...] = ()
            if kind in ("list", "single"):  # records at the root: their nested relations are read with them
                record_type = get_named_type(query_type.fields[node.name.value].type)
                assert isinstance(record_type, GraphQLObjectType)
                variables_ = built.variable_values
                nested = plan(
                    [node], record_type, fragments, variables_, coll, self.collections, guard_for, self.max_limit
                )
            sources.append(self._source(key, coll, kind, args, guards[coll.name], guard_for, nested))
        account = self.authorizer.index_account(principal)
        # The grouping of event subscriptions (see Engine._subscribe): all that decides the
        # result is in the key, the read guards with their substituted values included.
        group_key = (
            "live",
            request_query,
            operation_name,
            orjson.dumps(variables or {}, option=orjson.OPT_SORT_KEYS),
            tuple(sorted((name, repr(g)) for name, g in guards.items())),
            account,
            tuple(repr((s.where, s.nested)) for s in sources if s.refetch),  # relations: their guards too
        )
        return await self.hub.subscribe(group_key, lambda: (sources, built), account, sink, op_id)

    def _kind(self, name: str) -> tuple[str, Collection | None]:
        for kind, fields in (
            ("list", self.lists),
            ("single", self.singles),
            ("count", self.counts),
            ("connection", self.connections),
            ("aggregate", self.aggregates),
        ):
            if name in fields:
                return kind, fields[name]
        return "", None

    def _source(
        self,
        key: str,
        coll: Collection,
        kind: str,
        args: dict[str, Any],
        guard: Filter,
        guard_for: GuardFor,
        nested: tuple[Nested, ...],
    ) -> LiveSource:
        if kind == "single":
            reads = _depends(guard, nested)
            single = Single(str(args["id"]), compile_predicate(guard))
            return LiveSource(
                key, coll, single, guard, nested=nested, depends=reads - {coll.name}, loops=coll.name in reads
            )
        if kind == "connection":
            return self._connection(key, coll, args, guard, guard_for)
        if kind == "aggregate":
            return self._aggregate(key, coll, args, guard, guard_for)
        where = parse_filter(args.get("where"), coll.filter_fields, guard_for=guard_for)
        view = And((guard, where))
        reads = _depends(view, nested)
        depends, loops = reads - {coll.name}, coll.name in reads
        exact = not reads_column(view, "updated_at")
        if kind == "count":
            count = Count(compile_predicate(view), exact_before=exact)
            return LiveSource(key, coll, count, view, depends=depends, loops=loops)
        limit, offset = args.get("limit"), args.get("offset") or 0
        if limit is None or limit > self.max_rows:
            raise BadUserInput(
                f"A live {coll.plural} query keeps at most {self.max_rows} rows: give a limit of at most that "
                f"(got {'none' if limit is None else limit})",
                field="limit",
                maxRows=self.max_rows,
            )
        check_page(limit, offset, self.max_limit)
        order = order_keys(args.get("orderBy"), coll)
        exact = exact and all(column != "updated_at" for column, _ in order)
        window = Window(order, offset, limit, compile_predicate(view), exact_before=exact)
        return LiveSource(key, coll, window, view, order, nested=nested, depends=depends, loops=loops)

    def _connection(
        self, key: str, coll: Collection, args: dict[str, Any], guard: Filter, guard_for: GuardFor
    ) -> LiveSource:
        cap = min(self.max_rows, self.max_limit)
        if args.get("first") is None and args.get("last") is None:
            raise BadUserInput(
                f"A live {connection_field(coll)} keeps at most {cap} rows: give first or last, at most that",
                field="first",
                maxRows=cap,
            )
        p = paging(coll, args, guard, cap, guard_for=guard_for)
        exact = not reads_column(p.bounded, "updated_at") and all(column != "updated_at" for column, _ in p.order)
        kept = ConnectionWindow(coll, p, exact_before=exact)
        return LiveSource(key, coll, kept, p.view, depends=_depends(p.view, ()) - {coll.name})

    def _aggregate(
        self, key: str, coll: Collection, args: dict[str, Any], guard: Filter, guard_for: GuardFor
    ) -> LiveSource:
        view = And((guard, parse_filter(args.get("where"), coll.filter_fields, guard_for=guard_for)))
        spec = aggregate_spec(coll, args.get("groupBy"), args["__wanted"])
        kept = AggregateWindow(
            coll, spec, view, exact_before=not reads_column(view, "updated_at"), max_groups=self.max_rows
        )
        return LiveSource(key, coll, kept, view, depends=_depends(view, ()) - {coll.name})


def _depends(f: Filter, nested: tuple[Nested, ...]) -> frozenset[str]:
    """The collections a filter's relations and a selection's nested relations read."""
    found = related_targets(f)
    plans = list(nested)
    while plans:
        p = plans.pop()
        found.add(p.target.name)
        found |= related_targets(p.where)  # the nested relation's own filter may follow relations too
        plans.extend(p.nested)
    return frozenset(found)
