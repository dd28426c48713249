"""The comparison server: a subscription written the way Strawberry's docs show.

One asyncio.Queue per subscriber, a mutation that puts the event on every queue
of its room, and an async generator per subscription that yields from its queue;
Strawberry executes and serializes every delivery separately.

    python -m uvicorn bench.naive_strawberry:app --port 8001
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator

import strawberry
from strawberry.asgi import GraphQL

SUBSCRIBERS: dict[str, set[asyncio.Queue[MessageEvent]]] = {}
SEQ = itertools.count(1)


@strawberry.type
class Message:
    id: strawberry.ID
    room: str
    author: str
    body: str


@strawberry.type
class MessageEvent:
    operation: str
    seq: str
    record: Message


@strawberry.input
class CreateMessageInput:
    room: str
    author: str
    body: str


@strawberry.type
class Query:
    @strawberry.field
    def rooms(self) -> list[str]:
        return sorted(SUBSCRIBERS)


@strawberry.type
class Mutation:
    @strawberry.mutation
    def create_message(self, input: CreateMessageInput) -> Message:  # noqa: A002 - the API's argument name
        seq = next(SEQ)
        message = Message(id=strawberry.ID(str(seq)), room=input.room, author=input.author, body=input.body)
        event = MessageEvent(operation="CREATED", seq=str(seq), record=message)
        for queue in SUBSCRIBERS.get(input.room, ()):
            queue.put_nowait(event)
        return message


@strawberry.input
class RoomFilter:
    eq: str


@strawberry.input
class MessageWhere:
    room: RoomFilter


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def message_events(self, where: MessageWhere) -> AsyncGenerator[MessageEvent, None]:
        queue: asyncio.Queue[MessageEvent] = asyncio.Queue()
        room = where.room.eq
        SUBSCRIBERS.setdefault(room, set()).add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            SUBSCRIBERS[room].discard(queue)


schema = strawberry.Schema(query=Query, mutation=Mutation, subscription=Subscription)
app = GraphQL(schema)
