"""Live aggregates: server CPU per change for many subscribers of one grouped aggregate, against
a live count and against re-running the aggregate per subscriber.

    .venv/bin/python bench/aggregates.py            # 1,000 subscribers, 40 changes per mode
    .venv/bin/python bench/aggregates.py --quick    # 200 subscribers, 20 changes: a smoke run

Modes, each against a fresh `tidings serve` (SQLite) seeded with --rows tasks spread over
four statuses, --subscribers graphql-transport-ws connections held by this process:

- count:     each connection runs `query @live { tasksCount(where: {status: {eq: "open"}}) }`
- aggregate: each runs `query @live { tasksAggregate(groupBy: [status]) { groups { key { status }
             count sum { priority } avg { priority } min { priority } max { priority } } } }`
             (all identical: one kept aggregate, one patch per change)
- requery:   each holds `taskEvents` and, on every event, runs the aggregate (without @live) over
             its WebSocket: the server computes it once per subscriber per change
- baseline:  the same changes with no subscriber (the mutation's own cost)

The changes cycle through four that each change both figures: a task created open with the
highest priority (the open group's new max), moved to "closed" (the open max leaves: one
bounded read for the open group), moved back (the closed max leaves: one read), deleted (the
open max leaves: one read). So three changes in four refill an extreme: the worst case for
min/max; count, sum and avg never read. One change at a time: the next mutation goes out once
every connection has its message. Figure: server CPU (utime + stime from /proc) over the
changes / changes, mutations included; the last line subtracts the baseline.
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

FIGURES = (
    "tasksAggregate(groupBy: [status]) { groups { key { status } count sum { priority } avg { priority } "
    "min { priority } max { priority } } }"
)
DOCUMENTS = {
    "count": 'query Open @live { tasksCount(where: {status: {eq: "open"}}) }',
    "aggregate": f"query Figures @live {{ {FIGURES} }}",
    "requery": "subscription { taskEvents { seq } }",
}
PLAIN = f"query Figures {{ {FIGURES} }}"
CREATE = "mutation($i: CreateTaskInput!) { createTask(input: $i) { id } }"
MOVE = "mutation($id: ID!, $s: String!) { updateTask(id: $id, input: {status: $s}) { id } }"
DELETE = "mutation($id: ID!) { deleteTask(id: $id) { id } }"
FLAGS = [
    "--rate-mutations", "0", "--rate-subscribe", "0", "--rate-user-subscribe", "0", "--rate-queries", "0",
    "--queue-messages", "100000", "--queue-bytes", "100000000", "--max-subscriptions", "10",
]  # fmt: skip
MODES = ("baseline", "count", "aggregate", "requery")
STATUSES = ("open", "closed", "waiting", "review")


class Client:
    """One connection: its operation (op "1") and, in requery mode, a query per event."""

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


async def connect_all(server: Server, mode: str, count: int) -> list[Client]:
    limit = asyncio.Semaphore(50)

    async def one() -> Client:
        async with limit:
            ws = await connect(
                server.ws_url, subprotocols=["graphql-transport-ws"], compression=None, max_size=2**24, open_timeout=60
            )  # type: ignore[list-item]
            await ws.send('{"type":"connection_init","payload":{}}')
            ack = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
            if ack.get("type") != "connection_ack":
                raise RuntimeError(f"expected connection_ack, got {ack}")
            payload = {"query": DOCUMENTS[mode]}
            await ws.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": payload}).decode())
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


async def run_mode(mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    with start_server("tidings", workdir, *FLAGS) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:

            async def mutate(query: str, variables: dict[str, Any]) -> str:
                body = (await http.post("/graphql", json={"query": query, "variables": variables})).json()
                if "errors" in body:
                    raise RuntimeError(f"mutation failed: {body['errors']}")
                return str(next(iter(body["data"].values()))["id"])

            for i in range(args.rows):
                await mutate(CREATE, {"i": {"title": f"seed {i}", "status": STATUSES[i % 4], "priority": i}})
            clients = await connect_all(server, mode, 0 if mode == "baseline" else args.subscribers)
            changed = asyncio.Event()
            readers = [asyncio.create_task(c.read(changed)) for c in clients]
            try:
                start = 1 if mode in ("count", "aggregate") else 0  # a live query's first result
                await wait_all(clients, start, changed, args.step_timeout)
                cpu0, t0 = server.cpu_seconds(), time.monotonic()
                current = ""
                for n in range(args.changes):
                    kind = n % 4
                    if kind == 0:
                        variables = {"i": {"title": f"new {n}", "status": "open", "priority": 1_000_000 + n}}
                        current = await mutate(CREATE, variables)
                    elif kind == 1:
                        await mutate(MOVE, {"id": current, "s": "closed"})
                    elif kind == 2:
                        await mutate(MOVE, {"id": current, "s": "open"})
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=400, help="tasks there before, over four statuses")
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--step-timeout", type=float, default=120.0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    apply_quick(parser, args, {"subscribers": 200, "changes": 20})
    results = []
    with tempfile.TemporaryDirectory(prefix="tidings-bench-aggregates-") as tmp:
        for mode in args.modes.split(","):
            print(f"  running {mode} ...", file=sys.stderr, flush=True)
            results.append(await run_mode(mode, args, Path(tmp)))
    what = f"{args.subscribers} subscribers, {args.rows} tasks in 4 groups, {args.changes} changes"
    print(f"{what} (create, move, move, delete)")
    print(f"{'mode':<10} {'server CPU ms/change':>21} {'wall ms/change':>15}")
    by_mode = {r["mode"]: r for r in results}
    for r in results:
        print(f"{r['mode']:<10} {r['cpu_ms_per_change']:>21.2f} {r['wall_ms_per_change']:>15.1f}")
        for line in r["errors"] + r["problems"]:
            print(f"  ! {r['mode']}: {line}")
    if {"count", "aggregate"} <= by_mode.keys():
        base = by_mode.get("baseline", {"cpu_ms_per_change": 0.0})["cpu_ms_per_change"]
        count, aggregate = (by_mode[m]["cpu_ms_per_change"] - base for m in ("count", "aggregate"))
        line = f"beyond the mutation: aggregate {aggregate:.2f} ms, count {count:.2f} ms per change; "
        line += f"aggregate/count {aggregate / count:.2f}x"
        if "requery" in by_mode:
            requery = by_mode["requery"]["cpu_ms_per_change"] - base
            line += f"; requery {requery:.2f} ms, requery/aggregate {requery / aggregate:.1f}x"
        print(line)


if __name__ == "__main__":
    cli(main)
