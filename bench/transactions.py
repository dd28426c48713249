"""Transactions of server code against the same writes one by one, at the store (no HTTP).

A "move" renumbers ``--writes`` cards (updates with expected versions). Three ways, each
``--moves`` times, with ``--concurrency`` moves in flight:

- ``lone``: each update its own commit (what a client calling ``updateCard`` N times gets);
- ``transaction``: the N updates as one ``Store.transaction`` (what ``tidings.transaction`` runs);

and the writes per second each reaches, on SQLite and (with ``TIDINGS_TEST_PG_URL``) PostgreSQL.

    .venv/bin/python bench/transactions.py
    .venv/bin/python bench/transactions.py --writes 20 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tidings.filters import MATCH_ALL
from tidings.model.collection import collection, collections_from
from tidings.store import Store


@collection
class Card:
    title: str
    position: int = 0


CARD = collections_from([Card])[0]


async def run(url: str, args: argparse.Namespace) -> dict[str, float]:
    store = Store(url, [CARD])
    await store.start()
    figures: dict[str, float] = {}
    try:
        boards = []
        for _ in range(args.concurrency):
            boards.append(
                [(await store.create(CARD, {"title": "c"}, account=None, actor=None))[0] for _ in range(args.writes)]
            )

        async def move(board: list[dict[str, Any]], together: bool) -> None:
            bodies = [
                store.update_body(
                    CARD,
                    str(c["id"]),
                    {"position": int(c["position"]) + 1},
                    expected_version=int(c["version"]),
                    guard=MATCH_ALL,
                    actor=None,
                )
                for c in board
            ]
            if together:
                results = await store.transaction(bodies)
            else:
                results = [await store._transaction(body) for body in bodies]
            board[:] = [record for record, _event in results]

        for name, together in (("lone", False), ("transaction", True)):
            started = time.perf_counter()
            for _ in range(args.moves // args.concurrency):
                await asyncio.gather(*(move(board, together) for board in boards))
            elapsed = time.perf_counter() - started
            figures[name] = (args.moves // args.concurrency) * args.concurrency * args.writes / elapsed
    finally:
        await store.close()
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--writes", type=int, default=10, help="updates per move")
    parser.add_argument("--moves", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    targets = [("sqlite", f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}")]
    pg = os.environ.get("TIDINGS_TEST_PG_URL")
    if pg:
        name = "bench_" + uuid.uuid4().hex[:8]
        admin = create_async_engine(pg, isolation_level="AUTOCOMMIT")
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        targets.append(("postgresql", pg.rsplit("/", 1)[0] + "/" + name))
    print(f"{args.moves} moves of {args.writes} updates each, {args.concurrency} in flight (writes per second)")
    for kind, url in targets:
        figures = await run(url, args)
        ratio = figures["transaction"] / figures["lone"]
        print(
            f"  {kind:<11} lone {figures['lone']:>8.0f}   transaction {figures['transaction']:>8.0f}   ({ratio:.1f}x)"
        )
    if pg:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE "{name}"'))
        await admin.dispose()


if __name__ == "__main__":
    asyncio.run(main())
