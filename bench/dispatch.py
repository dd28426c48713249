"""Dispatch cost in-process: what one event costs the dispatcher, by how many subscriptions exist.

    .venv/bin/python bench/dispatch.py

The real engine and dispatcher (subscriptions registered through the same code as
a WebSocket subscribe), with sinks that only count, so the figure is the cost of
finding the interested groups, deciding, rendering once and handing out the
payload, without sockets. It compares, for an event published to one room:

  - 10 subscriptions, all in that room (the floor),
  - 10,000 subscriptions over 1,000 rooms (the index must keep this near the floor),
  - 10,000 subscriptions that the index cannot narrow (a `contains` filter, so every
    group is tested): what an unindexed dispatcher would pay for every event.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tidings.app import Tidings
from tidings.auth.principal import ANONYMOUS
from tidings.config import Settings
from tidings.engine.runner import Request
from tidings.events import ChangeEvent, Operation
from tidings.model.collection import collections_from
from tidings.model.demo import COLLECTIONS

BY_ROOM = (
    "subscription($room: String!) { messageEvents(where: {room: {eq: $room}}) "
    "{ operation seq record { id room author body } } }"
)
BY_SUBSTRING = (
    "subscription($room: String!) { messageEvents(where: {room: {contains: $room}}) "
    "{ operation seq record { id room author body } } }"
)


class CountingSink:
    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def push(self, op_id: str, seq: int, payload: str) -> None:
        self.count += 1

    def finish(self, op_id: str, errors: list[dict[str, Any]] | None = None) -> None:
        pass


async def dispatcher_with(query: str, rooms: list[str], workdir: Path) -> tuple[Tidings, CountingSink]:
    # One sink stands for 10,000 connections here: their subscribe rate limit does not apply.
    settings = Settings(db=f"sqlite:///{workdir / 'dispatch.db'}", rate_subscribe=0)
    tidings = Tidings(collections_from(list(COLLECTIONS)), settings)
    sink = CountingSink()
    for i, room in enumerate(rooms):
        outcome = await tidings.engine.run(
            Request(query, {"room": room}, None, None), principal=ANONYMOUS, sink=sink, op_id=str(i)
        )
        assert type(outcome).__name__ == "Streaming", outcome
    return tidings, sink


def event(seq: int, room: str) -> ChangeEvent:
    now = dt.datetime.now(dt.UTC)
    record = {
        "id": f"m{seq}",
        "account": None,
        "created_at": now,
        "updated_at": now,
        "version": 1,
        "room": room,
        "author": "bench",
        "body": "hello",
    }
    return ChangeEvent(
        seq=seq,
        collection="Message",
        operation=Operation.CREATED,
        record_id=f"m{seq}",
        account=None,
        record=record,
        previous={},
        changed_fields=("room", "author", "body"),
        timestamp=now,
        actor=None,
    )


def time_per_event(tidings: Tidings, sink: CountingSink, events: int, expected_per_event: int) -> float:
    dispatcher = tidings.dispatcher
    start_count = sink.count
    batch = [event(dispatcher.position + 1 + i, "r0") for i in range(events)]
    t0 = time.perf_counter()
    for ev in batch:
        dispatcher._dispatch(ev)
    elapsed = time.perf_counter() - t0
    delivered = sink.count - start_count
    assert delivered == events * expected_per_event, (delivered, events * expected_per_event)
    return elapsed / events * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    per_room, rooms_n = 10, 1000
    many = [f"r{i % rooms_n}" for i in range(per_room * rooms_n)]
    # The subscriptions of one room share their variables, so one group per room: 1,000 groups in all.
    with tempfile.TemporaryDirectory(prefix="tidings-dispatch-") as tmp:
        workdir = Path(tmp)
        setups = {
            f"{per_room} subscriptions, all in the room": await dispatcher_with(BY_ROOM, ["r0"] * per_room, workdir),
            f"{len(many)} subscriptions over {rooms_n} rooms": await dispatcher_with(BY_ROOM, many, workdir),
            f"{len(many)} unindexable (contains) filters": await dispatcher_with(
                BY_SUBSTRING, [f"{r}/" if r != "r0" else "r0" for r in many], workdir
            ),
        }
        figures: dict[str, list[float]] = {label: [] for label in setups}
        for _ in range(args.repeat):
            for label, (tidings, sink) in setups.items():
                figures[label].append(time_per_event(tidings, sink, args.events, per_room))
    print(f"Dispatch of one event to the {per_room} subscribers of its room, in-process (median of {args.repeat}):")
    floor = statistics.median(next(iter(figures.values())))
    for label, values in figures.items():
        med = statistics.median(values)
        print(f"  {label:<44} {med:9.1f} us/event   x{med / floor:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
