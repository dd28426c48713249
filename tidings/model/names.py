"""Names: a Python (snake_case) name as GraphQL (camelCase) spells it."""

from __future__ import annotations

__all__ = ["camel_case"]


def camel_case(name: str) -> str:
    """The SDL name of a Python name: ``assigned_to`` -> ``assignedTo``."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)
