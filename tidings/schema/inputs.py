"""Shared GraphQL input types: per-kind field filters and sort direction.

No ``from __future__ import annotations`` here: Strawberry reads these
annotations as objects.
"""

import datetime as dt
import enum
from typing import Any

import strawberry
from strawberry.scalars import JSON

from tidings.filters import FieldKind


@strawberry.enum(description="Sort direction; NULLs sort last either way.")
class SortDirection(enum.Enum):
    ASC = "ASC"
    DESC = "DESC"


@strawberry.enum(description="What a change did to a record.")
class Operation(enum.Enum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    DELETED = "DELETED"
    RESTORED = "RESTORED"


@strawberry.enum(description="How an event relates to the subscription's filter.")
class Match(enum.Enum):
    ENTERED = "ENTERED"
    STAYED = "STAYED"
    LEFT = "LEFT"


@strawberry.input(description="Filter on an ID field.")
class IDFilter:
    eq: strawberry.ID | None = None
    ne: strawberry.ID | None = None
    in_: list[strawberry.ID] | None = strawberry.field(name="in", default=None)
    not_in: list[strawberry.ID] | None = None
    is_null: bool | None = None


@strawberry.input(description="Filter on a String field; comparisons are by code point, case-sensitive.")
class StringFilter:
    eq: str | None = None
    ne: str | None = None
    in_: list[str] | None = strawberry.field(name="in", default=None)
    not_in: list[str] | None = None
    lt: str | None = None
    lte: str | None = None
    gt: str | None = None
    gte: str | None = None
    contains: str | None = None
    starts_with: str | None = None
    is_null: bool | None = None


@strawberry.input(description="Filter on an Int field.")
class IntFilter:
    eq: int | None = None
    ne: int | None = None
    in_: list[int] | None = strawberry.field(name="in", default=None)
    not_in: list[int] | None = None
    lt: int | None = None
    lte: int | None = None
    gt: int | None = None
    gte: int | None = None
    is_null: bool | None = None


@strawberry.input(description="Filter on a Float field.")
class FloatFilter:
    eq: float | None = None
    ne: float | None = None
    in_: list[float] | None = strawberry.field(name="in", default=None)
    not_in: list[float] | None = None
    lt: float | None = None
    lte: float | None = None
    gt: float | None = None
    gte: float | None = None
    is_null: bool | None = None


@strawberry.input(description="Filter on a Boolean field.")
class BooleanFilter:
    eq: bool | None = None
    ne: bool | None = None
    is_null: bool | None = None


@strawberry.input(description="Filter on a DateTime field.")
class DateTimeFilter:
    eq: dt.datetime | None = None
    ne: dt.datetime | None = None
    in_: list[dt.datetime] | None = strawberry.field(name="in", default=None)
    not_in: list[dt.datetime] | None = None
    lt: dt.datetime | None = None
    lte: dt.datetime | None = None
    gt: dt.datetime | None = None
    gte: dt.datetime | None = None
    is_null: bool | None = None


@strawberry.input(description="Filter on a JSON field.")
class JSONFilter:
    is_null: bool | None = None


FILTER_INPUTS: dict[FieldKind, Any] = {
    FieldKind.ID: IDFilter,
    FieldKind.STRING: StringFilter,
    FieldKind.INT: IntFilter,
    FieldKind.FLOAT: FloatFilter,
    FieldKind.BOOLEAN: BooleanFilter,
    FieldKind.DATETIME: DateTimeFilter,
    FieldKind.JSON: JSONFilter,
}

SCALARS: dict[FieldKind, Any] = {
    FieldKind.ID: strawberry.ID,
    FieldKind.STRING: str,
    FieldKind.INT: int,
    FieldKind.FLOAT: float,
    FieldKind.BOOLEAN: bool,
    FieldKind.DATETIME: dt.datetime,
    FieldKind.JSON: JSON,
}


def enum_filter(graphql_enum: Any, name: str) -> Any:
    """The filter input for one enum type."""
    cls = type(name, (), {})
    cls.__annotations__ = {
        "eq": graphql_enum | None,
        "ne": graphql_enum | None,
        "in_": list[graphql_enum] | None,
        "not_in": list[graphql_enum] | None,
        "is_null": bool | None,
    }
    for attr in ("eq", "ne", "not_in", "is_null"):
        setattr(cls, attr, None)
    cls.in_ = strawberry.field(name="in", default=None)  # type: ignore[attr-defined]
    return strawberry.input(cls, description=f"Filter on a {graphql_enum.__name__} field.")
