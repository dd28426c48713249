"""Your own Strawberry types beside the generated ones: root fields taken from your classes,
your annotations' collection classes turned into the generated types, clashes refused.

You write ``-> Card`` (the ``@tidings.collection`` class) or ``-> list[Card] | None``, and
``input: CreateInput[Card]``; the schema sees the generated ``Card`` and ``CreateCardInput``.
Annotations are rewritten from the originals on every build (each build generates its own
types), so one module may serve several apps in one process (tests, ``export-schema``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import operator
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from strawberry.annotation import StrawberryAnnotation
from strawberry.schema.name_converter import NameConverter
from strawberry.types.base import StrawberryObjectDefinition, has_object_definition
from strawberry.types.field import StrawberryField

from tidings.errors import ConfigurationError
from tidings.schema.types import CollectionTypes

__all__ = ["CreateInput", "UpdateInput", "Where", "check_unique", "root_fields", "your_fields"]

_ORIGINAL = "__tidings_original__"  # on a field: its annotations as you wrote them
_NAMES = NameConverter()


@dataclasses.dataclass(frozen=True, slots=True)
class _Generated:
    """An annotation naming a generated input of a collection: ``CreateInput[Card]``."""

    collection: Any
    kind: str  # "create_input", "update_input", "where"


class _InputOf:
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __getitem__(self, collection: Any) -> Any:
        return _Generated(collection, self.kind)


CreateInput: Any = _InputOf("create_input")
"""``CreateInput[Card]``: the generated ``CreateCardInput``."""
UpdateInput: Any = _InputOf("update_input")
"""``UpdateInput[Card]``: the generated ``UpdateCardInput``."""
Where: Any = _InputOf("where")
"""``Where[Card]``: the generated ``CardWhere`` filter input."""


def root_fields(items: Iterable[Any]) -> list[StrawberryField]:
    """The fields of your ``@strawberry.type`` classes, and the fields you give one by one."""
    fields: list[StrawberryField] = []
    for item in items:
        if isinstance(item, StrawberryField):
            fields.append(item)
        elif has_object_definition(item):
            fields.extend(item.__strawberry_definition__.fields)
        else:
            raise ConfigurationError(
                f"Expected a @strawberry.type class or a strawberry field among your operations, got {item!r}"
            )
    return fields


def your_fields(fields: Sequence[StrawberryField], types_by_name: Mapping[str, CollectionTypes]) -> list[Any]:
    """``fields`` with their collection classes replaced by this build's generated types."""
    rewrite = _Rewriter(types_by_name)
    for field in fields:
        rewrite.field(field)
    return list(fields)


def check_unique(kind: str, fields: Sequence[Any], yours: Sequence[Any]) -> None:
    """One field per name in a root type; a clash fails start-up with one line saying whose.
    ``yours``: the fields of your code among ``fields`` (the others are tidings')."""
    mine = {id(f) for f in yours}
    seen: dict[str, Any] = {}
    for field in fields:
        name = _NAMES.get_graphql_name(field)
        other = seen.get(name)
        if other is not None:
            owners = " and by ".join(_owner(f, id(f) in mine) for f in (other, field))
            raise ConfigurationError(
                f"{kind} field {name!r} is defined twice: by {owners}; rename yours (strawberry.field(name=...))"
            )
        seen[name] = field


def _owner(field: Any, yours: bool) -> str:
    if not yours:
        return "tidings' generated API"
    origin = getattr(field, "origin", None)
    where = f"{getattr(origin, '__module__', '?')}.{getattr(origin, '__qualname__', '?')}"
    return f"your code ({where}.{field.python_name})"


class _Rewriter:
    def __init__(self, types_by_name: Mapping[str, CollectionTypes]) -> None:
        self.types = types_by_name
        self.seen: set[int] = set()  # object types whose fields were rewritten in this build

    def field(self, field: StrawberryField) -> None:
        original = getattr(field, _ORIGINAL, None)
        if original is None:
            annotation = field.type_annotation
            if annotation is None and field.base_resolver is not None:
                annotation = field.base_resolver.type_annotation
            original = (annotation, [(arg, arg.type_annotation) for arg in field.arguments])
            setattr(field, _ORIGINAL, original)
        annotation, arguments = original
        if annotation is not None:
            evaluated = annotation.evaluate()
            new = self.annotation(evaluated)
            field.type_annotation = annotation if new is evaluated else StrawberryAnnotation(new)
        rewritten = []
        for arg, arg_annotation in arguments:
            evaluated = arg_annotation.evaluate()
            new = self.annotation(evaluated)
            if new is evaluated:
                arg.type_annotation = arg_annotation
                rewritten.append(arg)
            else:
                replaced = copy.copy(arg)
                replaced.type_annotation = StrawberryAnnotation(new)
                rewritten.append(replaced)
        field.arguments = rewritten

    def annotation(self, annotation: Any) -> Any:
        """``annotation`` with collection classes and ``_Generated`` markers replaced (itself if none)."""
        if isinstance(annotation, _Generated):
            return getattr(self._types(annotation.collection), annotation.kind)
        if isinstance(annotation, type):
            if hasattr(annotation, "__tidings_collection__"):
                return self._types(annotation).record
            definition = getattr(annotation, "__strawberry_definition__", None)
            if isinstance(definition, StrawberryObjectDefinition) and id(annotation) not in self.seen:
                self.seen.add(id(annotation))  # your own type: its fields may name collections too
                for field in definition.fields:
                    self.field(field)
            return annotation
        args = typing.get_args(annotation)
        if not args:
            return annotation
        new_args = tuple(self.annotation(a) for a in args)
        if all(n is o for n, o in zip(new_args, args, strict=True)):
            return annotation
        origin = typing.get_origin(annotation)
        if origin is typing.Union or origin is types.UnionType:
            return functools.reduce(operator.or_, new_args)
        if origin is typing.Annotated:
            return typing.Annotated[(new_args[0], *annotation.__metadata__)]
        rebuild: Callable[[Any], Any] = getattr(annotation, "copy_with", None) or origin.__class_getitem__
        return rebuild(new_args)

    def _types(self, collection: Any) -> CollectionTypes:
        declared = getattr(collection, "__tidings_collection__", collection)
        name = getattr(declared, "name", None)
        found = self.types.get(str(name))
        if found is None:
            raise ConfigurationError(f"Your code names the collection {name!r}, which this app does not declare")
        return found
