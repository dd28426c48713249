"""The collections bench/relations_live.py serves: projects and their tasks (no rules), and rooms
whose messages only their members read (a rule through ``room.members``), as in the README."""

from __future__ import annotations

from tidings import Many, Ref, Rules, collection, many, ref

MEMBER = {"members": {"some": {"userId": {"eq": "$sub"}}}}


@collection
class Project:
    name: str
    tasks: Many[Task] = many(via="project")


@collection
class Task:
    title: str
    project: Ref[Project] | None = ref(on_delete="cascade")


@collection(rules=Rules(read={"OR": [{"owner": {"eq": "$sub"}}, MEMBER]}, update="owner:owner", delete="owner:owner"))
class Room:
    name: str
    owner: str | None = None
    members: Many[Membership] = many(via="room")
    messages: Many[Message] = many(via="room")


# Only a room's owner adds and removes its members.
@collection(rules=Rules(create={"room": {"owner": {"eq": "$sub"}}}, delete={"room": {"owner": {"eq": "$sub"}}}))
class Membership:
    user_id: str
    room: Ref[Room] = ref(on_delete="cascade")


@collection(rules=Rules(read={"room": MEMBER}, create={"room": MEMBER}, update="owner:author", delete="owner:author"))
class Message:
    body: str
    author: str | None = None
    room: Ref[Room] = ref(on_delete="cascade")


COLLECTIONS = [Project, Task, Room, Membership, Message]
