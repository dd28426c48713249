"""Channels and presence: typing in many rooms against the raw broadcast, and a presence join storm.

    .venv/bin/python bench/channels.py            # 1,000 rooms x 10 members; 5,000 joins into 100 channels
    .venv/bin/python bench/channels.py --quick    # 100 rooms, 1,000 joins: a smoke run

Typing: --rooms rooms of --members members each. Every member is one subscription
(channelEvents on its room, over graphql-transport-ws; on the raw server, its bare
broadcast), carried by --connections connections in a load process. Typing events
are published to random rooms at --rate per second in total (the issue's 2 per member
per second is rooms x members x 2 = 20,000 publishes and 200,000 deliveries a second,
more than this machine drives: the figure is per delivered event, so the rate only
needs to keep the server busy without saturating it). Publishes are HTTP POSTs to both
servers. Figure: server CPU time over the window / events delivered. Rounds alternate.

Presence: --joiners connections each join every one of --channels channels (anonymous,
so each connection is a member): --joiners x --channels joins. Each joiner receives
the member list and then every later join: the storm delivers O(members^2) diffs per
channel, as presence does. Figures: wall time and server CPU per join, and the server's
RSS growth per presence member once every join is answered.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from contextlib import ExitStack
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import orjson
from harness import Server, apply_quick, cli, median, start_server
from websockets.asyncio.client import connect

TYPING = "subscription($room: String!) { channelEvents(channels: [$room]) { channel type data sender { sub } seq } }"
RAW = "subscription($room: String!) { messageEvents(where: {room: {eq: $room}}) { operation seq } }"
PUBLISH = 'mutation($room: String!) { publish(channel: $room, type: "typing", data: {on: true}) }'
PRESENCE = (
    "subscription($ch: String!) { presence(channel: $ch, meta: {cursor: 1}) { kind count member { connection } } }"
)
FLAGS = [
    "--rate-publish", "0", "--rate-user-publish", "0", "--rate-mutations", "0", "--rate-subscribe", "0",
    "--rate-user-subscribe", "0", "--queue-messages", "100000", "--queue-bytes", "100000000",
]  # fmt: skip


# -- the load process: connections that subscribe and count what arrives -------------------------


async def _client(pipe: Connection, url: str, document: str, layout: list[list[dict[str, Any]]]) -> None:
    received = 0
    ready = 0
    conns = []

    async def reader(ws: Any, expect: int) -> None:
        nonlocal received, ready
        acked = False
        async for raw in ws:
            kind = orjson.loads(raw)["type"]
            if kind == "connection_ack" and not acked:
                acked = True
                ready += 1
            elif kind == "next":
                received += 1

    tasks = []
    for subs in layout:
        ws = await connect(url, subprotocols=["graphql-transport-ws"], max_size=None, ping_interval=None)  # type: ignore[list-item]
        conns.append(ws)
        await ws.send(orjson.dumps({"type": "connection_init", "payload": {}}).decode())
        tasks.append(asyncio.create_task(reader(ws, len(subs))))
    while ready < len(layout):
        await asyncio.sleep(0.01)
    for ws, subs in zip(conns, layout, strict=True):
        for i, variables in enumerate(subs):
            message = {"id": str(i), "type": "subscribe", "payload": {"query": document, "variables": variables}}
            await ws.send(orjson.dumps(message).decode())
    pipe.send(("subscribed", len(conns)))
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command == "count":
            pipe.send(received)
        elif command == "stop":
            break
    for ws in conns:
        await ws.close()
    for task in tasks:
        task.cancel()


def client_main(pipe: Connection, url: str, document: str, layout: list[list[dict[str, Any]]]) -> None:
    asyncio.run(_client(pipe, url, document, layout))


class Load:
    """A load process holding ``layout`` (per connection, the variables of each subscription)."""

    def __init__(self, url: str, document: str, layout: list[list[dict[str, Any]]]) -> None:
        ctx = mp.get_context("spawn")
        self.pipe, child = ctx.Pipe()
        self.proc = ctx.Process(target=client_main, args=(child, url, document, layout), daemon=True)

    def __enter__(self) -> Load:
        self.proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.is_alive():
            self.pipe.send("stop")
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()

    async def wait(self, what: str, timeout: float = 120.0) -> Any:
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(None, self.pipe.poll, timeout)
        if not ok:
            raise RuntimeError(f"the load process did not report {what} within {timeout:.0f} s")
        return self.pipe.recv()

    async def count(self) -> int:
        self.pipe.send("count")
        return int(await self.wait("its count"))


# -- typing --------------------------------------------------------------------------------------


async def publish_at(server: Server, rooms: list[str], rate: float, seconds: float) -> int:
    """Publish to random rooms at ``rate`` a second for ``seconds``; the number published."""
    kind = server.kind
    sent = 0
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate) + 1
            batch = []
            while sent < due:
                room = random.choice(rooms)
                if kind == "raw":
                    body = {"variables": {"i": {"room": room, "author": "a", "body": "typing"}}}
                else:
                    body = {"query": PUBLISH, "variables": {"room": room}}
                batch.append(http.post("/graphql", json=body))
                sent += 1
            if batch:
                for response in await asyncio.gather(*batch):
                    response.raise_for_status()
            await asyncio.sleep(max(0.0, (sent / rate) - (time.monotonic() - start)))
    return sent


async def typing_round(
    server: Server, load: Load, rooms: list[str], rate: float, seconds: float, members: int
) -> dict[str, float]:
    before = await load.count()
    cpu0 = server.cpu_seconds()
    sent = await publish_at(server, rooms, rate, seconds)
    expected = before + sent * members
    deadline = time.monotonic() + 30
    got = before
    while time.monotonic() < deadline:
        got = await load.count()
        if got >= expected:
            break
        await asyncio.sleep(0.1)
    cpu = server.cpu_seconds() - cpu0
    delivered = got - before
    return {
        "us_per_delivery": cpu / max(delivered, 1) * 1e6,
        "delivered": delivered,
        "expected": sent * members,
        "cpu": cpu,
    }


async def typing(args: argparse.Namespace, tmp: Path, servers: ExitStack) -> None:
    rooms = [f"room:{i}" for i in range(args.rooms)]
    # Member-major: a connection carries one member of each of its rooms, so a room's members are on
    # distinct connections (the raw server broadcasts once per connection and room).
    subs = [{"room": room} for _ in range(args.members) for room in rooms]
    per_conn = -(-len(subs) // args.connections)
    layout = [subs[i : i + per_conn] for i in range(0, len(subs), per_conn)]
    setups: dict[str, tuple[Server, Load]] = {}
    for kind in ("tidings", "raw"):
        extra = [*FLAGS, "--max-subscriptions", str(per_conn + 10)] if kind == "tidings" else []
        server = servers.enter_context(start_server(kind, tmp, *extra))
        load = servers.enter_context(Load(server.ws_url, TYPING if kind == "tidings" else RAW, layout))
        await load.wait("its subscriptions")
        await asyncio.sleep(1.0)  # subscriptions register after the last subscribe message
        await publish_at(server, rooms, args.rate, 1.0)  # warm up
        setups[kind] = (server, load)
    print(
        f"typing: {args.rooms} rooms x {args.members} members = {len(subs)} subscriptions "
        f"on {len(layout)} connections; "
        f"{args.rate:.0f} publishes/s ({args.rate * args.members:.0f} deliveries/s), {args.seconds:.0f} s rounds",
        flush=True,
    )
    rounds: dict[str, list[dict[str, float]]] = {"tidings": [], "raw": []}
    for n in range(args.repeat):
        for kind in ("tidings", "raw") if n % 2 == 0 else ("raw", "tidings"):
            server, load = setups[kind]
            rounds[kind].append(await typing_round(server, load, rooms, args.rate, args.seconds, args.members))
        print(
            f"  round {n + 1}: "
            + ", ".join(
                f"{k} {rs[-1]['us_per_delivery']:.1f} us/delivery ({rs[-1]['delivered']:.0f}/{rs[-1]['expected']:.0f})"
                for k, rs in rounds.items()
            ),
            flush=True,
        )
    figures = {k: median([r["us_per_delivery"] for r in rs]) for k, rs in rounds.items()}
    print(
        f"  server CPU per delivered typing event (median of {args.repeat}): tidings {figures['tidings']:.1f} us, "
        f"raw broadcast {figures['raw']:.1f} us, ratio {figures['tidings'] / figures['raw']:.2f}"
    )
    # The publish itself (an HTTP mutation, no subscriber): how much of the above is the way in.
    idle = [f"nobody:{i}" for i in range(args.rooms)]
    alone = {}
    for kind, (server, _) in setups.items():
        cpu0 = server.cpu_seconds()
        sent = await publish_at(server, idle, args.rate, args.seconds)
        alone[kind] = (server.cpu_seconds() - cpu0) / sent * 1e6
    print(
        f"  of which the HTTP publish with no subscriber, per event: tidings {alone['tidings']:.0f} us, "
        f"raw {alone['raw']:.0f} us; so per delivery beyond it: tidings "
        f"{figures['tidings'] - alone['tidings'] / args.members:.1f} us, "
        f"raw {figures['raw'] - alone['raw'] / args.members:.1f} us"
    )
    # What a typing client does: publish over its own WebSocket (tidings only; raw takes HTTP).
    server = setups["tidings"][0]
    cpu0 = server.cpu_seconds()
    sent = await publish_over_ws(server, idle, args.rate, args.seconds)
    per_ws = (server.cpu_seconds() - cpu0) / sent * 1e6
    print(f"  a publish over a WebSocket (mutation, echo: false), no subscriber: tidings {per_ws:.0f} us")
    for kind, (server, _) in setups.items():
        for line in server.log_problems()[:5]:
            print(f"  ! {kind} log: {line[:200]}")


async def publish_over_ws(server: Server, rooms: list[str], rate: float, seconds: float) -> int:
    """Publish at ``rate`` for ``seconds`` over one WebSocket, each mutation answered before the next batch."""
    query = 'mutation($room: String!) { publish(channel: $room, type: "typing", data: {on: true}, echo: false) }'
    async with connect(server.ws_url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
        await ws.send(orjson.dumps({"type": "connection_init", "payload": {}}).decode())
        await ws.recv()
        sent = 0
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < seconds:
            due = int(elapsed * rate) + 1
            batch = 0
            while sent < due:
                payload = {"query": query, "variables": {"room": random.choice(rooms)}}
                await ws.send(orjson.dumps({"id": str(sent), "type": "subscribe", "payload": payload}).decode())
                sent += 1
                batch += 1
            completed = 0
            while completed < batch:
                message = orjson.loads(await ws.recv())
                if message["type"] == "error":
                    raise RuntimeError(f"publish over WebSocket failed: {message}")
                completed += message["type"] == "complete"
            await asyncio.sleep(max(0.0, (sent / rate) - (time.monotonic() - start)))
    return sent


# -- presence storm --------------------------------------------------------------------------------


async def storm(args: argparse.Namespace, tmp: Path, servers: ExitStack) -> None:
    channels = [f"doc:{i}" for i in range(args.channels)]
    joins = args.joiners * args.channels
    server = servers.enter_context(start_server("tidings", tmp, *FLAGS, "--max-subscriptions", str(args.channels + 10)))
    # Warm the server (imports, the first operations) so the RSS baseline is fair.
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
        for _ in range(3):
            await http.post("/graphql", json={"query": PUBLISH, "variables": {"room": "warm"}})
    layout = [[{"ch": ch} for ch in channels] for _ in range(args.joiners)]
    rss0 = server.rss_kb()
    cpu0, t0 = server.cpu_seconds(), time.monotonic()
    # Each joiner gets a SYNC per channel and a JOIN for each later joiner of the channel.
    expected = sum(args.channels * (1 + (args.joiners - 1 - j)) for j in range(args.joiners))
    with Load(server.ws_url, PRESENCE, layout) as load:
        await load.wait("its joins")
        deadline = time.monotonic() + 300
        got = 0
        while time.monotonic() < deadline:
            got = await load.count()
            if got >= expected:
                break
            await asyncio.sleep(0.05)
        seconds, cpu = time.monotonic() - t0, server.cpu_seconds() - cpu0
        await asyncio.sleep(0.5)
        rss1 = server.rss_kb()
        print(
            f"presence storm: {args.joiners} connections join {args.channels} channels each = {joins} members "
            f"({args.joiners} per channel); {got}/{expected} presence messages delivered\n"
            f"  {seconds:.2f} s wall, {seconds / joins * 1e6:.0f} us wall and "
            f"{cpu / joins * 1e6:.0f} us server CPU per join; server RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB, "
            f"{(rss1 - rss0) / joins:.2f} KiB per member "
            "(its subscription, presence entry and connection share)",
            flush=True,
        )
    for line in server.log_problems()[:5]:
        print(f"  ! storm log: {line[:200]}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--connections", type=int, default=100, help="connections carrying the members' subscriptions")
    parser.add_argument("--rate", type=float, default=200.0, help="typing publishes per second, all rooms together")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a typing round")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--channels", type=int, default=100, help="presence channels")
    parser.add_argument("--joiners", type=int, default=50, help="connections joining every presence channel")
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke run")
    args = parser.parse_args()
    apply_quick(
        parser, args, {"rooms": 100, "connections": 20, "rate": 100.0, "seconds": 2.0, "repeat": 2, "channels": 20}
    )
    print(f"channels: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, python {sys.version.split()[0]}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tidings-channels-") as tmp, ExitStack() as servers:
        async with asyncio.timeout(args.max_seconds):
            await typing(args, Path(tmp), servers)
        with ExitStack() as storm_servers:
            async with asyncio.timeout(args.max_seconds):
                await storm(args, Path(tmp), storm_servers)
    print(f"\n(run took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    cli(main)
