"""Live queries: server CPU per change for many subscribers of one live window, side by side.

    .venv/bin/python bench/live.py            # 1,000 subscribers of one 50-row window, 30 changes per mode
    .venv/bin/python bench/live.py --quick    # 200 subscribers, 15 changes: a smoke run

Three modes, each against a fresh `tidings serve` (SQLite) seeded with --rows open tasks,
--subscribers WebSocket connections (graphql-transport-ws) held by one load process:

- live:    each connection runs `query @live { tasks(where, orderBy: [{priority: DESC}], limit: 50) {...} }`
           (all identical: one kept window, one patch per change, sent to every member)
- events:  each connection subscribes to `taskEvents(where: {status: {eq: "open"}})`
- requery: the envelop/yoga strategy, measured from the client side: each connection holds the
           same event subscription and, on every event, runs the plain query (the live document
           without @live) over its WebSocket; the server executes it once per subscriber per change

The changes cycle through three kinds that all change the window: a task created at the
top (enters, the last row leaves), its title updated (in place), and it deleted (a slot
empties: the live window refills with one bounded read). One change at a time: the next
mutation goes out once every connection got its message (its result, in requery mode).
Figure: server CPU (utime + stime from /proc) over the changes / changes, mutations
included; "baseline" is the same changes with no subscriber, for the mutation's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from harness import Server, apply_quick, cli, start_server
from websockets.asyncio.client import ClientConnection, connect

SELECTION = "{ id title priority }"
WHERE = '{status: {eq: "open"}}'
LIVE = f"query Board @live {{ tasks(where: {WHERE}, orderBy: [{{priority: DESC}}], limit: 50) {SELECTION} }}"
PLAIN = LIVE.replace(" @live", "")
EVENTS = f"subscription {{ taskEvents(where: {WHERE}) {{ operation seq record {SELECTION} }} }}"
CREATE = "mutation($i: CreateTaskInput!) { createTask(input: $i) { id } }"
UPDATE = "mutation($id: ID!, $t: String!) { updateTask(id: $id, input: {title: $t}) { id } }"
DELETE = "mutation($id: ID!) { deleteTask(id: $id) { id } }"
FLAGS = [
    "--rate-mutations", "0", "--rate-subscribe", "0", "--rate-user-subscribe", "0", "--rate-queries", "0",
    "--queue-messages", "100000", "--queue-bytes", "100000000", "--max-subscriptions", "10",
]  # fmt: skip
MODES = ("baseline", "events", "live", "requery")


class Client:
    """One connection: its subscription (op "1") and, in requery mode, a query per event."""

    def __init__(self, ws: ClientConnection, mode: str) -> None:
        self.ws = ws
        self.mode = mode
        self.done = 0  # changes this connection has fully received
        self.queries = 0
        self.errors: list[str] = []

    async def read(self, changed: asyncio.Event) -> None:
        async for raw in self.ws:
            message = orjson.loads(raw)
            kind = message.get("type")
            if kind == "ping":
                await self.ws.send('{"type":"pong"}')
                continue
            if kind == "error" or (kind == "next" and "errors" in message["payload"]):
                self.errors.append(str(message)[:300])
                continue
            if kind != "next":
                continue
            if self.mode == "requery" and message["id"] == "1":
                self.queries += 1
                op = f"q{self.queries}"
                await self.ws.send(orjson.dumps({"id": op, "type": "subscribe", "payload": {"query": PLAIN}}).decode())
                continue
            self.done += 1
            changed.set()


async def run_mode(mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with start_server("tidings", workdir, *FLAGS) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:

            async def mutate(query: str, variables: dict[str, Any]) -> str:
                body = (await http.post("/graphql", json={"query": query, "variables": variables})).json()
                if "errors" in body:
                    raise RuntimeError(f"mutation failed: {body['errors']}")
                return str(next(iter(body["data"].values()))["id"])

            for i in range(args.rows):
                await mutate(CREATE, {"i": {"title": f"seed {i}", "status": "open", "priority": i}})
            clients = await connect_all(server, mode, 0 if mode == "baseline" else args.subscribers)
            changed = asyncio.Event()
            readers = [asyncio.create_task(c.read(changed)) for c in clients]
            try:
                # The live query's first result counts as one message per connection.
                start = 1 if mode == "live" else 0
                await wait_all(clients, start, changed, args.step_timeout)
                cpu0, t0 = server.cpu_seconds(), time.monotonic()
                current = ""
                for n in range(args.changes):
                    kind = n % 3
                    if kind == 0:
                        current = await mutate(
                            CREATE, {"i": {"title": f"new {n}", "status": "open", "priority": 1_000_000 + n}}
                        )
                    elif kind == 1:
                        await mutate(UPDATE, {"id": current, "t": f"renamed {n}"})
                    else:
                        await mutate(DELETE, {"id": current})
                    await wait_all(clients, start + n + 1, changed, args.step_timeout)
                cpu = server.cpu_seconds() - cpu0
                wall = time.monotonic() - t0
                errors = [e for c in clients for e in c.errors]
                problems = server.log_problems()
            finally:
                for reader in readers:
                    reader.cancel()
                await asyncio.gather(*(asyncio.wait_for(c.ws.close(), 2) for c in clients), return_exceptions=True)
    return {
        "mode": mode,
        "cpu_ms_per_change": cpu / args.changes * 1000,
        "wall_ms_per_change": wall / args.changes * 1000,
        "errors": errors[:3],
        "problems": problems[:5],
    }


async def connect_all(server: Server, mode: str, count: int) -> list[Client]:
    limit = asyncio.Semaphore(50)
    document = LIVE if mode == "live" else EVENTS

    async def one() -> Client:
        async with limit:
            ws = await connect(
                server.ws_url, subprotocols=["graphql-transport-ws"], compression=None, max_size=2**24, open_timeout=60
            )  # type: ignore[list-item]
            await ws.send('{"type":"connection_init","payload":{}}')
            ack = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
            if ack.get("type") != "connection_ack":
                raise RuntimeError(f"expected connection_ack, got {ack}")
            await ws.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": {"query": document}}).decode())
            return Client(ws, mode)

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def wait_all(clients: list[Client], target: int, changed: asyncio.Event, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(c.done < target for c in clients):
        changed.clear()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            behind = sum(1 for c in clients if c.done < target)
            errors = [e for c in clients for e in c.errors][:2]
            raise RuntimeError(f"{behind} connections did not get message {target} in {timeout} s: {errors}")
        try:
            await asyncio.wait_for(changed.wait(), remaining)
        except TimeoutError:
            continue


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=200, help="open tasks there before (the window keeps 50)")
    parser.add_argument("--changes", type=int, default=30)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--step-timeout", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    apply_quick(parser, args, {"subscribers": 200, "changes": 15})
    results = []
    with tempfile.TemporaryDirectory(prefix="tidings-bench-live-") as tmp:
        for mode in args.modes.split(","):
            print(f"  running {mode} ...", file=sys.stderr, flush=True)
            results.append(await run_mode(mode, args, Path(tmp)))
    print(f"{args.subscribers} subscribers, one 50-row window, {args.changes} changes (create, rename, delete)")
    print(f"{'mode':<10} {'server CPU ms/change':>21} {'wall ms/change':>15}")
    by_mode = {r["mode"]: r for r in results}
    for r in results:
        print(f"{r['mode']:<10} {r['cpu_ms_per_change']:>21.2f} {r['wall_ms_per_change']:>15.1f}")
        for line in r["errors"] + r["problems"]:
            print(f"  ! {r['mode']}: {line}")
    if {"live", "events", "requery"} <= by_mode.keys():
        base = by_mode.get("baseline", {"cpu_ms_per_change": 0.0})["cpu_ms_per_change"]
        live, events, requery = (by_mode[m]["cpu_ms_per_change"] - base for m in ("live", "events", "requery"))
        print(
            f"beyond the mutation: live {live:.2f} ms, events {events:.2f} ms, requery {requery:.2f} ms per change; "
            f"live/events {live / events:.2f}x, requery/live {requery / live:.1f}x"
        )


if __name__ == "__main__":
    cli(main)
