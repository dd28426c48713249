"""The whole GraphQL schema from a list of collections, built once at start-up."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import strawberry
from graphql import GraphQLError, GraphQLObjectType
from strawberry.directive import DirectiveLocation
from strawberry.exceptions import DuplicatedTypeName
from strawberry.extensions import SchemaExtension
from strawberry.extensions.directives import DirectivesExtension, DirectivesExtensionSync
from strawberry.resolvers import is_default_resolver
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import create_type
from strawberry.types import ExecutionContext, ExecutionResult
from strawberry.types.base import StrawberryObjectDefinition

from tidings.engine.documents import Documents, DocumentsExtension
from tidings.errors import ConfigurationError
from tidings.limits import RateLimit
from tidings.model.collection import Collection
from tidings.resolvers.aggregates import build_aggregate_field
from tidings.resolvers.connections import build_connection_field
from tidings.resolvers.context import DIRECT
from tidings.resolvers.crud import build_mutation_fields, build_query_fields, build_subscription_fields
from tidings.resolvers.relations import relation_field
from tidings.schema.executor import Executor
from tidings.schema.extensions import ErrorCodes, ReadSnapshot, classify_all, log_unexpected
from tidings.schema.inputs import Operation
from tidings.schema.merge import check_unique, root_fields, your_fields
from tidings.schema.types import CollectionTypes, TypeFactory
from tidings.schema.validation import Introspection, validation_rules


def resolve_attribute(obj: Any, name: str) -> Any:
    """Default field resolver: records and events are plain dicts on the hot path."""
    if type(obj) is dict:
        return obj.get(name)
    return getattr(obj, name)


class TidingsSchema(strawberry.Schema):
    """Logs only unexpected errors; user errors are answers, not incidents."""

    suggestions: bool = True
    """False: no "Did you mean ...?" in error messages (they name fields a caller did not ask for)."""

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        log_unexpected(errors)

    def get_extensions(self, sync: bool = False) -> list[SchemaExtension]:
        # With any directive in the schema Strawberry wraps every field's resolver in its
        # DirectivesExtension, which applies directives written on fields, and makes every
        # field a coroutine. Ours (@live) sit on operations only: leave it out then.
        extensions = super().get_extensions(sync)
        if any(DirectiveLocation.FIELD in d.locations for d in self.directives):
            return extensions
        return [e for e in extensions if not isinstance(e, (DirectivesExtension, DirectivesExtensionSync))]

    async def execute(self, *args: Any, **kwargs: Any) -> ExecutionResult:
        # Errors raised outside the resolvers (an extension hook, closing the snapshot) skip
        # ErrorCodes' pass; mask them here too so no library text reaches a client.
        result = await super().execute(*args, **kwargs)
        if result.errors:
            result.errors = classify_all(list(result.errors), suggestions=self.suggestions)
        return result


@strawberry.directive(
    locations=[DirectiveLocation.QUERY],
    description=(
        "Keep this query's result current: over graphql-transport-ws, graphql-ws or graphql-sse the server "
        "sends the full result (revision 1), then a JSON patch (RFC 6902) per change with the next revision."
    ),
)
def live() -> None:
    """Marks a live query; the realtime engine serves it (over HTTP it answers once)."""


@dataclasses.dataclass(frozen=True, slots=True)
class YourCode:
    """The app's own Strawberry: ``@strawberry.type`` classes (or fields) whose fields join the root
    types, and more types to include (ones only an interface or a union reaches)."""

    queries: Sequence[Any] = ()
    mutations: Sequence[Any] = ()
    subscriptions: Sequence[Any] = ()
    types: Sequence[Any] = ()


def build_schema(
    collections: Sequence[Collection],
    *,
    extra_queries: Sequence[Any] = (),
    extra_mutations: Sequence[Any] = (),
    extra_subscriptions: Sequence[Any] = (),
    max_depth: int = 10,
    max_aliases: int = 100,
    introspection: Introspection = Introspection.ON,
    suggestions: bool = True,
    extra_extensions: Sequence[type] = (),
    documents: Documents | None = None,
    your_code: YourCode | None = None,
) -> tuple[strawberry.Schema, dict[str, CollectionTypes]]:
    """The schema; ``introspection`` says who may select ``__schema``/``__type`` (unless ``documents`` is
    given: its own policy), ``suggestions`` off drops "Did you mean". ``your_code``: the app's own
    Strawberry operations and types, merged beside the generated ones (``tidings.schema.merge``)."""
    factory = TypeFactory()
    types = factory.build_all(collections, relation_field)
    yours = your_code or YourCode()
    your_queries = your_fields(root_fields(yours.queries), types)
    your_mutations = your_fields(root_fields(yours.mutations), types)
    your_subscriptions = your_fields(root_fields(yours.subscriptions), types)
    query_fields: list[Any] = [*your_queries, *extra_queries]
    mutation_fields: list[Any] = [*your_mutations, *extra_mutations]
    subscription_fields: list[Any] = [*your_subscriptions, *extra_subscriptions]
    for t in types.values():
        query_fields += build_query_fields(t)
        query_fields += [build_connection_field(t), build_aggregate_field(t)]
        mutation_fields += build_mutation_fields(t)
        subscription_fields += build_subscription_fields(t, Operation)
    check_unique("Query", query_fields, your_queries)
    check_unique("Mutation", mutation_fields, your_mutations)
    check_unique("Subscription", subscription_fields, your_subscriptions)
    # One parser, validator and cache for Strawberry's view and the engine (tidings.engine.documents).
    if documents is None:
        documents = Documents(
            validation_rules(max_depth=max_depth, max_aliases=max_aliases), introspection=introspection
        )
    shared = documents
    extensions: list[Callable[[], Any] | type] = [
        *extra_extensions,
        ErrorCodes,
        RateLimit,
        ReadSnapshot,
        lambda: DocumentsExtension(shared),
    ]
    try:
        schema = TidingsSchema(
            query=create_type("Query", query_fields),
            mutation=create_type("Mutation", mutation_fields),
            subscription=create_type("Subscription", subscription_fields),
            config=StrawberryConfig(default_resolver=resolve_attribute),
            extensions=extensions,
            directives=[live],
            execution_context_class=Executor,
            types=list(yours.types),
        )
    except DuplicatedTypeName as exc:
        name = getattr(exc.first_cls, "__name__", None) or exc.message
        raise ConfigurationError(
            f"Type {name!r} is defined twice (your code and tidings' generated API, "
            "which names each collection's types after it: Card, CardEvent, CreateCardInput...); rename yours"
        ) from None
    schema.suggestions = suggestions
    _direct_resolvers(schema)
    return schema, types


def _direct_resolvers(schema: strawberry.Schema) -> None:
    """Fields whose graphql-core resolver need not go through Strawberry's wrappers get it direct.

    - The fields marked ``crud.DIRECT`` (the collections' queries and mutations): their
      resolver itself, taking graphql-core's coerced arguments (see tidings.resolvers.crud).
    - Plain attribute fields (no resolver, no field extension) read their value directly.
      Strawberry resolves them through two wrappers per field and value (its basic-field
      path, then the field's ``get_result``); a 50-row list of five fields makes 250 such
      calls. The value is the same: ``resolve_attribute`` of the field's Python name.
    """
    converter = schema.schema_converter
    for concrete in list(converter.type_map.values()):
        definition, implementation = concrete.definition, concrete.implementation
        if not isinstance(definition, StrawberryObjectDefinition) or not isinstance(implementation, GraphQLObjectType):
            continue
        for field in definition.fields:
            graphql_field = implementation.fields.get(converter.config.name_converter.get_graphql_name(field))
            if graphql_field is None:
                continue
            if field.metadata.get(DIRECT) and field.base_resolver is not None:
                graphql_field.resolve = field.base_resolver.wrapped_func
            elif (
                field.is_basic_field
                and field.default_resolver is resolve_attribute
                and is_default_resolver(graphql_field.resolve)
            ):
                graphql_field.resolve = _attribute(field.python_name)


def _attribute(name: str) -> Callable[..., Any]:
    def resolve(source: Any, _info: Any, **_: Any) -> Any:
        if type(source) is dict:
            return source.get(name)
        return getattr(source, name)

    # Strawberry's mark of a default resolver (its ``is_default_resolver`` reads it): tracing skips it.
    resolve._is_default = True  # type: ignore[attr-defined]
    resolve.attribute = name  # type: ignore[attr-defined]  # tidings.schema.executor reads it directly
    return resolve
