"""tidings: a realtime GraphQL backend over declared collections."""

from tidings.app import Tidings, create_app, export_schema
from tidings.auth.channel_rules import Channel
from tidings.auth.principal import Principal
from tidings.auth.rules import Rules
from tidings.config import Settings
from tidings.errors import ErrorCode, TidingsError
from tidings.events import ChangeEvent, Operation
from tidings.schema.collection import JSON, Collection, Field, collection
from tidings.schema.toml import load_toml

__all__ = [
    "JSON",
    "ChangeEvent",
    "Channel",
    "Collection",
    "ErrorCode",
    "Field",
    "Operation",
    "Principal",
    "Rules",
    "Settings",
    "Tidings",
    "TidingsError",
    "collection",
    "create_app",
    "export_schema",
    "load_toml",
]

__version__ = "0.1.0"
