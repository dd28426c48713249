"""Declarations by name: ``module:attr`` or a TOML file, as ``--collections`` names them."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from tidings.auth.channel_rules import Channel
from tidings.errors import ConfigurationError
from tidings.model.collection import Collection, collections_from

__all__ = ["load_channels", "load_collections"]


def load_collections(spec: str | None) -> list[Collection]:
    """``module:attr`` (a list or dict of collections) or ``file.toml``; None = the demo."""
    if spec is None:
        from tidings.model.demo import COLLECTIONS

        return collections_from(COLLECTIONS)
    if spec.endswith(".toml"):
        from tidings.model.toml import load_toml

        return load_toml(spec)
    return collections_from([item for item in _declared(spec) if not isinstance(item, Channel)])


def load_channels(spec: str | None) -> list[Channel]:
    """The channel namespaces declared beside the collections ``spec`` names (None: the demo's)."""
    if spec is None:
        from tidings.model.demo import CHANNELS

        return list(CHANNELS)
    if spec.endswith(".toml"):
        from tidings.model.toml import load_channels as load_toml_channels

        return load_toml_channels(spec)
    return [item for item in _declared(spec) if isinstance(item, Channel)]


def _declared(spec: str) -> list[Any]:
    """What ``module:attr`` holds (a list, dict or single declaration), flattened to a list."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ConfigurationError(f"--collections expects module:attr or a .toml file, got {spec!r}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        obj: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"Cannot load collections {spec!r}: {exc}") from exc
    if getattr(obj, "is_tidings_app", False) or getattr(getattr(obj, "state", None), "declaration", None) is not None:
        raise ConfigurationError(f"--collections {spec}: that is an app, not collections; serve it with --app {spec}")
    return list(obj.values()) if isinstance(obj, dict) else list(obj) if isinstance(obj, (list, tuple)) else [obj]
