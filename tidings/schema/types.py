"""Per collection, the generated Strawberry types: record, event, inputs.

No ``from __future__ import annotations``: annotations here are built at run
time from the declaration and must be objects, not strings.
"""

import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Any

import strawberry
from strawberry.scalars import JSON

from tidings.filters import FieldKind
from tidings.model.collection import Collection, Field
from tidings.model.relations import BackReference, Reference
from tidings.schema.inputs import FILTER_INPUTS, SCALARS, Match, Operation, SortDirection, enum_filter


@dataclasses.dataclass(slots=True)
class CollectionTypes:
    """The Strawberry types generated for one collection."""

    collection: Collection
    record: Any
    previous: Any
    event: Any
    where: Any
    order_by: Any
    create_input: Any
    update_input: Any
    enums: dict[type[enum.Enum], Any]
    field_enum: Any = None  # <Name>Field: the declared fields by SDL name, valued by column


RelationFieldMaker = Callable[[Collection, Reference | BackReference, "CollectionTypes"], Any]
"""Makes the Strawberry field of a relation, given the types of its target (tidings.resolvers.relations)."""


def _new_type(name: str, annotations: dict[str, Any], defaults: dict[str, Any]) -> type:
    cls = type(name, (), dict(defaults))
    cls.__annotations__ = annotations
    return cls


