"""A kanban board: columns, cards with positions, and your own Strawberry code beside the
generated API.

    tidings serve --app examples.kanban.app:app

- ``moveCard`` takes a card to a column and position and renumbers both columns, in one
  transaction: subscribers see every card that moved at once, a live query one revision.
- ``closeSprint`` archives every open card of a sprint (one transaction, however many).
- ``board`` answers your own type (``Board``) holding the generated ``Column`` and ``Card``.
- ``standup`` is your own subscription (an async generator) over every transport.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import strawberry

import tidings
from tidings import Conflict, Info, NotFound


@tidings.collection
class Column:
    board_id: str
    name: str
    position: int = 0


@tidings.collection
class Card:
    board_id: str
    column_id: str
    title: str
    position: int = 0
    sprint: int = 1
    archived: bool = False


@strawberry.type
class Board:
    """One board as your own type: its columns and open cards, in order (the generated types inside)."""

    id: strawberry.ID
    columns: list[Column]
    cards: list[Card]


@strawberry.type
class SprintClosed:
    sprint: int
    archived: int


@strawberry.type
class Standup:
    n: int
    open_cards: int
    who: str | None


async def _open_cards(info: Info, column_id: str) -> list[dict[str, object]]:
    return await tidings.records(
        info,
        Card,
        where={"columnId": {"eq": column_id}, "archived": {"eq": False}},
        order_by=[{"position": "ASC"}],
    )


@strawberry.type
class Query:
    @strawberry.field(description="A board's columns and open cards, in order.")
    async def board(self, info: Info, id: strawberry.ID) -> Board:  # noqa: A002
        columns = await tidings.records(info, Column, where={"boardId": {"eq": id}}, order_by=[{"position": "ASC"}])
        cards = await tidings.records(
            info,
            Card,
            where={"boardId": {"eq": id}, "archived": {"eq": False}},
            order_by=[{"columnId": "ASC"}, {"position": "ASC"}],
        )
        return Board(id=id, columns=columns, cards=cards)  # type: ignore[arg-type]


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Move a card to a column and position; both columns are renumbered 0, 1, 2...")
    async def move_card(
        self,
        info: Info,
        id: strawberry.ID,  # noqa: A002
        column_id: strawberry.ID,
        position: int,
        expected_version: int | None = None,
    ) -> Card:
        card = await tidings.record(info, Card, id)
        if card is None or card["archived"]:
            raise NotFound(f"No open Card with id {id!r}", id=str(id))
        if expected_version is not None and card["version"] != expected_version:
            raise Conflict(f"Card {id!r} is at version {card['version']}", currentVersion=card["version"])
        source = [c for c in await _open_cards(info, str(card["column_id"])) if c["id"] != card["id"]]
        target = source if card["column_id"] == column_id else await _open_cards(info, str(column_id))
        position = max(0, min(position, len(target)))
        target.insert(position, {**card, "column_id": str(column_id)})
        async with tidings.transaction(info) as tx:
            # Every card read above is written with the version it was read at: a move that
            # raced this one fails CONFLICT, and the transaction writes nothing.
            for column in [source] if target is source else [source, target]:
                for n, c in enumerate(column):
                    changes = {"position": n}
                    if c["id"] == card["id"]:
                        changes["column_id"] = str(column_id)
                    if c["position"] != n or c["id"] == card["id"]:
                        moved = await tx.update(Card, c["id"], changes, expected_version=c["version"])
                        if c["id"] == card["id"]:
                            mine = moved
        return mine.record  # type: ignore[return-value]

    @strawberry.mutation(description="Archive every open card of a sprint, in one transaction.")
    async def close_sprint(self, info: Info, board_id: strawberry.ID, sprint: int) -> SprintClosed:
        cards = await tidings.records(
            info, Card, where={"boardId": {"eq": board_id}, "sprint": {"eq": sprint}, "archived": {"eq": False}}
        )
        async with tidings.transaction(info) as tx:
            for c in cards:
                await tx.update(Card, c["id"], {"archived": True}, expected_version=c["version"])
        return SprintClosed(sprint=sprint, archived=len(cards))

    @strawberry.mutation(description="Add a card at the end of a column.")
    async def add_card(self, info: Info, input: tidings.CreateInput[Card]) -> Card:  # noqa: A002
        async with tidings.transaction(info) as tx:
            created = await tx.create(Card, input)
        return created.record  # type: ignore[return-value]


@strawberry.type
class Subscription:
    @strawberry.subscription(description="Every `every` seconds, how many open cards a board has; `count` times.")
    async def standup(
        self, info: Info, board_id: strawberry.ID, count: int = 3, every: float = 1.0
    ) -> AsyncGenerator[Standup, None]:
        for n in range(1, count + 1):
            cards = await tidings.records(info, Card, where={"boardId": {"eq": board_id}, "archived": {"eq": False}})
            yield Standup(n=n, open_cards=len(cards), who=info.context.principal.sub)
            if n < count:
                await asyncio.sleep(every)


app = tidings.App(
    collections=[Column, Card],
    queries=[Query],
    mutations=[Mutation],
    subscriptions=[Subscription],
)
