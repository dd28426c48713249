"""graphql-core's coerced arguments (input objects as dicts keyed by GraphQL name) to what the store takes."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from tidings.errors import BadUserInput
from tidings.filters import RelationSpec
from tidings.model.collection import Collection


def input_columns(coll: Collection, value: Mapping[str, Any]) -> dict[str, Any]:
    """A create/update input as column -> value (the fields it gives; enum members by value)."""
    columns = coll.columns_by_graphql_name
    return {columns[k]: v.value if isinstance(v, enum.Enum) else v for k, v in value.items()}


def order_keys(order_by: list[Mapping[str, Any]] | None, coll: Collection) -> list[tuple[str, bool]]:
    """``orderBy`` as (column, descending)."""
    keys: list[tuple[str, bool]] = []
    for item in order_by or []:
        given = [(name, d) for name, d in item.items() if d is not None]
        if len(given) != 1:
            raise BadUserInput(
                f"Each {coll.name}OrderBy must name exactly one field, got {len(given)}", field="orderBy"
            )
        name, direction = given[0]
        spec = coll.filter_fields[name]
        if isinstance(spec, RelationSpec):  # never in an OrderBy input: a relation is not a sort key
            raise BadUserInput(f"{coll.name}OrderBy: cannot sort by the relation {name!r}", field="orderBy")
        keys.append((spec.column, str(getattr(direction, "value", direction)) == "DESC"))
    return keys


def check_page(limit: int | None, offset: int | None, max_limit: int) -> None:
    """``limit`` and ``offset`` as a list takes them (BAD_USER_INPUT naming the argument)."""
    if limit is not None and not 0 <= limit <= max_limit:
        raise BadUserInput(f"limit must be between 0 and {max_limit}, got {limit}", field="limit")
    if offset is not None and offset < 0:
        raise BadUserInput(f"offset must be >= 0, got {offset}", field="offset")
