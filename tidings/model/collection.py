"""Collection declarations: the ``@collection`` decorator and the model it builds.

A collection is declared once, as an annotated class (the way Strawberry users
write types) or in a TOML file (see ``schema/toml.py``); everything else, the
table, the GraphQL types and the filters, is derived from a ``Collection``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, overload

from tidings.auth.rules import Rules, check_rules
from tidings.errors import ConfigurationError
from tidings.filters import FieldKind, FieldSpec, RelationSpec
from tidings.model.defaults import check_default
from tidings.model.names import camel_case
from tidings.model.relations import NO_DEFAULT, BackReference, Reference, link, relation_from_annotation

__all__ = ["JSON", "MISSING", "SYSTEM_FIELDS", "Collection", "Field", "camel_case", "collection"]


class JSON:
    """Annotation marker for a free-form JSON field: ``tags: JSON | None = None``."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_RESERVED = {"id", "created_at", "updated_at", "version", "account", "deleted_at"}


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclasses.dataclass(frozen=True, slots=True)
class Field:
    """One declared field of a collection (system fields are not listed here)."""

    name: str
    kind: FieldKind
    nullable: bool
    default: Any = MISSING
    enum: type[enum.Enum] | None = None
    max_length: int | None = None

    @property
    def graphql_name(self) -> str:
        return camel_case(self.name)

    @property
    def required(self) -> bool:
        """Must be given on create: not nullable and no default."""
        return not self.nullable and self.default is MISSING


@dataclasses.dataclass(frozen=True, slots=True)
class Collection:
    """A declared collection: its names, fields and permission rules."""

    name: str
    fields: tuple[Field, ...]
    plural: str
    table_name: str
    rules: Rules | None = None
    description: str | None = None
    soft_delete: bool = False
    """Delete hides a record (a ``deleted_at`` column) that ``restore<Name>`` brings back."""
    channels: tuple[str, ...] = ()
    """Channel templates (``"room:{room}"``): each committed change is also published there (``task.created``...)."""
    references: tuple[Reference, ...] = ()
    """Many-to-one relations; each one's column (``<name>_id``) is among ``fields``."""
    back_references: tuple[BackReference, ...] = ()
    """One-to-many relations, through a reference of another collection."""
    # Lookups every request makes, made once (read-only: callers must not change them).
    _field_map: dict[str, Field] = dataclasses.field(init=False, repr=False, compare=False)
    _filter_fields: dict[str, FieldSpec | RelationSpec] = dataclasses.field(init=False, repr=False, compare=False)
    _columns: dict[str, str] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        specs = {name: FieldSpec(name=name, column=column, kind=kind) for name, column, kind in SYSTEM_FIELDS}
        for f in self.fields:
            specs[f.graphql_name] = FieldSpec(name=f.graphql_name, column=f.name, kind=f.kind)
        object.__setattr__(self, "_field_map", {f.name: f for f in self.fields})
        object.__setattr__(self, "_filter_fields", specs)
        object.__setattr__(self, "_columns", {f.graphql_name: f.name for f in self.fields})

    @property
    def field_map(self) -> dict[str, Field]:
        return self._field_map

    @property
    def filter_fields(self) -> dict[str, FieldSpec | RelationSpec]:
        """GraphQL name -> FieldSpec, system fields included, for ``where`` inputs; and once the
        collections are linked (``relations.link``), a RelationSpec per relation."""
        return self._filter_fields

    def link_relations(self, relations: Mapping[str, RelationSpec]) -> None:
        """Add the relations' filter entries (in place: other collections' specs share this mapping)."""
        for name in [n for n, spec in self._filter_fields.items() if isinstance(spec, RelationSpec)]:
            del self._filter_fields[name]
        self._filter_fields.update(relations)

    @property
    def reference_by_column(self) -> dict[str, Reference]:
        return {r.column: r for r in self.references}

    @property
    def columns_by_graphql_name(self) -> dict[str, str]:
        """A declared field's GraphQL name -> its column (its Python name)."""
        return self._columns

    @property
    def events_field(self) -> str:
        return camel_case(_snake_case(self.name)) + "Events"

    @property
    def single_field(self) -> str:
        return camel_case(_snake_case(self.name))


SYSTEM_FIELDS: tuple[tuple[str, str, FieldKind], ...] = (
    ("id", "id", FieldKind.ID),
    ("createdAt", "created_at", FieldKind.DATETIME),
    ("updatedAt", "updated_at", FieldKind.DATETIME),
    ("version", "version", FieldKind.INT),
)

_SCALARS: dict[Any, FieldKind] = {
    str: FieldKind.STRING,
    int: FieldKind.INT,
    float: FieldKind.FLOAT,
    bool: FieldKind.BOOLEAN,
    dt.datetime: FieldKind.DATETIME,
}


def _field_from_annotation(name: str, annotation: Any, default: Any) -> Field:
    nullable = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        nullable = len(args) != len(typing.get_args(annotation))
        if len(args) != 1:
            raise ConfigurationError(
                f"Field {name!r}: unions other than 'T | None' are not supported, got {annotation!r}"
            )
        annotation = args[0]
    if annotation is JSON:
        return Field(name, FieldKind.JSON, nullable, default)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return Field(name, FieldKind.ENUM, nullable, default, enum=annotation)
    kind = _SCALARS.get(annotation)
    if kind is None:
        raise ConfigurationError(
            f"Field {name!r}: unsupported type {annotation!r}; "
            "expected str, int, float, bool, datetime, JSON or an Enum"
        )
    return Field(name, kind, nullable, default)


