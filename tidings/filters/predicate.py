"""Filter AST to a Python predicate over a record dict, compiled once to closures."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from tidings.filters.ast import And, Compare, Filter, Not, Op, Or

Predicate = Callable[[Mapping[str, Any]], bool]

_BINARY: dict[Op, Callable[[Any, Any], bool]] = {
    Op.EQ: operator.eq,
    Op.NE: operator.ne,
    Op.LT: operator.lt,
    Op.LTE: operator.le,
    Op.GT: operator.gt,
    Op.GTE: operator.ge,
    Op.CONTAINS: lambda v, x: x in v,
    Op.STARTS_WITH: lambda v, x: v.startswith(x),
}


def _always(_: Mapping[str, Any]) -> bool:
    return True


def compile_predicate(f: Filter) -> Predicate:
    if isinstance(f, And):
        parts = [compile_predicate(i) for i in f.items]
        if not parts:
            return _always
        if len(parts) == 1:
            return parts[0]
        return lambda r: all(p(r) for p in parts)
    if isinstance(f, Or):
        parts = [compile_predicate(i) for i in f.items]
        return lambda r: any(p(r) for p in parts)
    if isinstance(f, Not):
        inner = compile_predicate(f.item)
        return lambda r: not inner(r)
    return _leaf(f)


def _leaf(c: Compare) -> Predicate:
    column, value = c.column, c.value
    if c.op is Op.IS_NULL:
        want_null = bool(value)
        return lambda r: (r.get(column) is None) is want_null
    if c.op in (Op.IN, Op.NOT_IN):
        try:
            members: Any = frozenset((type(v), v) for v in value)
            keyed = True
        except TypeError:
            members, keyed = tuple(value), False
        inside = c.op is Op.IN

        def member(r: Mapping[str, Any]) -> bool:
            v = r.get(column)
            if v is None:
                return False
            found = ((type(v), v) in members) if keyed else (v in members)
            if keyed and not found and isinstance(v, (int, float)) and not isinstance(v, bool):
                found = any(m == v for _, m in members)
            return found is inside

        return member
    fn = _BINARY[c.op]

    def compare(r: Mapping[str, Any]) -> bool:
        v = r.get(column)
        return v is not None and bool(fn(v, value))

    return compare
