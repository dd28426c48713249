"""Collections declared in a TOML file, for no-code use.

[collections.Task]
plural = "tasks"                      # optional
soft_delete = true                    # optional: deleteTask hides, restoreTask brings back
[collections.Task.fields]
title = "String!"                     # '!' = required
status = { type = "String!", default = "pending" }
priority = { type = "Int", default = 0 }
level = { type = "Enum", values = ["LOW", "HIGH"], default = "LOW" }
project = { ref = "Project", on_delete = "cascade" }   # a reference (column project_id); "Project!": required
[collections.Project.fields]
name = "String!"
tasks = { many = "Task", via = "project" }            # a back reference through Task.project
[collections.Task.rules]              # optional; see tidings.auth.rules
read = "authenticated"
update = "owner:assignedTo"
[channels."room:*"]                   # optional channel namespaces; see tidings.auth.channel_rules
publish = "role:member"
history = 100
"""

from __future__ import annotations

import difflib
import enum
import tomllib
from pathlib import Path
from typing import Any

from tidings.auth.channel_rules import Channel
from tidings.auth.rules import Rules
from tidings.errors import ConfigurationError
from tidings.filters import FieldKind
from tidings.model.collection import MISSING, Collection, Field, build_collection
from tidings.model.relations import BackReference, OnDelete, Reference, link, on_delete_policy

_KINDS = {
    "String": FieldKind.STRING,
    "Int": FieldKind.INT,
    "Float": FieldKind.FLOAT,
    "Boolean": FieldKind.BOOLEAN,
    "DateTime": FieldKind.DATETIME,
    "JSON": FieldKind.JSON,
    "Enum": FieldKind.ENUM,
}


_COLLECTION_KEYS = ("fields", "plural", "description", "rules", "soft_delete")
_FIELD_KEYS = ("type", "default", "values")
_REF_KEYS = ("ref", "on_delete")
_MANY_KEYS = ("many", "via")


def _check_keys(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    """A misspelt key (``defualt``) would otherwise be ignored without a word."""
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigurationError(f"{where}: unknown key {key!r}; {hint}expected {', '.join(allowed)}")


def _relation(collection: str, name: str, spec: dict[str, Any]) -> Reference | BackReference:
    where = f"field {collection}.{name}"
    if "ref" in spec:
        _check_keys(spec, _REF_KEYS, where)
        target = spec["ref"]
        if not isinstance(target, str) or not target.rstrip("!"):
            raise ConfigurationError(f"{where}: ref names a collection, got {target!r}")
        policy = on_delete_policy(spec.get("on_delete", OnDelete.RESTRICT.value), where)
        return Reference(name, target.rstrip("!"), nullable=not target.endswith("!"), on_delete=policy)
    _check_keys(spec, _MANY_KEYS, where)
    target, via = spec["many"], spec.get("via")
    if not isinstance(target, str) or not isinstance(via, str):
        raise ConfigurationError(
            f'{where}: expected {{ many = "<Collection>", via = "<its reference>" }}, got {spec!r}'
        )
    return BackReference(name, target, via)


def _field(collection: str, name: str, spec: Any) -> Field:
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise ConfigurationError(f"{collection}.{name}: expected a type string or a table with 'type', got {spec!r}")
    _check_keys(spec, _FIELD_KEYS, f"field {collection}.{name}")
    type_name: str = spec["type"]
    required = type_name.endswith("!")
    kind = _KINDS.get(type_name.rstrip("!"))
    if kind is None:
        raise ConfigurationError(f"{collection}.{name}: unknown type {type_name!r}; expected one of {sorted(_KINDS)}")
    default = spec.get("default", MISSING)
    enum_type: type[enum.Enum] | None = None
    if kind is FieldKind.ENUM:
        values = spec.get("values")
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise ConfigurationError(f"{collection}.{name}: an Enum needs 'values', a non-empty list of strings")
        made: type[enum.Enum] = enum.Enum(f"{collection}{name[:1].upper()}{name[1:]}", {v: v for v in values})  # type: ignore[misc]
        enum_type = made
    return Field(name=name, kind=kind, nullable=not required, default=default, enum=enum_type)


def load_toml(path: str | Path) -> list[Collection]:
    """Read collections from a TOML file."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"Cannot read collections from {str(path)!r}: {exc}") from exc
    try:
        return _collections(data)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: {exc.message}") from exc


def _collections(data: dict[str, Any]) -> list[Collection]:
    _check_keys(data, ("collections", "channels"), "top level")
    table = data.get("collections")
    if not isinstance(table, dict) or not table:
        raise ConfigurationError("no [collections.<Name>] tables")
    result = []
    for name, spec in table.items():
        if isinstance(spec, dict):
            _check_keys(spec, _COLLECTION_KEYS, f"collection {name}")
        fields = spec.get("fields") if isinstance(spec, dict) else None
        if not isinstance(fields, dict):
            raise ConfigurationError(f"collection {name}: no [collections.{name}.fields] table")
        soft_delete = spec.get("soft_delete", False)
        if not isinstance(soft_delete, bool):
            raise ConfigurationError(f"collection {name}: soft_delete must be true or false, got {soft_delete!r}")
        rules = spec.get("rules")
        if rules is not None and not isinstance(rules, dict):
            raise ConfigurationError(
                f"collection {name}: rules: expected a [collections.{name}.rules] table, got {rules!r}"
            )
        plain = {k: v for k, v in fields.items() if not (isinstance(v, dict) and ("ref" in v or "many" in v))}
        relations = [_relation(name, k, v) for k, v in fields.items() if k not in plain]
        result.append(
            build_collection(
                name,
                [_field(name, fname, fspec) for fname, fspec in plain.items()],
                references=[r for r in relations if isinstance(r, Reference)],
                back_references=[r for r in relations if isinstance(r, BackReference)],
                plural=spec.get("plural"),
                description=spec.get("description"),
                rules=None if rules is None else _rules(name, rules),
                soft_delete=soft_delete,
            )
        )
    link(result)
    return result


def _rules(collection: str, table: dict[str, Any]) -> Rules:
    try:
        return Rules.from_mapping(table)
    except ConfigurationError as exc:
        raise ConfigurationError(f"collection {collection}: {exc.message}") from None


def load_channels(path: str | Path) -> list[Channel]:
    """Read the channel namespaces (``[channels."room:*"]`` tables) of a TOML file."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"Cannot read channels from {str(path)!r}: {exc}") from exc
    table = data.get("channels", {})
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ConfigurationError(f'{path}: channels must be tables, [channels."<pattern>"]')
    try:
        return [Channel.from_mapping(pattern, spec) for pattern, spec in table.items()]
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: {exc.message}") from exc