def validate_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise ConfigurationError(f"{kind} name {name!r} must match {_NAME.pattern}")


def build_collection(
    name: str,
    fields: list[Field],
    *,
    plural: str | None = None,
    rules: Rules | None = None,
    description: str | None = None,
    soft_delete: bool = False,
    channels: Sequence[str] = (),
    references: Sequence[Reference] = (),
    back_references: Sequence[BackReference] = (),
) -> Collection:
    """Check a collection's declaration and build it (its relations' targets are checked by ``link``)."""
    validate_name("Collection", name)
    if not fields and not references and not back_references:
        raise ConfigurationError(f"Collection {name!r} declares no fields")
    names = [f.name for f in fields] + [r.name for r in references] + [b.name for b in back_references]
    for r in references:
        validate_name("Reference", r.name)
        names.append(r.column)
    for b in back_references:
        validate_name("Back reference", b.name)
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ConfigurationError(
            f"Collection {name!r}: {clash[0]!r} is declared twice (a field, a relation or its column)"
        )
    fields = [*fields, *(Field(r.column, FieldKind.ID, r.nullable) for r in references)]
    checked = []
    for f in fields:
        validate_name("Field", f.name)
        if f.name in _RESERVED:
            raise ConfigurationError(f"Collection {name!r}: field name {f.name!r} is reserved")
        if f.default is not MISSING:
            default = check_default(f"{name}.{f.name}", f.kind, f.default, nullable=f.nullable, enum_type=f.enum)
            f = dataclasses.replace(f, default=default)
        checked.append(f)
    plural = plural or camel_case(_snake_case(name)) + "s"
    built = Collection(
        name=name,
        fields=tuple(checked),
        plural=plural,
        table_name=_snake_case(plural),
        rules=rules,
        description=description,
        soft_delete=soft_delete,
        channels=tuple(channels),
        references=tuple(references),
        back_references=tuple(back_references),
    )
    if not references and not back_references:
        check_rules(built)  # here, so every command that loads declarations refuses the same ones (else in link)
    return built


T = TypeVar("T", bound=type)


@overload
def collection(cls: T, /) -> T: ...
@overload
def collection(
    *,
    name: str | None = None,
    plural: str | None = None,
    rules: Rules | None = None,
    soft_delete: bool = False,
    channels: Sequence[str] = (),
) -> Callable[[T], T]: ...


def collection(
    cls: T | None = None,
    /,
    *,
    name: str | None = None,
    plural: str | None = None,
    rules: Rules | None = None,
    soft_delete: bool = False,
    channels: Sequence[str] = (),
) -> T | Callable[[T], T]:
    """Declare a collection from an annotated class.

    ``@collection`` or ``@collection(name="Task", plural="tasks", rules=Rules(...), soft_delete=True)``.
    The class gains a ``__tidings_collection__`` attribute holding the ``Collection``.
    """

    def wrap(cls: T) -> T:
        references: list[Reference] = []
        back_references: list[BackReference] = []
        relation_names: set[str] = set()
        own = inspect.get_annotations(cls)
        for attr, annotation in own.items():
            relation = relation_from_annotation(attr, annotation, cls.__dict__.get(attr, NO_DEFAULT))
            if isinstance(relation, Reference):
                references.append(relation)
            elif isinstance(relation, BackReference):
                back_references.append(relation)
            else:
                continue
            relation_names.add(attr)
        # Relations name their targets by name (forward references): the other hints are evaluated
        # on a stand-in without them.
        plain_cls: type = cls
        if relation_names:
            annotations = {k: v for k, v in own.items() if k not in relation_names}
            plain_cls = type(
                cls.__name__, cls.__bases__, {"__annotations__": annotations, "__module__": cls.__module__}
            )
        hints = typing.get_type_hints(plain_cls)
        fields = [
            _field_from_annotation(attr, hint, cls.__dict__.get(attr, MISSING))
            for attr, hint in hints.items()
            if not attr.startswith("_")
        ]
        built = build_collection(
            name or cls.__name__,
            fields,
            plural=plural,
            rules=rules,
            description=cls.__doc__,
            soft_delete=soft_delete,
            channels=channels,
            references=references,
            back_references=back_references,
        )
        cls.__tidings_collection__ = built  # type: ignore[attr-defined]
        return cls

    return wrap(cls) if cls is not None else wrap


def as_collection(obj: Any) -> Collection:
    """A ``Collection`` from a declared class or a ``Collection``."""
    if isinstance(obj, Collection):
        return obj
    built = getattr(obj, "__tidings_collection__", None)
    if isinstance(built, Collection):
        return built
    raise ConfigurationError(f"{obj!r} is not a collection; decorate it with @tidings.collection")


def collections_from(objs: Mapping[str, Any] | list[Any] | tuple[Any, ...]) -> list[Collection]:
    items = list(objs.values()) if isinstance(objs, Mapping) else list(objs)
    result = [as_collection(o) for o in items]
    names = [c.name for c in result]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"Collection names must be unique, got {names}")
    link(result)
    return result
