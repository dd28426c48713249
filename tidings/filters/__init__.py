"""The one filter language: AST, parser, SQL compiler and Python predicate."""

from tidings.filters.ast import MATCH_ALL, OPS_BY_KIND, And, Compare, FieldKind, FieldSpec, Filter, Not, Op, Or
from tidings.filters.parse import equality_terms, parse_filter
from tidings.filters.predicate import Predicate, compile_predicate
from tidings.filters.sql import compile_sql

__all__ = [
    "MATCH_ALL",
    "OPS_BY_KIND",
    "And",
    "Compare",
    "FieldKind",
    "FieldSpec",
    "Filter",
    "Not",
    "Op",
    "Or",
    "Predicate",
    "compile_predicate",
    "compile_sql",
    "equality_terms",
    "parse_filter",
]
