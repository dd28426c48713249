"""JSON Patch (RFC 6902) between two rendered GraphQL results.

Objects are diffed key by key; lists are aligned first (by ``id`` when the
items are objects that have one, else by their JSON), so a row inserted,
removed or moved in a live window costs one ``add`` or ``remove``, and an
update in place only ``replace``s the fields that changed. The paths index
the document as it stands after the operations before them, as RFC 6902
applies them.
"""

from __future__ import annotations

from difflib import SequenceMatcher
from typing import Any

import orjson

from tidings.types import JSON, JSONObject

__all__ = ["diff"]


def diff(old: JSON, new: JSON) -> list[JSONObject]:
    """The operations that turn ``old`` into ``new`` (empty when they are equal)."""
    ops: list[JSONObject] = []
    _diff(old, new, "", ops)
    return ops


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _same(a: Any, b: Any) -> bool:
    # JSON tells true from 1 and 1.0 from 1 only by type; Python's == does not.
    return type(a) is type(b) and a == b


def _diff(old: Any, new: Any, path: str, ops: list[JSONObject]) -> None:
    if type(old) is dict and type(new) is dict:
        if old == new and _same_types(old, new):
            return
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{_escape(key)}"})
        for key, value in new.items():
            if key in old:
                _diff(old[key], value, f"{path}/{_escape(key)}", ops)
            else:
                ops.append({"op": "add", "path": f"{path}/{_escape(key)}", "value": value})
    elif type(old) is list and type(new) is list:
        _diff_list(old, new, path, ops)
    elif not _same(old, new):
        ops.append({"op": "replace", "path": path, "value": new})


def _same_types(a: Any, b: Any) -> bool:
    """Equal values whose scalars also agree in type (``==`` says True == 1)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return all(_same_types(v, b[k]) for k, v in a.items())
    if type(a) is list:
        return all(_same_types(x, y) for x, y in zip(a, b, strict=True))
    return True


def _key(item: Any) -> Any:
    if type(item) is dict:
        ident = item.get("id")
        if isinstance(ident, str):
            return ident
    return orjson.dumps(item, option=orjson.OPT_SORT_KEYS)


def _diff_list(old: list[Any], new: list[Any], path: str, ops: list[JSONObject]) -> None:
    if len(old) == len(new) and old == new and _same_types(old, new):
        return
    matcher = SequenceMatcher(None, [_key(x) for x in old], [_key(x) for x in new], autojunk=False)
    shift = 0  # how far indexes in the patched document are from those in ``old``
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for k in range(i2 - i1):
                _diff(old[i1 + k], new[j1 + k], f"{path}/{i1 + k + shift}", ops)
            continue
        paired = min(i2 - i1, j2 - j1) if tag == "replace" else 0
        for k in range(paired):
            _diff(old[i1 + k], new[j1 + k], f"{path}/{i1 + k + shift}", ops)
        for _ in range(i2 - i1 - paired):
            ops.append({"op": "remove", "path": f"{path}/{i1 + paired + shift}"})
        shift -= i2 - i1 - paired
        for k in range(paired, j2 - j1):
            ops.append({"op": "add", "path": f"{path}/{i1 + k + shift}", "value": new[j1 + k]})
        shift += j2 - j1 - paired
