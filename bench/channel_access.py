"""Channel rules through relations, in-process: what a membership change costs when the room's
members are present, against re-checking each operation with a read of its own.

    .venv/bin/python bench/channel_access.py
    .venv/bin/python bench/channel_access.py --members 200 --db postgresql+asyncpg://...

The rooms example (examples/rooms/collections.toml: ``room:{id}`` with ``read:Room``, Room's read
rule through ``members``) on the real store, dispatcher and channel access; each member holds
one presence-like operation admitted and tracked through the same calls as a ``presence``
subscribe, with a sink that only records its end. One membership is deleted; the figure is the
time from the commit reaching the dispatcher to every re-check done (the removed member ended),
and the queries it took. Every member's guard differs (the rule names ``$sub``): the worst case
for batching by guard. The baseline is one read per operation (``Store.get`` under its guard),
what an implementation without batching pays.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tidings.app import Tidings
from tidings.auth.channel_rules import ChannelAction
from tidings.auth.principal import Principal
from tidings.auth.rules import Action
from tidings.config import Settings
from tidings.filters import MATCH_ALL
from tidings.model.loading import load_channels, load_collections

EXAMPLE = str(Path(__file__).resolve().parent.parent / "examples" / "rooms" / "collections.toml")


class Operation:
    __slots__ = ("ended", "op_id", "sink")

    def __init__(self, n: int) -> None:
        self.op_id = str(n)
        self.sink = self
        self.ended = False

    def push(self, op_id: str, seq: int, payload: str) -> None:
        pass

    def finish(self, op_id: str, errors: list[dict[str, Any]] | None = None) -> None:
        self.ended = True

    def close(self) -> None:
        pass


async def run(db: str, members: int, rounds: int) -> None:
    settings = Settings(db=db, broker="memory://", jwt_secret="x" * 32, gap_check_interval=0.05)
    collections = load_collections(EXAMPLE)
    tidings = Tidings(collections, settings, channels=load_channels(EXAMPLE))
    await tidings.start()
    try:
        store, access = tidings.store, tidings.channels.access
        by_name = store.collections
        room, event = await store.create(by_name["Room"], {"name": "big", "owner": "ann"}, account="acme", actor="ann")
        events = [event]
        memberships = []
        for i in range(members):
            m, e = await store.create(
                by_name["Membership"], {"userId": f"u{i}", "room_id": room["id"]}, account="acme", actor="ann"
            )
            memberships.append(m["id"])
            events.append(e)
        await tidings.dispatcher.publish_batch(events)
        principals = [Principal(sub=f"u{i}", account="acme", role="member") for i in range(members)]
        operations = []
        started = time.perf_counter()
        for i, principal in enumerate(principals):
            resolved = tidings.channels.rules.resolve(f"room:{room['id']}", principal, ChannelAction.PRESENCE)
            ticket = await access.admit(principal, resolved, ChannelAction.PRESENCE)
            op = Operation(i)
            access.track(op, [ticket])
            operations.append(op)
        admitted = time.perf_counter() - started
        print(f"{members} members admitted and tracked: {admitted * 1000 / members:.2f} ms each (one read)")
        batched, queries = [], []
        for r in range(rounds):
            reads = access.reads
            _, deleted = await store.delete(by_name["Membership"], memberships[r], guard=MATCH_ALL, actor="ann")
            started = time.perf_counter()
            await tidings.dispatcher.publish_batch(deleted)
            while access.busy or not operations[r].ended:
                await asyncio.sleep(0.001)
            batched.append(time.perf_counter() - started)
            queries.append(access.reads - reads)
        authorizer = tidings.authorizer
        started = time.perf_counter()
        for principal in principals[rounds:]:
            guard = authorizer.guard("Room", principal, Action.READ)
            await store.get(by_name["Room"], room["id"], guard)
        naive = time.perf_counter() - started
        print(
            f"a membership deleted, {members - 1}..{members - rounds} present members: "
            f"median {statistics.median(batched) * 1000:.0f} ms, {statistics.median(queries):.0f} queries "
            f"(first {batched[0] * 1000:.0f} ms)"
        )
        print(f"one read per operation instead: {naive * 1000:.0f} ms, {members - rounds} queries")
    finally:
        await tidings.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", default=None, help="a database URL (default: SQLite in a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or f"sqlite:///{Path(tmp) / 'bench.db'}"
        asyncio.run(run(db, args.members, args.rounds))


if __name__ == "__main__":
    main()
