"""Filter AST to a SQLAlchemy boolean expression (never SQL NULL)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from tidings.filters.ast import And, Compare, FieldKind, Filter, Not, Op, Or, Quantifier, Related

DELETED_AT = "deleted_at"  # a soft-deleted row's column (tidings.store.tables)


def compile_sql(
    f: Filter, table: sa.FromClause, dialect: str, tables: Mapping[str, sa.Table] | None = None
) -> sa.ColumnElement[bool]:
    """``f`` over ``table``'s rows; ``tables`` (collection name -> table) for the relations it follows."""
    if isinstance(f, And):
        if not f.items:
            return sa.true()
        return sa.and_(*(compile_sql(i, table, dialect, tables) for i in f.items))
    if isinstance(f, Or):
        if not f.items:
            return sa.false()
        return sa.or_(*(compile_sql(i, table, dialect, tables) for i in f.items))
    if isinstance(f, Not):
        return sa.not_(compile_sql(f.item, table, dialect, tables))
    if isinstance(f, Related):
        return _related(f, table, dialect, tables)
    return _leaf(f, table.c[f.column], dialect)


def _related(
    f: Related, table: sa.FromClause, dialect: str, tables: Mapping[str, sa.Table] | None
) -> sa.ColumnElement[bool]:
    """EXISTS over the related rows (an alias each time: a relation may lead back to its own table)."""
    if tables is None:
        raise ValueError(f"The filter follows the relation {f.relation!r}: compile it with the tables")
    target = tables[f.target].alias()
    item = compile_sql(f.item, target, dialect, tables)
    conditions = [target.c[f.target_column] == table.c[f.local_column], compile_sql(f.guard, target, dialect, tables)]
    if f.soft_delete:
        conditions.append(target.c[DELETED_AT].is_(None))
    if f.quantifier is Quantifier.EVERY:
        return sa.not_(sa.exists().where(*conditions, sa.not_(item)))
    exists: sa.ColumnElement[bool] = sa.exists().where(*conditions, item)
    return sa.not_(exists) if f.quantifier is Quantifier.NONE else exists


def _leaf(c: Compare, col: Any, dialect: str) -> sa.ColumnElement[bool]:
    if c.op is Op.IS_NULL:
        null_test: sa.ColumnElement[bool] = col.is_(None) if c.value else col.is_not(None)
        return null_test
    if c.kind is FieldKind.STRING and c.op in (Op.LT, Op.LTE, Op.GT, Op.GTE) and dialect == "postgresql":
        col = col.collate("C")
    v = c.value
    if c.op is Op.EQ:
        cmp = col == v
    elif c.op is Op.NE:
        cmp = col != v
    elif c.op is Op.IN:
        cmp = col.in_(list(v)) if v else sa.false()
    elif c.op is Op.NOT_IN:
        cmp = col.not_in(list(v)) if v else sa.true()
    elif c.op is Op.LT:
        cmp = col < v
    elif c.op is Op.LTE:
        cmp = col <= v
    elif c.op is Op.GT:
        cmp = col > v
    elif c.op is Op.GTE:
        cmp = col >= v
    elif c.op is Op.CONTAINS:
        fn = sa.func.strpos if dialect == "postgresql" else sa.func.instr
        cmp = fn(col, sa.literal(v, sa.Text())) > 0
    else:  # STARTS_WITH: exact, no LIKE wildcards, case-sensitive
        cmp = sa.func.substr(col, 1, len(v)) == sa.literal(v, sa.Text())
    # Two-valued logic: a NULL column fails every comparison, and NOT of it holds.
    return sa.and_(col.is_not(None), cmp)
