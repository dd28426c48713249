"""From a ``where`` input (plain dicts keyed by GraphQL names) to the AST."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
from collections.abc import Mapping
from typing import Any

from tidings.errors import BadUserInput
from tidings.filters.ast import MATCH_ALL, OPS_BY_KIND, And, Compare, FieldKind, FieldSpec, Filter, Not, Op, Or

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


def parse_filter(where: Mapping[str, Any] | None, fields: Mapping[str, FieldSpec], _depth: int = 0) -> Filter:
    """The AST of a ``where`` input; ``BadUserInput`` naming the field on bad input."""
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
            parts = tuple(parse_filter(v, fields, _depth + 1) for v in value)
            items.append(And(parts) if key == "AND" else Or(parts))
        elif key == "NOT":
            items.append(Not(parse_filter(value, fields, _depth + 1)))
        else:
            spec = fields.get(key)
            if spec is None:
                raise BadUserInput(f"Unknown filter field '{key}'", field=key)
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
