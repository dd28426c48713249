"""tidings: a realtime GraphQL backend over declared collections."""

from tidings.app import Tidings, create_app, export_schema
from tidings.auth.channel_rules import Channel
from tidings.auth.principal import Principal
from tidings.auth.rules import Rules
from tidings.config import Settings
from tidings.errors import BadUserInput, ErrorCode, Forbidden, TidingsError
from tidings.events import ChangeEvent, Operation
from tidings.hooks import ConnectionInfo, Hooks, OperationInfo, PublishInfo, WriteInfo
from tidings.model.collection import JSON, Collection, Field, collection
from tidings.model.relations import Many, OnDelete, Ref, many, ref
from tidings.model.toml import load_toml

__all__ = [
    "JSON",
    "BadUserInput",
    "ChangeEvent",
    "Channel",
    "Collection",
    "ConnectionInfo",
    "ErrorCode",
    "Field",
    "Forbidden",
    "Hooks",
    "Many",
    "OnDelete",
    "Operation",
    "OperationInfo",
    "Principal",
    "PublishInfo",
    "Ref",
    "Rules",
    "Settings",
    "Tidings",
    "TidingsError",
    "WriteInfo",
    "collection",
    "create_app",
    "export_schema",
    "load_toml",
    "many",
    "ref",
]

__version__ = "0.1.0"
