"""tidings: a realtime GraphQL backend over declared collections."""

from tidings.app import Tidings, create_app, export_schema
from tidings.auth.channel_rules import Channel
from tidings.auth.principal import Principal
from tidings.auth.rules import Rules
from tidings.config import Settings
from tidings.declaration import App
from tidings.errors import BadUserInput, Conflict, ErrorCode, Forbidden, NotFound, TidingsError
from tidings.events import ChangeEvent, Operation
from tidings.hooks import ConnectionInfo, Hooks, OperationInfo, PublishInfo, WriteInfo
from tidings.model.collection import JSON, Collection, Field, collection
from tidings.model.relations import Many, OnDelete, Ref, many, ref
from tidings.model.toml import load_toml
from tidings.resolvers.context import Context
from tidings.resolvers.transactions import Info, Staged, Transaction, record, records, transaction
from tidings.schema.merge import CreateInput, UpdateInput, Where

__all__ = [
    "JSON",
    "App",
    "BadUserInput",
    "ChangeEvent",
    "Channel",
    "Collection",
    "Conflict",
    "ConnectionInfo",
    "Context",
    "CreateInput",
    "ErrorCode",
    "Field",
    "Forbidden",
    "Hooks",
    "Info",
    "Many",
    "NotFound",
    "OnDelete",
    "Operation",
    "OperationInfo",
    "Principal",
    "PublishInfo",
    "Ref",
    "Rules",
    "Settings",
    "Staged",
    "Tidings",
    "TidingsError",
    "Transaction",
    "UpdateInput",
    "Where",
    "WriteInfo",
    "collection",
    "create_app",
    "export_schema",
    "load_toml",
    "many",
    "record",
    "records",
    "ref",
    "transaction",
]

__version__ = "0.1.0"
