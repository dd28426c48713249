"""What ``tidings serve`` (and each ``--workers`` process) serves: the app ``--app`` declares, or
the collections ``--collections`` names, built with the command line's settings."""

from __future__ import annotations

from starlette.applications import Starlette

from tidings.app import create_app
from tidings.auth.channel_rules import channels_from
from tidings.config import Settings
from tidings.declaration import App, load_app
from tidings.errors import ConfigurationError
from tidings.model.collection import Collection, collections_from
from tidings.model.loading import load_channels, load_collections

__all__ = ["build_app", "declared"]


def declared(settings: Settings) -> tuple[App, list[Collection]]:
    """The app to serve, and its collections (for the start-up checks)."""
    if settings.app is not None:
        if settings.collections is not None:
            raise ConfigurationError("--app and --collections: give one (an App declares its collections)")
        app = load_app(settings.app)
        collections = list(app.collections)
        if not collections:
            raise ConfigurationError(f"--app {settings.app}: the app declares no collections")
        return app, collections_from(channels_from(collections)[0])
    collections = load_collections(settings.collections)
    return App(collections=[*collections, *load_channels(settings.collections)]), collections


def build_app(settings: Settings) -> tuple[Starlette, list[Collection]]:
    """The ASGI app of ``settings`` (``--app`` or ``--collections``), and its collections."""
    app, collections = declared(settings)
    return create_app(settings=settings, app=app), collections
