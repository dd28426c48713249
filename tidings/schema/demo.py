"""The demo collections that ``tidings serve`` runs with no arguments."""

from __future__ import annotations

import datetime as dt

from tidings.schema.collection import JSON, collection


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


COLLECTIONS = [Task, Message]
