"""The filter AST: one language for queries, subscriptions and permission rules."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias


class FieldKind(enum.Enum):
    ID = "ID"
    STRING = "String"
    INT = "Int"
    FLOAT = "Float"
    BOOLEAN = "Boolean"
    DATETIME = "DateTime"
    JSON = "JSON"
    ENUM = "Enum"


class Op(str, enum.Enum):
    EQ = "eq"
    NE = "ne"
    IN = "in"
    NOT_IN = "notIn"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    CONTAINS = "contains"
    STARTS_WITH = "startsWith"
    IS_NULL = "isNull"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    column: str
    kind: FieldKind


@dataclass(frozen=True, slots=True, eq=False)
class RelationSpec:
    """A relation as a filter field: ``where: {project: {...}}`` (to one) or ``{tasks: {some: {...}}}`` (to many).

    The related rows are those of ``target`` whose ``target_column`` equals this row's
    ``local_column`` (a reference: ``project_id`` -> ``id``; a back reference: ``id`` ->
    ``project_id``). ``fields`` are the target's own filter fields (relations included).
    """

    name: str
    many: bool
    local_column: str
    target: str
    target_column: str
    fields: Mapping[str, FieldSpec | RelationSpec]
    soft_delete: bool = False


class Quantifier(enum.Enum):
    """How a relation filter reads its related rows."""

    ONE = "one"  # to one: the related record exists (and may be read) and matches
    SOME = "some"  # to many: at least one readable related record matches
    NONE = "none"  # to many: no readable related record matches
    EVERY = "every"  # to many: every readable related record matches


@dataclass(frozen=True, slots=True)
class Related:
    """A filter on related records: ``item`` over the rows of ``target`` that ``guard`` lets the caller read."""

    relation: str  # the relation's GraphQL name; a predicate reads the related rows at "@" + relation
    quantifier: Quantifier
    local_column: str
    target: str
    target_column: str
    soft_delete: bool
    guard: Filter
    item: Filter


@dataclass(frozen=True, slots=True)
class Compare:
    column: str
    kind: FieldKind
    op: Op
    value: Any


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Filter


Filter: TypeAlias = Compare | And | Or | Not | Related
MATCH_ALL: Filter = And(())
MATCH_NONE: Filter = Or(())

_EQUALITY = frozenset({Op.EQ, Op.NE, Op.IN, Op.NOT_IN, Op.IS_NULL})
_ORDERED = _EQUALITY | {Op.LT, Op.LTE, Op.GT, Op.GTE}
OPS_BY_KIND: dict[FieldKind, frozenset[Op]] = {
    FieldKind.ID: _EQUALITY,
    FieldKind.ENUM: _EQUALITY,
    FieldKind.STRING: _ORDERED | {Op.CONTAINS, Op.STARTS_WITH},
    FieldKind.INT: _ORDERED,
    FieldKind.FLOAT: _ORDERED,
    FieldKind.DATETIME: _ORDERED,
    FieldKind.BOOLEAN: frozenset({Op.EQ, Op.NE, Op.IS_NULL}),
    FieldKind.JSON: frozenset({Op.IS_NULL}),
}
