"""The whole GraphQL schema from a list of collections, built once at start-up."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.tools import create_type
from strawberry.types import ExecutionContext

from tidings.resolvers.crud import build_mutation_fields, build_query_fields, build_subscription_fields
from tidings.schema.collection import Collection
from tidings.schema.extensions import ErrorCodes, ReadSnapshot, log_unexpected
from tidings.schema.inputs import Operation
from tidings.schema.types import CollectionTypes, TypeFactory


def resolve_attribute(obj: Any, name: str) -> Any:
    """Default field resolver: records and events are plain dicts on the hot path."""
    if type(obj) is dict:
        return obj.get(name)
    return getattr(obj, name)


class TidingsSchema(strawberry.Schema):
    """Logs only unexpected errors; user errors are answers, not incidents."""

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        log_unexpected(errors)


def build_schema(
    collections: Sequence[Collection],
    *,
    extra_mutations: Sequence[Any] = (),
    max_depth: int = 10,
    max_aliases: int = 100,
) -> tuple[strawberry.Schema, dict[str, CollectionTypes]]:
    factory = TypeFactory()
    types = {c.name: factory.build(c) for c in collections}
    query_fields: list[Any] = []
    mutation_fields: list[Any] = list(extra_mutations)
    subscription_fields: list[Any] = []
    for t in types.values():
        query_fields += build_query_fields(t)
        mutation_fields += build_mutation_fields(t)
        subscription_fields += build_subscription_fields(t, Operation)
    # The limit rules are made once, so every request carries the same rule classes and
    # the validation cache (keyed by document and rules) answers repeated operations.
    limits = [
        *QueryDepthLimiter(max_depth=max_depth).validation_rules,
        *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules,
    ]
    extensions: list[Callable[[], Any] | type] = [
        ErrorCodes,
        ReadSnapshot,
        lambda: AddValidationRules(limits),
        lambda: ValidationCache(maxsize=1024),
    ]
    schema = TidingsSchema(
        query=create_type("Query", query_fields),
        mutation=create_type("Mutation", mutation_fields),
        subscription=create_type("Subscription", subscription_fields),
        config=StrawberryConfig(default_resolver=resolve_attribute),
        extensions=extensions,
    )
    return schema, types
