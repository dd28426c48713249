"""The demo collections that ``tidings serve`` runs with no arguments.

``Task`` and ``Message`` are the board and the messages the tests and benches use; a
``Task`` may belong to a ``Project`` (``Task.project``, ``Project.tasks``: relations);
``Room`` and ``ChatMessage`` (with the ``room:*`` namespace in ``CHANNELS``) are the
chat demo at /playground/chat: each committed ``ChatMessage`` is also published to
its room's channel, beside the room's typing events and presence.
"""

from __future__ import annotations

import datetime as dt

from tidings.auth.channel_rules import Channel
from tidings.model.collection import JSON, collection
from tidings.model.relations import Many, Ref, many, ref


@collection
class Project:
    """A project; its tasks are Task records whose project is this one."""

    name: str
    archived: bool = False
    tasks: Many[Task] = many(via="project")


@collection
class Task:
    """A task on a shared board, in a project or none."""

    title: str
    status: str = "pending"
    priority: int = 0
    assigned_to: str | None = None
    due_at: dt.datetime | None = None
    tags: JSON | None = None
    project: Ref[Project] | None = ref(on_delete="set_null")


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


COLLECTIONS = [Task, Project, Message, Room, ChatMessage]

# The chat's channels: typing events and presence per room. The default rules (public
# in demo mode, authenticated with tokens) let any signed-in user of an account join
# its rooms; room:lobby of account A is not room:lobby of account B.
CHANNELS = [Channel("room:*")]
