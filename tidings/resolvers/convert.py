"""Strawberry input objects to plain dicts keyed by GraphQL name."""

from __future__ import annotations

import enum
from typing import Any

from strawberry.types.base import has_object_definition
from strawberry.types.unset import UNSET

from tidings.schema.collection import camel_case


def input_to_dict(value: Any) -> Any:
    """Recursively turn Strawberry inputs into dicts, dropping UNSET fields."""
    if isinstance(value, list):
        return [input_to_dict(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if has_object_definition(value):
        out: dict[str, Any] = {}
        for f in value.__strawberry_definition__.fields:
            v = getattr(value, f.python_name)
            if v is UNSET:
                continue
            out[f.graphql_name or camel_case(f.python_name)] = input_to_dict(v)
        return out
    return value


def input_to_columns(value: Any) -> dict[str, Any]:
    """A create/update input as column -> value, UNSET fields left out."""
    out: dict[str, Any] = {}
    for f in value.__strawberry_definition__.fields:
        v = getattr(value, f.python_name)
        if v is not UNSET:
            out[f.python_name] = v.value if isinstance(v, enum.Enum) else v
    return out