class TypeFactory:
    """Builds each collection's types once; shares enum and filter types."""

    def __init__(self) -> None:
        self._enums: dict[type[enum.Enum], Any] = {}
        self._enum_filters: dict[type[enum.Enum], Any] = {}
        self._list_filters: dict[str, Any] = {}

    def graphql_enum(self, py_enum: type[enum.Enum]) -> Any:
        if py_enum not in self._enums:
            self._enums[py_enum] = strawberry.enum(py_enum)
        return self._enums[py_enum]

    def scalar(self, field: Field) -> Any:
        if field.kind is FieldKind.ENUM:
            assert field.enum is not None
            return self.graphql_enum(field.enum)
        return SCALARS[field.kind]

    def filter_input(self, field: Field) -> Any:
        if field.kind is FieldKind.ENUM:
            assert field.enum is not None
            if field.enum not in self._enum_filters:
                self._enum_filters[field.enum] = enum_filter(
                    self.graphql_enum(field.enum), f"{field.enum.__name__}Filter"
                )
            return self._enum_filters[field.enum]
        return FILTER_INPUTS[field.kind]

    def build_all(
        self, collections: Sequence[Collection], relation_field: RelationFieldMaker | None = None
    ) -> dict[str, CollectionTypes]:
        """Every collection's types. Relations refer to each other's types (both ways): record
        and filter types are made first, given their relation fields, then declared."""
        raw = {c.name: self._raw(c) for c in collections}
        for c in collections:
            record, where = raw[c.name].record, raw[c.name].where
            relations: tuple[Reference | BackReference, ...] = (*c.references, *c.back_references)
            for relation in relations:
                target = raw[relation.target]
                if relation_field is not None:
                    setattr(record, relation.name, relation_field(c, relation, target))
                if isinstance(relation, Reference):
                    where.__annotations__[relation.name] = target.where | None
                else:
                    where.__annotations__[relation.name] = self._list_filter(target) | None
                setattr(where, relation.name, None)
        for t in raw.values():
            strawberry.input(t.where, description=f"Filter on {t.collection.plural}; all given conditions must hold.")
        for t in raw.values():
            strawberry.type(t.record, description=t.collection.description)
        return {c.name: self._finish(raw[c.name]) for c in collections}

    def build(self, c: Collection) -> CollectionTypes:
        """One collection's types (a collection without relations)."""
        return self.build_all([c])[c.name]

    def _list_filter(self, target: CollectionTypes) -> Any:
        """``{some, none, every}`` over a back reference's rows; one per target collection."""
        made = self._list_filters.get(target.collection.name)
        if made is None:
            name = f"{target.collection.name}ListWhere"
            annotations = {q: target.where | None for q in ("some", "none", "every")}
            made = strawberry.input(
                _new_type(name, annotations, dict.fromkeys(annotations)),
                description=(
                    f"Filter on related {target.collection.plural}: some (at least one matches), none "
                    "(none matches), every (all match); only those the caller may read count."
                ),
            )
            self._list_filters[target.collection.name] = made
        return made

    def _raw(self, c: Collection) -> CollectionTypes:
        system: dict[str, Any] = {
            "id": strawberry.ID,
            "created_at": SCALARS[FieldKind.DATETIME],
            "updated_at": SCALARS[FieldKind.DATETIME],
            "version": int,
        }
        record_ann = dict(system)
        for f in c.fields:
            t = self.scalar(f)
            record_ann[f.name] = t | None if f.nullable else t
        record = _new_type(c.name, record_ann, {})  # declared by build_all, with its relation fields

        where_cls = _new_type(f"{c.name}Where", {}, {})
        where_ann: dict[str, Any] = {
            "id": FILTER_INPUTS[FieldKind.ID] | None,
            "created_at": FILTER_INPUTS[FieldKind.DATETIME] | None,
            "updated_at": FILTER_INPUTS[FieldKind.DATETIME] | None,
            "version": FILTER_INPUTS[FieldKind.INT] | None,
        }
        for f in c.fields:
            where_ann[f.name] = self.filter_input(f) | None
        where_ann["AND"] = list[where_cls] | None  # type: ignore[valid-type]
        where_ann["OR"] = list[where_cls] | None  # type: ignore[valid-type]
        where_ann["NOT"] = where_cls | None
        where_cls.__annotations__ = where_ann
        for attr in where_ann:
            setattr(where_cls, attr, None)

        order_ann = {name: SortDirection | None for name in ("id", "created_at", "updated_at", "version")}
        order_ann.update({f.name: SortDirection | None for f in c.fields if f.kind is not FieldKind.JSON})
        order_by = strawberry.input(
            _new_type(f"{c.name}OrderBy", order_ann, dict.fromkeys(order_ann)),
            description="One sort key; give a list of these for several keys, in order.",
        )
        return CollectionTypes(c, record, None, None, where_cls, order_by, None, None, self._enums)

    def _finish(self, raw: CollectionTypes) -> CollectionTypes:
        c, record, where, order_by = raw.collection, raw.record, raw.where, raw.order_by
        previous_ann = {f.name: self.scalar(f) | None for f in c.fields}
        previous = strawberry.type(
            _new_type(f"{c.name}Previous", previous_ann, {}),
            description=f"Values the changed fields of a {c.name} had before the change; see changedFields.",
        )

        event_ann = {
            "operation": Operation,
            "seq": str,
            "cursor": str,
            "id": strawberry.ID,
            "record": record,
            "previous": previous,
            "changed_fields": list[str],
            "timestamp": SCALARS[FieldKind.DATETIME],
            "actor": str | None,
            "match": Match,
        }
        event = strawberry.type(
            _new_type(f"{c.name}Event", event_ann, {}),
            description=(
                f"One change to a {c.name}. seq is the event-log sequence (decimal digits); "
                "cursor is seq with the log's identity (epoch:seq), to resume with after; "
                "record is the state after the change (for DELETED, the last state)."
            ),
        )

        create_ann: dict[str, Any] = {}
        create_defaults: dict[str, Any] = {}
        for f in c.fields:
            t = self.scalar(f)
            if f.required:
                create_ann[f.name] = t
            else:
                create_ann[f.name] = t | None
                create_defaults[f.name] = strawberry.UNSET
        # dataclass order: required fields first
        ordered = dict(sorted(create_ann.items(), key=lambda kv: kv[0] in create_defaults))
        create_input = strawberry.input(_new_type(f"Create{c.name}Input", ordered, create_defaults))

        update_ann = {f.name: self.scalar(f) | None for f in c.fields}
        update_input = strawberry.input(
            _new_type(f"Update{c.name}Input", update_ann, dict.fromkeys(update_ann, strawberry.UNSET)),
            description="Fields to change; omitted fields keep their value, null clears a nullable field.",
        )
        # Declared fields only: updatedAt and version change with every update, so naming them narrows nothing.
        fields_by_name: type[enum.Enum] = enum.Enum(f"{c.name}Field", {f.graphql_name: f.name for f in c.fields})  # type: ignore[misc]
        field_enum = strawberry.enum(
            fields_by_name, description=f"A declared field of {c.name}, as changedFields names it."
        )
        return CollectionTypes(
            c, record, previous, event, where, order_by, create_input, update_input, self._enums, field_enum
        )


__all__ = ["JSON", "CollectionTypes", "TypeFactory"]
