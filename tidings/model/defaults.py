"""A declared field's default, checked against the field's type when its collection is declared.

A default is written into every record created without the field and read back through
the field's GraphQL type, so one the type cannot carry (``"x"`` for an Int) would make
every read of such a record fail. Python and TOML declarations share this one check.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from typing import Any

from tidings.errors import ConfigurationError
from tidings.filters import FieldKind

__all__ = ["INT_RANGE", "check_default"]

INT_RANGE = (-(2**31), 2**31 - 1)
"""GraphQL's Int is a signed 32-bit integer: a larger default could be stored but never read."""

_REFUSED: Any = object()

_EXPECTED = {
    FieldKind.STRING: "a String (text)",
    FieldKind.INT: f"an Int (an integer from {INT_RANGE[0]} to {INT_RANGE[1]})",
    FieldKind.FLOAT: "a Float (a finite number)",
    FieldKind.BOOLEAN: "a Boolean (true or false)",
    FieldKind.DATETIME: "a DateTime (a date and time)",
    FieldKind.JSON: "a JSON value (null, true, false, a number, text, a list or a table of them)",
}


def check_default(where: str, kind: FieldKind, default: Any, *, nullable: bool, enum_type: Any = None) -> Any:
    """``default`` as stored (an enum member, an aware datetime, a float), or ``ConfigurationError``.

    ``where`` names the field (``Task.priority``) in the one line that refuses it.
    """
    if default is None:
        if nullable:
            return None
        raise ConfigurationError(
            f"{where}: default: expected {_expected(kind, enum_type)}, got None (the field is not nullable)"
        )
    if kind is FieldKind.ENUM:
        return _enum_default(where, enum_type, default)
    value = _coerce(kind, default)
    if value is _REFUSED:
        raise ConfigurationError(
            f"{where}: default: expected {_expected(kind, enum_type)}, got {default!r} ({type(default).__name__})"
        )
    return value


def _coerce(kind: FieldKind, value: Any) -> Any:
    """The stored form of ``value`` if ``kind`` admits it, else ``_REFUSED``."""
    if kind is FieldKind.STRING:
        return value if isinstance(value, str) else _REFUSED
    if kind is FieldKind.INT:
        ok = isinstance(value, int) and not isinstance(value, bool) and INT_RANGE[0] <= value <= INT_RANGE[1]
        return value if ok else _REFUSED
    if kind is FieldKind.FLOAT:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if ok else _REFUSED
    if kind is FieldKind.BOOLEAN:
        return value if isinstance(value, bool) else _REFUSED
    if kind is FieldKind.DATETIME:
        if not isinstance(value, dt.datetime):  # a TOML date or time alone is not one
            return _REFUSED
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value  # naive: UTC, as stored
    return value if _is_json(value) else _REFUSED


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(_is_json(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and _is_json(item) for key, item in value.items())
    return False


def _enum_default(where: str, enum_type: type[enum.Enum], default: Any) -> enum.Enum:
    if isinstance(default, enum_type):
        return default
    try:
        return enum_type(default)
    except ValueError:
        raise ConfigurationError(
            f"{where}: default: expected {_expected(FieldKind.ENUM, enum_type)}, got {default!r}"
        ) from None


def _expected(kind: FieldKind, enum_type: type[enum.Enum] | None) -> str:
    if kind is FieldKind.ENUM and enum_type is not None:
        return f"one of {enum_type.__name__}'s values {', '.join(repr(m.value) for m in enum_type)}"
    return _EXPECTED[kind]
