"""The one filter language: AST, parser, SQL compiler and Python predicate."""

from tidings.filters.ast import (
    MATCH_ALL,
    MATCH_NONE,
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
from tidings.filters.parse import GuardFor, equality_terms, parse_filter, related_nodes, related_targets, relations_in
from tidings.filters.predicate import Predicate, compile_predicate
from tidings.filters.sql import compile_sql

__all__ = [
    "MATCH_ALL",
    "MATCH_NONE",
    "OPS_BY_KIND",
    "And",
    "Compare",
    "FieldKind",
    "FieldSpec",
    "Filter",
    "GuardFor",
    "Not",
    "Op",
    "Or",
    "Predicate",
    "Quantifier",
    "Related",
    "RelationSpec",
    "compile_predicate",
    "compile_sql",
    "equality_terms",
    "parse_filter",
    "related_nodes",
    "related_targets",
    "relations_in",
]
