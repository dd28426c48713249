"""The comparison server: a subscription written the way Strawberry's docs show.

A mutation puts each new message on one ``asyncio.Queue`` per subscriber of its
room (a simple in-process broadcast registry), and each subscription is an async
generator yielding from its own queue, so Strawberry executes the selection set
and serializes the result once per subscriber and event. Served by
``strawberry.asgi.GraphQL`` (graphql-transport-ws) on uvicorn, like the others.

The payload has the shape tidings sends (operation, seq, record {id room author
body}), so the bytes per message are comparable:

    subscription($room: String!) { messageEvents(room: $room) { operation seq record { id room author body } } }
    mutation($room: String!, $author: String!, $body: String!) {
      createMessage(room: $room, author: $author, body: $body) { id } }

Run by the benchmarks with ``python -m uvicorn naive_strawberry:app --app-dir bench``.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import AsyncGenerator

import strawberry
from strawberry.asgi import GraphQL


@strawberry.enum
class Operation(enum.Enum):
    CREATED = "CREATED"


@strawberry.type
class Message:
    id: strawberry.ID
    room: str
    author: str
    body: str


@strawberry.type
class MessageEvent:
    operation: Operation
    seq: str
    record: Message


class Broadcast:
    """Room name -> the queues of its subscribers."""

    def __init__(self) -> None:
        self.rooms: dict[str, set[asyncio.Queue[MessageEvent]]] = {}

    def publish(self, room: str, event: MessageEvent) -> None:
        for queue in self.rooms.get(room, ()):
            queue.put_nowait(event)

    def join(self, room: str) -> asyncio.Queue[MessageEvent]:
        queue: asyncio.Queue[MessageEvent] = asyncio.Queue()
        self.rooms.setdefault(room, set()).add(queue)
        return queue

    def leave(self, room: str, queue: asyncio.Queue[MessageEvent]) -> None:
        members = self.rooms.get(room)
        if members is not None:
            members.discard(queue)
            if not members:
                del self.rooms[room]


broadcast = Broadcast()
_seq = itertools.count(1)


@strawberry.type
class Query:
    @strawberry.field
    def rooms(self) -> list[str]:
        return sorted(broadcast.rooms)


@strawberry.type
class Mutation:
    @strawberry.mutation
    def create_message(self, room: str, author: str, body: str) -> Message:
        seq = next(_seq)
        message = Message(id=strawberry.ID(str(seq)), room=room, author=author, body=body)
        broadcast.publish(room, MessageEvent(operation=Operation.CREATED, seq=str(seq), record=message))
        return message


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def message_events(self, room: str) -> AsyncGenerator[MessageEvent, None]:
        queue = broadcast.join(room)
        try:
            while True:
                yield await queue.get()
        finally:
            broadcast.leave(room, queue)


schema = strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription)
app = GraphQL(schema)
