"""From a ``where`` input (plain dicts keyed by GraphQL names) to the AST."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from tidings.errors import BadUserInput
from tidings.filters.ast import (
    MATCH_ALL,
    OPS_BY_KIND,
    And,
    Compare,
    FieldKind,
    FieldSpec,
    Filter,
    Not,
    Op,
    Or,
    Quantifier,
    Related,
    RelationSpec,
)

GuardFor = Callable[[str], Filter]
"""A collection's name -> the filter its rows must match to be read (the caller's read guard)."""

MAX_DEPTH = 16


def _value(spec: FieldSpec, op: Op, value: Any) -> Any:
    if op is Op.IS_NULL:
        if not isinstance(value, bool):
            raise BadUserInput(f"isNull on '{spec.name}' takes a Boolean, got {value!r}", field=spec.name)
        return value
    if op in (Op.IN, Op.NOT_IN):
        if not isinstance(value, (list, tuple)):
            raise BadUserInput(f"{op.value} on '{spec.name}' takes a list, got {value!r}", field=spec.name)
        return tuple(_scalar(spec, op, v) for v in value)
    return _scalar(spec, op, value)


def _scalar(spec: FieldSpec, op: Op, value: Any) -> Any:
    kind = spec.kind
    if isinstance(value, enum.Enum):
        value = value.value
    ok: bool
    if kind in (FieldKind.STRING, FieldKind.ID, FieldKind.ENUM):
        ok = isinstance(value, str)
    elif kind is FieldKind.INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is FieldKind.FLOAT:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is FieldKind.BOOLEAN:
        ok = isinstance(value, bool)
    elif kind is FieldKind.DATETIME:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = dt.datetime.fromisoformat(value)
        ok = isinstance(value, dt.datetime)
        if ok:
            value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
    else:
        ok = False
    if not ok:
        raise BadUserInput(
            f"Filter operator '{op.value}' on '{spec.name}' ({kind.value}) got an invalid value {value!r}",
            field=spec.name,
        )
    return value


def parse_filter(
    where: Mapping[str, Any] | None,
    fields: Mapping[str, FieldSpec | RelationSpec],
    _depth: int = 0,
    *,
    guard_for: GuardFor | None = None,
) -> Filter:
    """The AST of a ``where`` input; ``BadUserInput`` naming the field on bad input.

    A relation's related rows are only those ``guard_for(target)`` lets the caller read: a filter
    never tells about records the caller may not see. Rules are parsed without it (they are the
    guards themselves: trusted, and free to look at any related row).
    """
    if not where:
        return MATCH_ALL
    if _depth > MAX_DEPTH:
        raise BadUserInput(f"Filter nests deeper than {MAX_DEPTH} levels", field="where")
    items: list[Filter] = []
    for key, value in where.items():
        if value is None:
            continue
        if key in ("AND", "OR"):
            if not isinstance(value, (list, tuple)):
                raise BadUserInput(f"{key} takes a list of filters", field=key)
            parts = tuple(parse_filter(v, fields, _depth + 1, guard_for=guard_for) for v in value)
            items.append(And(parts) if key == "AND" else Or(parts))
        elif key == "NOT":
            items.append(Not(parse_filter(value, fields, _depth + 1, guard_for=guard_for)))
        else:
            spec = fields.get(key)
            if spec is None:
                raise BadUserInput(f"Unknown filter field '{key}'", field=key)
            if isinstance(spec, RelationSpec):
                items.append(_related(spec, value, _depth, guard_for))
                continue
            if not isinstance(value, Mapping):
                raise BadUserInput(f"Filter on '{key}' must be an object of operators", field=key)
            for op_name, operand in value.items():
                if operand is None:
                    continue
                try:
                    op = Op(op_name)
                except ValueError:
                    raise BadUserInput(f"Unknown filter operator '{op_name}' on '{key}'", field=key) from None
                if op not in OPS_BY_KIND[spec.kind]:
                    raise BadUserInput(
                        f"Filter operator '{op.value}' is not valid for field '{key}' of type {spec.kind.value}",
                        field=key,
                    )
                items.append(Compare(spec.column, spec.kind, op, _value(spec, op, operand)))
    if len(items) == 1:
        return items[0]
    return And(tuple(items))


def _related(spec: RelationSpec, value: Any, depth: int, guard_for: GuardFor | None) -> Filter:
    if not isinstance(value, Mapping):
        raise BadUserInput(f"Filter on '{spec.name}' must be an object", field=spec.name)
    guard = guard_for(spec.target) if guard_for is not None else MATCH_ALL

    def related(quantifier: Quantifier, inner: Any) -> Related:
        item = parse_filter(inner, spec.fields, depth + 1, guard_for=guard_for)
        return Related(
            spec.name, quantifier, spec.local_column, spec.target, spec.target_column, spec.soft_delete, guard, item
        )

    if not spec.many:
        return related(Quantifier.ONE, value)
    parts: list[Filter] = []
    for name, inner in value.items():
        if inner is None:
            continue
        try:
            quantifier = Quantifier(name)
        except ValueError:
            raise BadUserInput(
                f"Filter on '{spec.name}' takes some, none or every, got '{name}'", field=spec.name
            ) from None
        if quantifier is Quantifier.ONE:
            raise BadUserInput(f"Filter on '{spec.name}' takes some, none or every, got '{name}'", field=spec.name)
        if not isinstance(inner, Mapping):
            raise BadUserInput(f"'{spec.name}.{name}' must be an object of filters", field=spec.name)
        parts.append(related(quantifier, inner))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def related_nodes(f: Filter) -> Iterator[Related]:
    """The relation nodes of ``f``, outermost only (not those nested in them)."""
    stack = [f]
    while stack:
        node = stack.pop()
        if isinstance(node, Related):
            yield node
        elif isinstance(node, Not):
            stack.append(node.item)
        elif isinstance(node, And | Or):
            stack.extend(reversed(node.items))


def relations_in(f: Filter) -> bool:
    """Whether ``f`` follows a relation anywhere (its predicate then needs ``expand``ed records)."""
    return next(related_nodes(f), None) is not None


def related_targets(f: Filter) -> set[str]:
    """Every collection ``f`` reads through relations, at any depth (guards included)."""
    found: set[str] = set()
    stack = list(related_nodes(f))
    while stack:
        node = stack.pop()
        found.add(node.target)
        stack.extend(related_nodes(node.guard))
        stack.extend(related_nodes(node.item))
    return found


def equality_terms(f: Filter) -> dict[str, Any]:
    """Top-level ``eq`` conjuncts, column -> value: the keys subscriptions are indexed by."""
    out: dict[str, Any] = {}
    stack = [f]
    while stack:
        node = stack.pop()
        if isinstance(node, And):
            stack.extend(node.items)
        elif isinstance(node, Compare) and node.op is Op.EQ:
            out.setdefault(node.column, node.value)
    return out
