"""Type aliases every tidings module speaks in."""

from typing import Any, TypeAlias

JSON: TypeAlias = Any
"""A JSON value at an edge of the system (wire messages, stored documents)."""

JSONObject: TypeAlias = dict[str, Any]
"""A JSON object: wire messages, GraphQL payloads, record documents."""

Record: TypeAlias = dict[str, Any]
"""One stored record, keyed by column name, with Python values (UTC-aware datetimes)."""
