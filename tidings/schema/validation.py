"""The validation rules every path adds to GraphQL's (HTTP, WebSocket, SSE), who may introspect,
and suggestion stripping.

Strawberry's ``QueryDepthLimiter`` skips every ``__``-field and all beneath it, so an
introspection selection had no depth limit. Here introspection counts like any field,
except the ``ofType`` chain of a type reference: it ends where the schema's wrapping
ends (``[Task!]!`` is three deep), costs one null beyond, and the introspection query
every tool sends (GraphiQL, codegen) nests it 9 deep. The costly introspection nesting,
``fields { type { fields ... } }``, is capped by graphql-core's ``MaxIntrospectionDepthRule``,
one of its specified rules.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping

from graphql import (
    ASTValidationRule,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)
from strawberry.extensions import MaxAliasesLimiter

from tidings.auth.principal import Principal

__all__ = ["Introspection", "depth_limit", "strip_suggestions", "validation_rules"]

# graphql-core's did_you_mean(): " Did you mean 'a', 'b', or 'c'?" ends a message; names hold no "?".
_SUGGESTION = re.compile(r" ?Did you mean [^?]*\?")


def strip_suggestions(message: str) -> str:
    """``message`` without graphql-core's "Did you mean ...?" (they name schema members)."""
    return _SUGGESTION.sub("", message) if "Did you mean" in message else message


def depth_limit(max_depth: int) -> type[ASTValidationRule]:
    """A rule refusing operations whose fields nest deeper than ``max_depth`` (root fields: 0).

    Strawberry's ``QueryDepthLimiter`` semantics and message, with introspection counted.
    """

    def deepest(
        selections: SelectionSetNode,
        fragments: Mapping[str, FragmentDefinitionNode],
        level: int,
        introspecting: bool,
        visited: frozenset[str],
    ) -> FieldNode | None:
        """The first field found nested past ``max_depth``, if any."""
        for selection in selections.selections:
            found: FieldNode | None = None
            if isinstance(selection, FieldNode):
                name = selection.name.value
                if level > max_depth:
                    return selection
                if selection.selection_set is not None:
                    inside = introspecting or name.startswith("__")
                    below = level if inside and name == "ofType" else level + 1
                    found = deepest(selection.selection_set, fragments, below, inside, visited)
            elif isinstance(selection, InlineFragmentNode):
                found = deepest(selection.selection_set, fragments, level, introspecting, visited)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = fragments.get(name)
                if fragment is not None and name not in visited:
                    found = deepest(fragment.selection_set, fragments, level, introspecting, visited | {name})
            if found is not None:
                return found
        return None

    class DepthLimit(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            definitions = context.document.definitions
            fragments = {d.name.value: d for d in definitions if isinstance(d, FragmentDefinitionNode)}
            for operation in definitions:
                if isinstance(operation, OperationDefinitionNode):
                    node = deepest(operation.selection_set, fragments, 0, False, frozenset())
                    if node is not None:
                        name = operation.name.value if operation.name else "anonymous"
                        context.report_error(
                            GraphQLError(f"'{name}' exceeds maximum operation depth of {max_depth}", [node])
                        )

    return DepthLimit


def validation_rules(*, max_depth: int, max_aliases: int = 100) -> list[type[ASTValidationRule]]:
    """Ours, added to graphql-core's specified rules on every path (introspection: ``Introspection``)."""
    return [depth_limit(max_depth), *MaxAliasesLimiter(max_alias_count=max_aliases).validation_rules]


class Introspection(enum.Enum):
    """Who may select ``__schema`` and ``__type`` (``--introspection``); others get graphql-core's
    ``NoSchemaIntrospectionCustomRule`` error, ``GRAPHQL_VALIDATION_FAILED``. The verdict depends on
    the caller, so ``Documents`` keeps it beside each cached document instead of in its rules."""

    ON = "on"
    OFF = "off"
    AUTHENTICATED = "authenticated"  # callers with a verified token

    def allows(self, principal: Principal) -> bool:
        return self is Introspection.ON or (self is Introspection.AUTHENTICATED and principal.is_authenticated)
