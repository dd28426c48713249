"""graphql-core's executor, with the plain leaves of an object completed in one loop.

A record's fields are attributes of a dict with a scalar or enum type. graphql-core
executes each one as a field: a path, a resolve info, a resolver call, a value
completion, about 10 us apiece, so a 50-row list of five fields costs 2.5 ms in
bookkeeping. When every field of an object's selection is such a leaf (no arguments,
the direct attribute resolver of ``build._attribute``), ``execute_fields`` reads and
coerces them itself, with graphql-core's own semantics: ``coerce_output_value``, the
same error messages, located errors, null propagation through ``handle_field_error``.
Any other selection goes through graphql-core unchanged.

A relation field (``Task.project``, ``Project.tasks``) whose related records the list resolver
already read (tidings.resolvers.prefetch: on the record at ``"$" + response key``) is completed
here too, from that value, into its sub-selection: no resolve info, resolver call or coroutine
per row. A record without the value (nothing prefetched) goes through graphql-core's field.
"""

from __future__ import annotations

from typing import Any

from graphql import GraphQLList, GraphQLNonNull, GraphQLObjectType, is_leaf_type
from graphql.execution.collect_fields import GroupedFieldSet
from graphql.pyutils import Path, Undefined, inspect
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

# (response key, attribute name ("" for __typename), field type, leaf type, non-null, field details list);
# for a prefetched relation the name is "$" + response key and the "leaf type" its object type.
_Leaf = tuple[str, str, Any, Any, bool, Any]
PREFETCHED = "prefetched"  # a resolver's attribute: it answers from "$" + response key when the record has it


def _relation(key: str, field_type: Any, details: Any) -> _Leaf | None:
    """The plan of a prefetched relation field: to one (an object) or to many (a list of objects)."""
    non_null = isinstance(field_type, GraphQLNonNull)
    inner = field_type.of_type if non_null else field_type
    if isinstance(inner, GraphQLList):
        item = inner.of_type.of_type if isinstance(inner.of_type, GraphQLNonNull) else inner.of_type
        if isinstance(item, GraphQLObjectType):
            return (key, "$" + key, field_type, item, non_null, details)
        return None
    if isinstance(inner, GraphQLObjectType):
        return (key, "$" + key, field_type, inner, non_null, details)
    return None


def _leaves(parent_type: GraphQLObjectType, grouped_field_set: GroupedFieldSet) -> list[_Leaf] | None:
    """The plan of a selection made only of plain attribute leaves, else None."""
    leaves: list[_Leaf] = []
    for key, details in grouped_field_set.items():
        node = details[0].node
        if node.name.value == "__typename":
            leaves.append((key, "", None, None, False, details))
            continue
        field = parent_type.fields.get(node.name.value)
        if field is None:
            return None
        if getattr(field.resolve, PREFETCHED, False):
            relation = _relation(key, field.type, details)
            if relation is None:
                return None
            leaves.append(relation)
            continue
        if node.arguments:
            return None
        name = getattr(field.resolve, "attribute", None)
        field_type = field.type
        non_null = isinstance(field_type, GraphQLNonNull)
        leaf = field_type.of_type if non_null else field_type
        if name is None or not is_leaf_type(leaf):
            return None
        leaves.append((key, name, field_type, leaf, non_null, details))
    return leaves


class Executor(StrawberryGraphQLCoreExecutionContext):
    """Strawberry's execution context; objects of plain leaves completed in one loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Per grouped field set (graphql-core memoizes those per execution: a list's
        # rows share one), its plan; the set is kept so its id stays its own.
        self._plans: dict[int, tuple[GroupedFieldSet, list[_Leaf] | None]] = {}

    def execute_fields(
        self,
        parent_type: GraphQLObjectType,
        source_value: Any,
        path: Path | None,
        grouped_field_set: GroupedFieldSet,
        position_context: Any,
    ) -> Any:
        if path is None:  # root fields: resolvers, graphql-core's business
            return super().execute_fields(parent_type, source_value, path, grouped_field_set, position_context)
        cached = self._plans.get(id(grouped_field_set))
        if cached is None:
            cached = (grouped_field_set, _leaves(parent_type, grouped_field_set))
            self._plans[id(grouped_field_set)] = cached
        leaves = cached[1]
        if leaves is None:
            return super().execute_fields(parent_type, source_value, path, grouped_field_set, position_context)
        results: dict[str, Any] = {}
        is_dict = type(source_value) is dict
        pending: list[tuple[str, Any]] = []
        for key, name, field_type, leaf, non_null, details in leaves:
            if not name:  # __typename
                results[key] = parent_type.name
                continue
            if name[0] == "$":  # a relation
                if not is_dict or name not in source_value:
                    # Nothing prefetched for this record: graphql-core's own field execution.
                    value = self.execute_field(
                        parent_type, source_value, details, Path(path, key, parent_type.name), position_context
                    )
                    if self.is_awaitable(value):
                        pending.append((key, value))
                    results[key] = value
                    continue
                field_path = Path(path, key, parent_type.name)
                try:
                    results[key] = self._related(
                        leaf, details, field_path, source_value[name], non_null, field_type, position_context
                    )
                except Exception as raw_error:
                    self.handle_field_error(raw_error, field_type, details, field_path)
                    results[key] = None
                continue
            try:
                value = source_value.get(name) if is_dict else getattr(source_value, name)
                if isinstance(value, Exception):
                    raise value
                if value is None or value is Undefined:
                    if non_null:
                        field_name = details[0].node.name.value
                        raise TypeError(f"Cannot return null for non-nullable field {parent_type.name}.{field_name}.")
                    results[key] = None
                    continue
                coerced = leaf.coerce_output_value(value)
                if coerced is Undefined or coerced is None:
                    raise TypeError(
                        f"Expected `{inspect(leaf)}.coerce_output_value({inspect(value)})`"
                        f" to return non-nullable value, returned: {inspect(coerced)}"
                    )
                results[key] = coerced
            except Exception as raw_error:
                # Raises for a non-null field (the parent becomes null), else records the error.
                self.handle_field_error(raw_error, field_type, details, Path(path, key, parent_type.name))
                results[key] = None
        if pending:
            return self._gather(results, pending)
        return results

    async def _gather(self, results: dict[str, Any], pending: list[tuple[str, Any]]) -> dict[str, Any]:
        for key, value in pending:
            results[key] = await value
        return results

    def _related(
        self,
        object_type: GraphQLObjectType,
        details: Any,
        path: Path,
        value: Any,
        non_null: bool,
        field_type: Any,
        position_context: Any,
    ) -> Any:
        """A prefetched relation's value completed into its sub-selection (a list: item by item)."""
        if value is None:
            if non_null:
                raise TypeError(f"Cannot return null for non-nullable field {path.typename}.{path.key}.")
            return None
        grouped_field_set = self.collect_subfields(object_type, details)[0]  # memoized per field
        if isinstance(value, list):
            out = []
            for index, item in enumerate(value):
                done = self.execute_fields(
                    object_type, item, Path(path, index, None), grouped_field_set, position_context
                )
                if self.is_awaitable(done):
                    raise TypeError("a prefetched relation completed asynchronously")  # a plan covers its nesting
                out.append(done)
            return out
        done = self.execute_fields(object_type, value, path, grouped_field_set, position_context)
        if self.is_awaitable(done):
            raise TypeError("a prefetched relation completed asynchronously")
        return done
