"""The commands the WebSocket protocol state machines return for the transport to carry out.

The transport executes the commands of one call in list order. After a ``Close`` the
protocol is finished: it returns no further commands, and the transport cancels every
operation it still runs for the connection, as it does when the client disconnects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias, cast

from tidings.protocols.close_codes import CloseCode
from tidings.types import JSONObject

__all__ = ["Authenticate", "Close", "Command", "Send", "Start", "Stop", "send"]


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message``, serialised as JSON, in one text frame."""

    message: JSONObject


@dataclass(frozen=True, slots=True)
class Close:
    """Close the WebSocket with ``code``; ``reason`` is already cut to 123 UTF-8 bytes."""

    code: CloseCode
    reason: str


@dataclass(frozen=True, slots=True)
class Authenticate:
    """The client sent ``connection_init``: decide, then call ``acknowledge`` or ``reject``."""

    payload: JSONObject | None


@dataclass(frozen=True, slots=True)
class Start:
    """Run this GraphQL operation and report its results under ``id``."""

    id: str
    query: str
    variables: JSONObject | None
    operation_name: str | None
    extensions: JSONObject | None


@dataclass(frozen=True, slots=True)
class Stop:
    """The client cancelled operation ``id``: cancel it, and send nothing more for it."""

    id: str


Command: TypeAlias = Send | Close | Authenticate | Start | Stop


def send(message: Mapping[str, object]) -> Send:
    """Wrap a wire message, built as one of the protocols' TypedDicts, in a ``Send``."""
    # A TypedDict is a plain dict at runtime, but mypy never widens it to dict[str, Any].
    return Send(cast(JSONObject, message))
