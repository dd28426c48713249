"""The demo collections that ``tidings serve`` runs with no arguments.

``Task`` and ``Message`` are the board and the messages the tests and benches use;
``Room`` and ``ChatMessage`` (with the ``room:*`` namespace in ``CHANNELS``) are the
chat demo at /playground/chat: each committed ``ChatMessage`` is also published to
its room's channel, beside the room's typing events and presence.
"""

from __future__ import annotations

import datetime as dt

from tidings.auth.channel_rules import Channel
from tidings.model.collection import JSON, collection


@collection
class Task:
    """A task on a shared board."""

    title: str
    status: str = "pending"
    priority: int = 0
    assigned_to: str | None = None
    due_at: dt.datetime | None = None
    tags: JSON | None = None


@collection
class Message:
    """A chat message in a room."""

    room: str
    author: str
    body: str


@collection
class Room:
    """A chat room of the chat demo; its channel is room:<name>."""

    name: str


@collection(channels=["room:{room}"])
class ChatMessage:
    """A message of the chat demo, also published to channel room:<room> (chatMessage.created)."""

    room: str
    author: str
    body: str


COLLECTIONS = [Task, Message, Room, ChatMessage]

# The chat's channels: typing events and presence per room. The default rules (public
# in demo mode, authenticated with tokens) let any signed-in user of an account join
# its rooms; room:lobby of account A is not room:lobby of account B.
CHANNELS = [Channel("room:*")]
