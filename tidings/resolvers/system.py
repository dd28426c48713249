"""The ``systemEvents`` subscription field (served by the engine, per connection)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from tidings.events import SystemEventKind
from tidings.resolvers.context import transport_only

__all__ = ["SYSTEM_SUBSCRIPTIONS"]

SystemEventKindType = strawberry.enum(
    SystemEventKind,
    name="SystemEventKind",
    description=(
        "SHUTTING_DOWN: this server process is restarting; reconnect after data.reconnectAfterMs and resume. "
        "TOKEN_EXPIRING: call renewToken before data.expiresAt. "
        "PERMISSIONS_CHANGED: your rules were reloaded; data.ended lists the operations that ended. "
        "SCHEMA_UPDATED: the deployment's collections changed (another process migrated the database); "
        "refresh your client."
    ),
)


@strawberry.type(description="An event about this connection, from the server itself.")
class SystemEvent:
    kind: SystemEventKindType  # type: ignore[valid-type]
    message: str
    at: dt.datetime
    data: JSON | None


async def system_events(info: Info) -> AsyncGenerator[SystemEvent, None]:
    raise transport_only()
    yield  # pragma: no cover


SYSTEM_SUBSCRIPTIONS = [
    strawberry.subscription(
        system_events,
        name="systemEvents",
        description="Events about this connection: shutdown, token expiry, permission changes.",
    )
]
