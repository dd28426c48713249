"""tidings.schema.executor completes plain leaves itself: the answer must be graphql-core's, byte for byte.

Each operation runs twice on the same schema and sources, once with Strawberry's
execution context (graphql-core completing every field) and once with ours, and the
data and formatted errors must be equal: good values, and values a leaf cannot
serialize (null in a non-null field, a string in an Int, an Int beyond 32 bits, an
unknown enum value, an exception as value, a missing attribute), inside lists of
nullable and non-null items, under aliases, fragments, @skip/@include and __typename.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import pytest
import strawberry
from graphql import execute, parse
from strawberry.schema.config import StrawberryConfig
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from tidings.engine.build import TidingsSchema, _direct_resolvers, resolve_attribute
from tidings.schema.executor import Executor


@strawberry.enum
class Status(enum.Enum):
    OPEN = "open"
    DONE = "done"


@strawberry.type
class Row:
    id: strawberry.ID
    n: int
    m: int | None
    s: str | None
    status: Status
    at: dt.datetime | None
    tags: list[str] | None


@strawberry.type
class Holder:
    name: str
    row: Row | None


GOOD = {
    "id": "a",
    "n": 1,
    "m": None,
    "s": "x",
    "status": Status.OPEN,
    "at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    "tags": ["p", "q"],
}
BAD_VALUES: list[dict[str, Any]] = [
    {"n": None},  # null in a non-null leaf: the row becomes null (or the list, or data)
    {"n": "seven"},  # not an Int
    {"m": 2**40},  # beyond 32 bits, in a nullable leaf
    {"status": "BOGUS"},
    {"s": ValueError("a value that is an exception")},
    {"tags": [1, None]},  # a list leaf: graphql-core's own path
    {"at": "not a datetime"},
]
DATASETS = [[GOOD]] + [[GOOD, {**GOOD, "id": f"b{i}", **bad}, GOOD] for i, bad in enumerate(BAD_VALUES)]
DATASETS.append([{k: v for k, v in GOOD.items() if k != "s"}])  # a missing attribute: None


class Obj:
    """A source that is an object, not a dict: attributes read with getattr."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def make_schema(rows: list[dict[str, Any]]) -> TidingsSchema:
    @strawberry.type
    class Query:
        @strawberry.field
        def rows(self) -> list[Row]:
            return rows  # type: ignore[return-value]

        @strawberry.field
        def maybe_rows(self) -> list[Row | None] | None:
            return rows  # type: ignore[return-value]

        @strawberry.field
        def first(self) -> Row:
            return rows[-1]  # type: ignore[return-value]

        @strawberry.field
        def objects(self) -> list[Row | None]:
            return [Obj(r) for r in rows]  # type: ignore[misc]

        @strawberry.field
        def holder(self) -> Holder:
            return {"name": "h", "row": rows[-1]}  # type: ignore[return-value]

    schema = TidingsSchema(
        query=Query,
        config=StrawberryConfig(default_resolver=resolve_attribute),
        execution_context_class=Executor,
    )
    _direct_resolvers(schema)
    return schema


QUERIES = [
    "{ rows { id n m s status at tags } }",
    "{ maybeRows { id n m s status at } }",
    "{ first { id n } }",
    "{ objects { id n m status } }",
    "{ rows { __typename id ident: id n n } }",
    "{ rows { ...F } maybeRows { ... on Row { id m } } } fragment F on Row { id n status }",
    "query($x: Boolean!) { maybeRows { id n @skip(if: $x) m @include(if: $x) } }",
    "{ holder { name row { id n s } } }",
    "{ a: first { id } b: maybeRows { n } }",
]


def run(schema: TidingsSchema, executor: type, query: str) -> tuple[Any, list[Any]]:
    result = execute(
        schema._schema,
        parse(query),
        variable_values={"x": True},
        executor_class=executor,
        context_value=None,
    )
    assert not hasattr(result, "__await__")
    return result.data, [e.formatted for e in result.errors or ()]  # type: ignore[union-attr]


@pytest.mark.parametrize("rows", DATASETS, ids=[f"data{i}" for i in range(len(DATASETS))])
@pytest.mark.parametrize("query", QUERIES)
def test_leaves_complete_as_graphql_core_does(rows: list[dict[str, Any]], query: str) -> None:
    schema = make_schema(rows)
    expected = run(schema, StrawberryGraphQLCoreExecutionContext, query)
    assert run(schema, Executor, query) == expected


def test_the_loop_is_the_one_that_ran() -> None:
    """Not vacuous: the plain leaves of these rows are completed by our loop, not graphql-core's."""
    schema = make_schema([GOOD, GOOD])
    calls: list[int] = []

    class Counting(Executor):
        def execute_field(self, *args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return super().execute_field(*args, **kwargs)

    data, errors = run(schema, Counting, "{ rows { id n m s status } }")
    assert errors == [] and data is not None and len(data["rows"]) == 2
    assert len(calls) == 1  # the root field alone
