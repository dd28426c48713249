"""The filter AST: one language for queries, subscriptions and permission rules."""

from __future__ import annotations

import enum
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


Filter: TypeAlias = Compare | And | Or | Not
MATCH_ALL: Filter = And(())

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
