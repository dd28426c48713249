"""``tidings.App``: what an app is made of (collections, channels, hooks, your Strawberry code),
declared once and built by whoever serves it: ``tidings serve --app module:attr`` (each worker
process builds its own, with the command line's settings), ``tidings.create_app(app=...)``.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from tidings.errors import ConfigurationError
from tidings.hooks import Hooks

__all__ = ["App", "load_app"]


@dataclasses.dataclass(frozen=True)
class App:
    """An app's parts; building it (settings, database, broker) is the server's business.

    - ``collections``: ``@tidings.collection`` classes (or ``Collection``s) and ``tidings.Channel``s.
    - ``hooks``: a ``tidings.Hooks``.
    - ``queries``, ``mutations``, ``subscriptions``: ``@strawberry.type`` classes (or strawberry
      fields) whose fields join ``Query``, ``Mutation`` and ``Subscription`` beside the generated
      ones. Annotate with a collection class (``-> Card``) or ``tidings.CreateInput[Card]`` for the
      generated types; ``info: tidings.Info`` gives the context; ``tidings.transaction(info)`` writes.
    - ``types``: more Strawberry types to include (ones only an interface or union reaches).
    """

    collections: Sequence[Any] = ()
    hooks: Hooks | None = None
    queries: Sequence[Any] = ()
    mutations: Sequence[Any] = ()
    subscriptions: Sequence[Any] = ()
    types: Sequence[Any] = ()

    is_tidings_app: ClassVar[bool] = True  # how ``--collections`` tells an app from collections


def load_app(spec: str) -> App:
    """The ``App`` that ``module:attr`` names: a ``tidings.App``, or an ASGI app ``create_app`` built
    (its declaration is taken, and built again with the settings of the command line)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"--app expects module:attr, got {spec!r}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        obj: Any = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"--app {spec}: cannot load it: {exc}") from exc
    if isinstance(obj, App):
        return obj
    declared = getattr(getattr(obj, "state", None), "declaration", None)
    if isinstance(declared, App):
        return declared
    raise ConfigurationError(
        f"--app {spec}: expected a tidings.App or an app built with tidings.create_app, got {type(obj).__name__}"
    )
