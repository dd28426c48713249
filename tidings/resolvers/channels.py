"""GraphQL fields of channels and presence: ``publish``, ``updatePresence``,
``channelEvents`` and ``presence`` (the subscriptions are served by the engine)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator
from typing import Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from tidings.errors import BadUserInput, NotFound
from tidings.events import PresenceKind
from tidings.resolvers.context import Context, transport_only

__all__ = ["CHANNEL_MUTATIONS", "CHANNEL_SUBSCRIPTIONS"]


@strawberry.type(description="Who published a channel event (null: the server).")
class ChannelSender:
    sub: str | None


@strawberry.type(description="One event published on a channel; ephemeral unless its namespace keeps history.")
class ChannelEvent:
    channel: str
    type: str
    data: JSON | None
    sender: ChannelSender | None
    at: dt.datetime
    seq: str = strawberry.field(description="Increasing per channel (decimal digits); resume with after.")


PresenceKindType = strawberry.enum(PresenceKind, name="PresenceKind", description="SYNC is the full member list.")


@strawberry.type(description="A member of a channel's presence: one user, or one anonymous connection.")
class PresenceMember:
    sub: str | None
    connection: str = strawberry.field(description="The connection this change is about (or the latest one).")
    meta: JSON | None
    connections: int = strawberry.field(description="How many connections the member has in the channel.")


@strawberry.type(description="The member list first (SYNC), then one change per message.")
class PresenceEvent:
    kind: PresenceKindType  # type: ignore[valid-type]
    members: list[PresenceMember] | None = strawberry.field(description="SYNC only: every member.")
    member: PresenceMember | None = strawberry.field(description="JOIN, UPDATE, LEAVE: the member that changed.")
    count: int = strawberry.field(description="Members in the channel.")


def _channels(info: Info) -> Any:
    ctx: Context = info.context
    channels = getattr(ctx.services, "channels", None)
    if channels is None:
        raise NotFound("Channels are not enabled on this server")
    return channels


async def publish(
    info: Info,
    channel: str,
    type: str,  # noqa: A002
    data: JSON | None = None,
    echo: bool = True,
) -> str:
    ctx: Context = info.context
    # Rate limits count per connection (WebSocket, SSE stream) or, on plain HTTP, per address.
    client = ctx.client if ctx.client is not None else getattr(getattr(ctx.request, "client", None), "host", None)
    seq = await _channels(info).events.publish_as(ctx.principal, channel, type, data, client=client, echo=echo)
    return str(seq)


async def update_presence(info: Info, channel: str, meta: JSON | None = None) -> bool:
    ctx: Context = info.context
    if ctx.client is None or isinstance(ctx.client, str):
        raise BadUserInput(
            "updatePresence changes a connection's presence: send it over that WebSocket "
            "(or graphql-sse single-connection reservation)",
            field="channel",
        )
    return bool(await _channels(info).presence.update(ctx.principal, channel, meta, ctx.client))


async def channel_events(
    info: Info, channels: list[str], types: list[str] | None = None, after: str | None = None
) -> AsyncGenerator[ChannelEvent, None]:
    raise transport_only()
    yield  # pragma: no cover


async def presence(info: Info, channel: str, meta: JSON | None = None) -> AsyncGenerator[PresenceEvent, None]:
    raise transport_only()
    yield  # pragma: no cover


CHANNEL_MUTATIONS = [
    strawberry.mutation(
        publish,
        name="publish",
        description=(
            "Publish an event on a channel; returns its seq. echo: false keeps it from this connection's own "
            "channelEvents (over a WebSocket or an SSE reservation)."
        ),
    ),
    strawberry.mutation(
        update_presence,
        name="updatePresence",
        description="Change this connection's presence meta in a channel it joined, without rejoining.",
    ),
]

CHANNEL_SUBSCRIPTIONS = [
    strawberry.subscription(
        channel_events,
        name="channelEvents",
        description="Events published on these channels (of these types). after: a seq, to resume one channel.",
    ),
    strawberry.subscription(
        presence,
        name="presence",
        description="Join a channel's presence with meta; leave when the operation or the connection ends.",
    ),
]
