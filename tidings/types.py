"""Type aliases every tidings module speaks in."""

from typing import Any, TypeAlias

from starlette.types import Message, Receive, Scope, Send

__all__ = ["JSON", "JSONObject", "Message", "Receive", "Record", "Scope", "Send"]

JSON: TypeAlias = Any
"""A JSON value at an edge of the system (wire messages, stored documents)."""

JSONObject: TypeAlias = dict[str, Any]
"""A JSON object: wire messages, GraphQL payloads, record documents."""

Record: TypeAlias = dict[str, Any]
"""One stored record, keyed by column name, with Python values (UTC-aware datetimes)."""

# ASGI's Scope, Receive, Send and Message: Starlette's aliases, which every transport speaks in.
