"""Relations between collections: references (many-to-one), back references (one-to-many), and
many-to-many through a collection of its own (two references and their back references).

A reference ``Task.project`` -> ``Project`` is stored in a column ``project_id`` (a declared
``ID`` field, with a real foreign key and an index) and has an ``on_delete`` policy. A back
reference ``Project.tasks`` names the reference it follows (``via="project"``): it adds no
column. Declarations name their targets by collection name; ``link`` checks them across the
whole set once every collection is declared, and gives each collection the relation entries
of its filter fields (``where: {project: {...}}``, ``where: {tasks: {some: {...}}}``).

Python::

    @collection
    class Task:
        title: str
        project: Ref["Project"] | None = ref(on_delete="cascade")

    @collection
    class Project:
        name: str
        tasks: Many["Task"] = many(via="project")

TOML::

    [collections.Task.fields]
    project = { ref = "Project", on_delete = "cascade" }   # ref = "Project!" : required
    [collections.Project.fields]
    tasks = { many = "Task", via = "project" }
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from tidings.auth.rules import check_rules
from tidings.errors import ConfigurationError
from tidings.filters import RelationSpec
from tidings.model.names import camel_case

__all__ = ["BackReference", "Many", "OnDelete", "Ref", "Reference", "link", "many", "ref"]

T = TypeVar("T")


class OnDelete(str, enum.Enum):
    """What deleting a referenced record does to the records that reference it."""

    RESTRICT = "restrict"  # refused with CONFLICT while any record references it (the default)
    CASCADE = "cascade"  # they are deleted too, each with its own DELETED event
    SET_NULL = "set_null"  # their reference is cleared, each with its own UPDATED event


@dataclasses.dataclass(frozen=True, slots=True)
class Reference:
    """``name`` -> one ``target`` record, stored in the column ``<name>_id``."""

    name: str
    target: str
    nullable: bool = True
    on_delete: OnDelete = OnDelete.RESTRICT

    @property
    def column(self) -> str:
        return f"{self.name}_id"


@dataclasses.dataclass(frozen=True, slots=True)
class BackReference:
    """``name`` -> the ``target`` records whose reference ``via`` points here."""

    name: str
    target: str
    via: str


class Ref(Generic[T]):
    """Annotation of a reference: ``project: Ref["Project"] | None = ref(on_delete="cascade")``."""


class Many(Generic[T]):
    """Annotation of a back reference: ``tasks: Many["Task"] = many(via="project")``."""


@dataclasses.dataclass(frozen=True, slots=True)
class _RefMarker:
    on_delete: OnDelete


@dataclasses.dataclass(frozen=True, slots=True)
class _ManyMarker:
    via: str


def ref(*, on_delete: str | OnDelete = OnDelete.RESTRICT) -> Any:
    """The default of a ``Ref[...]`` field: its ``on_delete`` policy (restrict, cascade, set_null)."""
    return _RefMarker(on_delete_policy(on_delete, "ref()"))


def many(*, via: str) -> Any:
    """The default of a ``Many[...]`` field: the reference of the target collection it follows."""
    return _ManyMarker(via)


def on_delete_policy(value: Any, where: str) -> OnDelete:
    try:
        return OnDelete(value)
    except ValueError:
        choices = ", ".join(p.value for p in OnDelete)
        raise ConfigurationError(f"{where}: on_delete must be one of {choices}, got {value!r}") from None


NO_DEFAULT: Any = object()
"""What ``relation_from_annotation`` is given for an attribute without a default."""

_ANNOTATION = re.compile(r"^\s*(?:[\w.]*\.)?(Ref|Many)\[\s*['\"]?([A-Za-z_][\w.]*?)['\"]?\s*\]\s*(\|\s*None)?\s*$")


def relation_from_annotation(name: str, annotation: Any, default: Any) -> Reference | BackReference | None:
    """The relation a class attribute declares (``Ref[...]``/``Many[...]`` with ``ref()``/``many()``), or None."""
    text = annotation if isinstance(annotation, str) else _annotation_text(annotation)
    found = _ANNOTATION.match(text) if text is not None else None
    if found is None:
        if isinstance(default, (_RefMarker, _ManyMarker)):
            raise ConfigurationError(f"Field {name!r}: ref() and many() go with Ref[...] and Many[...] annotations")
        return None
    kind, target, optional = found.group(1), found.group(2).rsplit(".", 1)[-1], found.group(3)
    if kind == "Ref":
        marker = default if isinstance(default, _RefMarker) else _RefMarker(OnDelete.RESTRICT)
        if not isinstance(default, _RefMarker) and default is not NO_DEFAULT:
            raise ConfigurationError(f"Field {name!r}: a reference's default is ref(on_delete=...)")
        return Reference(name, target, nullable=optional is not None, on_delete=marker.on_delete)
    if optional:
        raise ConfigurationError(f"Field {name!r}: Many[...] is a list, never None")
    if not isinstance(default, _ManyMarker):
        raise ConfigurationError(f"Field {name!r}: a back reference needs many(via=<its reference on {target}>)")
    return BackReference(name, target, default.via)


def _annotation_text(annotation: Any) -> str | None:
    """``Ref[Project] | None`` written without quotes: its text, with the target's name."""
    if isinstance(annotation, type):
        return None
    text = repr(annotation)
    # typing renders Ref[Project] as 'tidings.model.relations.Ref[mod.Project]' and a
    # forward reference as "Ref[ForwardRef('Project')]".
    text = re.sub(r"ForwardRef\('([^']+)'(?:, module='[^']*')?\)", r"\1", text)
    text = re.sub(r"typing\.Optional\[(.*)\]$", r"\1 | None", text)
    text = re.sub(r"typing\.Union\[(.*), NoneType\]$", r"\1 | None", text)
    return text


