"""Filter AST to a Python predicate over a record dict, compiled once to closures."""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from tidings.filters.ast import And, Compare, Filter, Not, Op, Or, Quantifier, Related

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
    if isinstance(f, Related):
        return _related(f)
    return _leaf(f)


def _related(f: Related) -> Predicate:
    """Over a record ``expand``ed for the relation: its related rows at ``"@" + relation`` (one
    record or None to one, a list to many; soft-deleted ones left out), each expanded in turn."""
    key = "@" + f.relation
    guard, item = compile_predicate(f.guard), compile_predicate(f.item)
    quantifier = f.quantifier
    if quantifier is Quantifier.ONE:

        def one(r: Mapping[str, Any]) -> bool:
            related = r.get(key)
            return related is not None and guard(related) and item(related)

        return one
    if quantifier is Quantifier.SOME:
        return lambda r: any(guard(x) and item(x) for x in r.get(key) or ())
    if quantifier is Quantifier.NONE:
        return lambda r: not any(guard(x) and item(x) for x in r.get(key) or ())
    return lambda r: all(item(x) for x in r.get(key) or () if guard(x))


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