def link(collections: Sequence[Any]) -> None:
    """Check every relation's target across ``collections`` and give each collection the
    relation entries of its filter fields. Idempotent; raises ``ConfigurationError`` naming
    the first wrong declaration."""
    by_name = {c.name: c for c in collections}
    for c in collections:
        relations: dict[str, RelationSpec] = {}
        for r in c.references:
            target = by_name.get(r.target)
            if target is None:
                raise ConfigurationError(
                    f"{c.name}.{r.name}: references unknown collection {r.target!r}; known: {', '.join(by_name)}"
                )
            if r.on_delete is OnDelete.SET_NULL and not r.nullable:
                raise ConfigurationError(f"{c.name}.{r.name}: on_delete set_null needs a reference that may be null")
            relations[camel_case(r.name)] = RelationSpec(
                name=camel_case(r.name),
                many=False,
                local_column=r.column,
                target=target.name,
                target_column="id",
                fields=target.filter_fields,
                soft_delete=target.soft_delete,
            )
        for b in c.back_references:
            target = by_name.get(b.target)
            if target is None:
                raise ConfigurationError(
                    f"{c.name}.{b.name}: back reference to unknown collection {b.target!r}; known: {', '.join(by_name)}"
                )
            via = next((r for r in target.references if r.name == b.via), None)
            if via is None or via.target != c.name:
                found = [r.name for r in target.references if r.target == c.name]
                raise ConfigurationError(
                    f"{c.name}.{b.name}: via={b.via!r} is not a reference of {target.name} to {c.name}"
                    + (f"; it has {', '.join(found)}" if found else "; it has none")
                )
            relations[camel_case(b.name)] = RelationSpec(
                name=camel_case(b.name),
                many=True,
                local_column="id",
                target=target.name,
                target_column=via.column,
                fields=target.filter_fields,
                soft_delete=target.soft_delete,
            )
        c.link_relations(relations)
    for c in collections:  # rules may follow relations: checked once all are linked
        check_rules(c)
