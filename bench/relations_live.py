"""Live queries across relations (issue 25): server CPU per change, with and without the relation,
and against re-executing every subscriber's query (the yoga/envelop way).

    .venv/bin/python bench/relations_live.py            # both cases (a few minutes on 2 cores)
    .venv/bin/python bench/relations_live.py --quick    # a smoke run
    .venv/bin/python bench/relations_live.py --cases a --profile   # cProfile of the relation server

Every server is `tidings serve` (SQLite, bench/relations_live_model.py) run by
bench/relations_live_server.py, which counts the SELECTs it runs by the table they read first;
subscribers are graphql-transport-ws connections held by this process.

Case A, one relation level: --subscribers (1,000) connections over --groups (50) projects, each
`query($p: ID!) @live { tasks(where: {projectId: {eq: $p}}, orderBy: [{createdAt: DESC}], limit: 20)
{ title project { name } } }` (the "relation" server) or the same without `project { name }` (the
"no relation" server), beside a server with no subscriber (the mutation's own cost). Changes, --changes
of each kind per round, each to the next project in turn: a task of the window renamed, a task created
at its top, the project renamed (only the relation's subscribers see that). One change at a time: the
next goes out once the affected group's members have their patch and the server is idle.

Case B, a membership rule: a room of --members (1,000) Membership rows, Message.read = {"room":
{"members": {"some": {"userId": {"eq": "$sub"}}}}}; --users (200) members each hold `query($r: ID!)
@live { messages(where: {roomId: {eq: $r}}, orderBy: [{createdAt: DESC}], limit: 20) { body author } }`
on their own connection: each user is its own group (the rule reads $sub). Changes: a member who holds
no live query removed, and added back; a subscribing member removed (their result empties), and added
back; a message posted. A refill is one SELECT of the messages table.

Requery: each subscriber sends its query once more (without @live) over its connection, all at
once; server CPU / queries is the cost of one re-execution, which envelop's and yoga's @live pay
per subscriber on each invalidation: every subscriber when a list's root field is invalidated
(a task created; a membership changed: nothing names whose results it changes), the affected
group's when a record id is (a task or a project renamed).

Figures: server CPU (utime + stime from /proc) per change, medians of --rounds rounds (interleaved
across servers); "beyond the mutation" subtracts the no-subscriber server's figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile  # noqa: F401  (the server's profiler writes its format; pstats reads it)
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
from harness import BENCH, ROOT, Server, apply_quick, cli, free_port, median, stop_process
from relations_live_server import TABLES, read_counts
from websockets.asyncio.client import ClientConnection, connect

SECRET = "bench-relations-live-secret-0123456789abcdef"
ACCOUNT = "bench"
FLAGS = [
    "--rate-mutations", "0", "--rate-subscribe", "0", "--rate-user-subscribe", "0", "--rate-queries", "0",
    "--queue-messages", "100000", "--queue-bytes", "100000000", "--max-subscriptions", "10",
    "--jwt-secret", SECRET,
]  # fmt: skip
WINDOW = "tasks(where: {projectId: {eq: $p}}, orderBy: [{createdAt: DESC}], limit: 20)"
BOARD = {
    "plain": f"query Board($p: ID!) @live {{ {WINDOW} {{ title }} }}",
    "relation": f"query Board($p: ID!) @live {{ {WINDOW} {{ title project {{ name }} }} }}",
}
ROOM = (
    "query Room($r: ID!) @live { messages(where: {roomId: {eq: $r}}, orderBy: [{createdAt: DESC}], limit: 20) "
    "{ body author } }"
)
UPDATE_TASK = "mutation($id: ID!, $t: String!) { updateTask(id: $id, input: {title: $t}) { id } }"
CREATE_TASK = "mutation($p: ID!, $t: String!) { createTask(input: {title: $t, projectId: $p}) { id } }"
RENAME_PROJECT = "mutation($id: ID!, $n: String!) { updateProject(id: $id, input: {name: $n}) { id } }"
ADD_MEMBER = "mutation($r: ID!, $u: String!) { createMembership(input: {roomId: $r, userId: $u}) { id } }"
REMOVE_MEMBER = "mutation($id: ID!) { deleteMembership(id: $id) { id } }"
POST = "mutation($r: ID!, $b: String!) { createMessage(input: {roomId: $r, body: $b}) { id } }"


def token(sub: str) -> str:
    now = int(time.time())
    claims = {"sub": sub, "account": ACCOUNT, "role": "member", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


# -- servers ---------------------------------------------------------------------------------------


@dataclass
class Counted:
    """A server and its SELECT counters."""

    server: Server
    counts: Path
    profile: Path | None

    def selects(self) -> dict[str, int]:
        return read_counts(str(self.counts))

    def cpu(self) -> float:
        return self.server.cpu_seconds()


@contextlib.contextmanager
def serving(workdir: Path, name: str, profile: bool = False) -> Iterator[Counted]:
    """A counting `tidings serve` on a free port; stopped however the block ends."""
    port = free_port()
    counts = workdir / f"{name}.selects"
    counts.write_bytes(bytes(8 * len(TABLES)))
    env = {**os.environ, "PYTHONPATH": str(BENCH), "BENCH_SELECTS": str(counts)}
    prof = workdir / f"{name}.prof" if profile else None
    if prof is not None:
        env["BENCH_PROFILE"] = str(prof)
    cmd = [
        sys.executable, str(BENCH / "relations_live_server.py"), "serve", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--db", f"sqlite:///{workdir / name}.db", "--no-graphiql",
        "--collections", "relations_live_model:COLLECTIONS", *FLAGS,
    ]  # fmt: skip
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not listen within 60 s") from None
                time.sleep(0.05)
        yield Counted(Server("tidings", proc, port, log), counts, prof)
    finally:
        stop_process(proc)


class Http:
    """Mutations over one keep-alive HTTP client, as one user."""

    def __init__(self, server: Counted, sub: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=server.server.base_url, timeout=60, headers={"Authorization": f"Bearer {token(sub)}"}
        )

    async def __call__(self, query: str, **variables: Any) -> Any:
        body = (await self.client.post("/graphql", json={"query": query, "variables": variables})).json()
        if body.get("errors"):
            raise RuntimeError(f"{query[:60]}...: {body['errors']}")
        return body["data"]

    async def batch(self, field_texts: list[str]) -> list[str]:
        """Many mutations in one document (aliased), their ids in order."""
        document = "mutation { " + " ".join(f"m{i}: {t} {{ id }}" for i, t in enumerate(field_texts)) + " }"
        data = await self(document)
        return [data[f"m{i}"]["id"] for i in range(len(field_texts))]

    async def aclose(self) -> None:
        await self.client.aclose()


async def in_batches(texts: list[str], http: Http, size: int = 25, concurrency: int = 4) -> list[str]:
    chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
    limit = asyncio.Semaphore(concurrency)

    async def one(chunk: list[str]) -> list[str]:
        async with limit:
            return await http.batch(chunk)

    return [i for ids in await asyncio.gather(*(one(c) for c in chunks)) for i in ids]


def quoted(text: str) -> str:
    return orjson.dumps(text).decode()


# -- subscribers --------------------------------------------------------------------------------


@dataclass
class Conn:
    """One connection: its live query (op "1") and the plain queries it re-runs (ops "q<n>")."""

    ws: ClientConnection
    query: str
    variables: dict[str, Any]
    done: int = 0  # live messages received (the first result included)
    answers: int = 0  # plain query results received
    errors: list[str] = field(default_factory=list)

    async def read(self, changed: asyncio.Event) -> None:
        async for raw in self.ws:
            message = orjson.loads(raw)
            kind = message.get("type")
            if kind == "ping":
                await self.ws.send('{"type":"pong"}')
                continue
            if kind == "error" or (kind == "next" and "errors" in message["payload"]):
                self.errors.append(str(message)[:300])
            if kind != "next":
                continue
            if message["id"] == "1":
                self.done += 1
            else:
                self.answers += 1
            changed.set()

    async def requery(self, n: int) -> None:
        payload = {"query": self.query.replace(" @live", ""), "variables": self.variables}
        await self.ws.send(orjson.dumps({"id": f"q{n}", "type": "subscribe", "payload": payload}).decode())


class Crowd:
    """The connections of one server and the readers of their messages."""

    def __init__(self, conns: list[Conn]) -> None:
        self.conns = conns
        self.changed = asyncio.Event()
        self.readers = [asyncio.create_task(c.read(self.changed)) for c in conns]

    async def until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            self.changed.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                errors = [e for c in self.conns for e in c.errors][:2]
                raise RuntimeError(f"{what}: not within {timeout} s {errors}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)

    def errors(self) -> list[str]:
        return [e for c in self.conns for e in c.errors]

    async def close(self) -> None:
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*(asyncio.wait_for(c.ws.close(), 2) for c in self.conns), return_exceptions=True)


async def connect_all(server: Counted, specs: list[tuple[str, str, dict[str, Any]]]) -> Crowd:
    """One connection per (user, live document, variables), each subscribed; returns once every
    first result is in."""
    limit = asyncio.Semaphore(50)

    async def one(sub: str, query: str, variables: dict[str, Any]) -> Conn:
        async with limit:
            ws = await connect(
                server.server.ws_url, subprotocols=["graphql-transport-ws"], compression=None, open_timeout=60
            )  # type: ignore[list-item]
            init = {"type": "connection_init", "payload": {"authorization": f"Bearer {token(sub)}"}}
            await ws.send(orjson.dumps(init).decode())
            ack = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
            if ack.get("type") != "connection_ack":
                raise RuntimeError(f"expected connection_ack, got {ack}")
            payload = {"query": query, "variables": variables}
            await ws.send(orjson.dumps({"id": "1", "type": "subscribe", "payload": payload}).decode())
            return Conn(ws, query, variables)

    crowd = Crowd(list(await asyncio.gather(*(one(*s) for s in specs))))
    await crowd.until(lambda: all(c.done >= 1 for c in crowd.conns), 120, "first results")
    return crowd


async def idle(server: Counted, quiet: float = 0.05, poll: float = 0.01, timeout: float = 60) -> None:
    """Until the server's CPU time and SELECT counts stay still for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = (server.cpu(), server.selects()), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not go idle")
        await asyncio.sleep(poll)
        now = (server.cpu(), server.selects())
        if now != last:
            last, since = now, time.monotonic()


@dataclass
class Batch:
    cpu_ms: float  # per change
    selects: dict[str, float]  # per change, by table


async def measure(
    server: Counted,
    crowd: Crowd | None,
    changes: list[tuple[Callable[[], Awaitable[Any]], list[Conn]]],
    timeout: float,
) -> Batch:
    """Run ``changes`` one at a time (each: the mutation, and the connections that must get a
    patch); after each, wait for those patches and for the server to go idle."""
    await idle(server)
    cpu0, sel0 = server.cpu(), server.selects()
    for change, expect in changes:
        targets = [(c, c.done + 1) for c in expect]
        await change()
        if crowd is not None and targets:
            await crowd.until(lambda targets=targets: all(c.done >= t for c, t in targets), timeout, "patches")
        await idle(server)
    cpu, sel = server.cpu() - cpu0, server.selects()
    n = len(changes)
    return Batch(cpu / n * 1000, {t: (sel[t] - sel0[t]) / n for t in TABLES})


async def requery(server: Counted, crowd: Crowd, n: int, timeout: float) -> float:
    """Every connection runs its query once more, all at once: server CPU ms per query."""
    await idle(server)
    cpu0 = server.cpu()
    await asyncio.gather(*(c.requery(n) for c in crowd.conns))
    await crowd.until(lambda: all(c.answers >= n for c in crowd.conns), timeout, "requery answers")
    await idle(server)
    return (server.cpu() - cpu0) / len(crowd.conns) * 1000


@contextlib.contextmanager
def profiled(server: Counted | None) -> Iterator[None]:
    if server is None or server.profile is None:
        yield
        return
    os.kill(server.server.pid, signal.SIGUSR1)
    try:
        yield
    finally:
        os.kill(server.server.pid, signal.SIGUSR2)


def print_profile(server: Counted, top: int = 30) -> None:
    assert server.profile is not None
    deadline = time.monotonic() + 10
    while not server.profile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if not server.profile.exists():
        print("  ! no profile written")
        return
    print(f"\ncProfile of {server.profile.stem} (event loop thread), by own time:")
    stats = pstats.Stats(str(server.profile), stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)
    stats.print_callers(8)  # who calls the costliest eight


def med(batches: list[Batch]) -> Batch:
    return Batch(median([b.cpu_ms for b in batches]), {t: median([b.selects[t] for b in batches]) for t in TABLES})


def times(a: float, b: float) -> str:
    """``a / b`` as a ratio, or "-" when ``b`` is too small to divide by (the clock ticks at 10 ms)."""
    if b <= 0:
        return "-"
    r = a / b
    return f"{r:.1f}x" if r < 10 else f"{r:.0f}x"


def fmt_selects(s: dict[str, float]) -> str:
    return " ".join(f"{t} {round(v, 2):g}" for t, v in s.items() if round(v, 2)) or "none"


# -- case A: one relation level, 1,000 subscribers in 50 groups ----------------------------------


async def seed_a(server: Counted, args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    http = Http(server, "owner")
    try:
        projects = await in_batches(
            [f"createProject(input: {{name: {quoted(f'project {i}')}}})" for i in range(args.groups)], http
        )
        texts = [
            f"createTask(input: {{title: {quoted(f'task {t}')}, projectId: {quoted(p)}}})"
            for t in range(args.tasks)
            for p in projects
        ]
        ids = await in_batches(texts, http, concurrency=1)  # in order: the last of each project is its newest
        latest = dict(zip(projects, ids[-len(projects) :], strict=True))
        return projects, latest
    finally:
        await http.aclose()


async def case_a(args: argparse.Namespace, work: Path) -> None:
    modes = ("baseline", "plain", "relation")
    kinds = ("task update", "task create", "project rename")
    with contextlib.ExitStack() as stack:
        servers = {m: stack.enter_context(serving(work, f"a-{m}", args.profile and m == "relation")) for m in modes}
        print("  case A: seeding ...", file=sys.stderr, flush=True)
        seeded = dict(zip(modes, await asyncio.gather(*(seed_a(servers[m], args) for m in modes)), strict=True))
        crowds: dict[str, Crowd] = {}
        https = {m: Http(servers[m], "owner") for m in modes}
        try:
            for m in ("plain", "relation"):
                print(f"  case A: connecting {args.subscribers} subscribers ({m}) ...", file=sys.stderr, flush=True)
                projects = seeded[m][0]
                specs = [("reader", BOARD[m], {"p": projects[i % args.groups]}) for i in range(args.subscribers)]
                crowds[m] = await connect_all(servers[m], specs)
            results: dict[tuple[str, str], list[Batch]] = {}
            requeries: dict[str, list[float]] = {"plain": [], "relation": []}
            with profiled(servers["relation"] if args.profile else None):
                for r in range(args.rounds):
                    print(f"  case A: round {r + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
                    for kind in kinds:
                        for m in modes:
                            if kind == "project rename" and m == "plain":
                                continue  # nothing it shows changes
                            changes = plan_a(kind, m, r, args, seeded[m], https[m], crowds.get(m))
                            batch = await measure(servers[m], crowds.get(m), changes, args.step_timeout)
                            results.setdefault((kind, m), []).append(batch)
                    for m in ("plain", "relation"):
                        requeries[m].append(await requery(servers[m], crowds[m], r + 1, args.step_timeout))
            problems = [f"{m}: {e}" for m, c in crowds.items() for e in c.errors()[:3]]
            problems += [f"{m}: {line}" for m, s in servers.items() for line in s.server.log_problems()[:5]]
        finally:
            for crowd in crowds.values():
                await crowd.close()
            for http in https.values():
                await http.aclose()
        report_a(args, {k: med(v) for k, v in results.items()}, {m: median(v) for m, v in requeries.items()})
        for line in problems:
            print(f"  ! {line}")
        if args.profile:
            stack.close()  # stop the servers: the profile is written on SIGUSR2, read it now
            print_profile(servers["relation"])


def plan_a(
    kind: str,
    mode: str,
    r: int,
    args: argparse.Namespace,
    seeded: tuple[list[str], dict[str, str]],
    http: Http,
    crowd: Crowd | None,
) -> list[tuple[Callable[[], Awaitable[Any]], list[Conn]]]:
    projects, latest = seeded
    changes: list[tuple[Callable[[], Awaitable[Any]], list[Conn]]] = []
    for n in range(args.changes):
        g = (r * args.changes + n) % args.groups
        p = projects[g]
        members = [] if crowd is None else crowd.conns[g :: args.groups]
        tag = f"{kind} {r}.{n}"
        if kind == "task update":

            async def change(p: str = p, tag: str = tag) -> None:
                await http(UPDATE_TASK, id=latest[p], t=tag)

        elif kind == "task create":

            async def change(p: str = p, tag: str = tag) -> None:
                latest[p] = (await http(CREATE_TASK, p=p, t=tag))["createTask"]["id"]

        else:

            async def change(p: str = p, tag: str = tag) -> None:
                await http(RENAME_PROJECT, id=p, n=tag)

        changes.append((change, members))
    return changes


def report_a(args: argparse.Namespace, res: dict[tuple[str, str], Batch], q: dict[str, float]) -> None:
    per_group = args.subscribers // args.groups
    print(
        f"\nCase A: {args.subscribers} subscribers of `tasks(where: {{projectId: {{eq: $p}}}}, "
        f"orderBy: createdAt DESC, limit: 20)` in {args.groups} groups ({per_group} each), "
        f"{args.tasks} tasks per project; "
        f"{args.changes} changes of each kind per round, medians of {args.rounds} rounds"
    )
    print("server CPU ms per change (the mutation included):")
    print(
        f"{'change':<16}{'no subscriber':>14}{'no relation':>13}{'relation':>10}{'rel/no-rel':>12}"
        "   SELECTs per change (relation)"
    )
    for kind in ("task update", "task create", "project rename"):
        base = res[(kind, "baseline")].cpu_ms
        rel = res[(kind, "relation")]
        plain = res.get((kind, "plain"))
        ratio = f"{rel.cpu_ms / plain.cpu_ms:.2f}x" if plain else "-"
        extra = {t: rel.selects[t] - res[(kind, "baseline")].selects[t] for t in TABLES}
        print(
            f"{kind:<16}{base:>14.2f}{(plain.cpu_ms if plain else float('nan')):>13.2f}{rel.cpu_ms:>10.2f}{ratio:>12}"
            f"   {fmt_selects(extra)} (beyond the mutation's own)"
        )
    print("beyond the mutation (minus the no-subscriber server), against re-executing the subscribers' queries:")
    print(
        f"{'change':<16}{'no relation':>13}{'relation':>10}{'rel/no-rel':>12}"
        f"{'requery affected':>18}{'requery all':>13}{'all/rel':>9}"
    )
    for kind in ("task update", "task create", "project rename"):
        base = res[(kind, "baseline")].cpu_ms
        rel = res[(kind, "relation")].cpu_ms - base
        plain_b = res.get((kind, "plain"))
        plain = plain_b.cpu_ms - base if plain_b else float("nan")
        ratio = f"{rel / plain:.2f}x" if plain_b and plain > 0 else "-"
        affected, every = per_group * q["relation"], args.subscribers * q["relation"]
        print(f"{kind:<16}{plain:>13.2f}{rel:>10.2f}{ratio:>12}{affected:>18.1f}{every:>13.1f}{times(every, rel):>9}")
    print(
        f"one re-execution: {q['relation']:.2f} ms with the relation, {q['plain']:.2f} ms without "
        f"({args.subscribers} at once over the subscribers' connections); requery affected = the "
        f"{per_group} of the changed project (a record id invalidated), all = every subscriber (the list invalidated)"
    )


# -- case B: a membership rule, a room of 1,000 members ---------------------------------------------


@dataclass
class Room:
    room: str
    membership: dict[str, str]  # user -> its Membership id


def user(i: int) -> str:
    return f"u{i:04}"


async def seed_b(server: Counted, args: argparse.Namespace) -> Room:
    owner = Http(server, "owner")
    try:
        room = (await owner('mutation { createRoom(input: {name: "big"}) { id } }'))["createRoom"]["id"]
        users = [user(i) for i in range(args.members)]
        ids = await in_batches(
            [f"createMembership(input: {{roomId: {quoted(room)}, userId: {quoted(u)}}})" for u in users], owner
        )
        poster = Http(server, user(args.members - 1))
        try:
            for i in range(40):
                await poster(POST, r=room, b=f"message {i}")
        finally:
            await poster.aclose()
        return Room(room, dict(zip(users, ids, strict=True)))
    finally:
        await owner.aclose()


async def case_b(args: argparse.Namespace, work: Path) -> None:
    modes = ("baseline", "live")
    kinds = ("remove other", "add other", "remove subscriber", "add subscriber", "post")
    with contextlib.ExitStack() as stack:
        servers = {m: stack.enter_context(serving(work, f"b-{m}", args.profile and m == "live")) for m in modes}
        print("  case B: seeding ...", file=sys.stderr, flush=True)
        rooms = dict(zip(modes, await asyncio.gather(*(seed_b(servers[m], args) for m in modes)), strict=True))
        owners = {m: Http(servers[m], "owner") for m in modes}
        posters = {m: Http(servers[m], user(args.members - 1)) for m in modes}
        crowd: Crowd | None = None
        try:
            print(f"  case B: connecting {args.users} members ...", file=sys.stderr, flush=True)
            specs = [(user(i), ROOM, {"r": rooms["live"].room}) for i in range(args.users)]
            crowd = await connect_all(servers["live"], specs)
            results: dict[tuple[str, str], list[Batch]] = {}
            requeries: list[float] = []
            with profiled(servers["live"] if args.profile else None):
                for r in range(args.rounds):
                    print(f"  case B: round {r + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
                    for kind in kinds:
                        for m in modes:
                            room = rooms[m]
                            changes = plan_b(kind, r, args, room, owners[m], posters[m], crowd if m == "live" else None)
                            batch = await measure(
                                servers[m], crowd if m == "live" else None, changes, args.step_timeout
                            )
                            results.setdefault((kind, m), []).append(batch)
                    requeries.append(await requery(servers["live"], crowd, r + 1, args.step_timeout))
            problems = [f"live: {e}" for e in crowd.errors()[:3]]
            problems += [f"{m}: {line}" for m, s in servers.items() for line in s.server.log_problems()[:5]]
        finally:
            if crowd is not None:
                await crowd.close()
            for http in (*owners.values(), *posters.values()):
                await http.aclose()
        report_b(args, {k: med(v) for k, v in results.items()}, median(requeries))
        for line in problems:
            print(f"  ! {line}")
        if args.profile:
            stack.close()
            print_profile(servers["live"])


def plan_b(
    kind: str, r: int, args: argparse.Namespace, room: Room, owner: Http, poster: Http, crowd: Crowd | None
) -> list[tuple[Callable[[], Awaitable[Any]], list[Conn]]]:
    changes: list[tuple[Callable[[], Awaitable[Any]], list[Conn]]] = []
    for n in range(args.member_changes):
        i = (r * args.member_changes + n) % args.users
        if kind.endswith("other"):
            u, expect = user(args.users + i), []  # a member with no live query
        else:
            u, expect = user(i), [] if crowd is None else [crowd.conns[i]]
        if kind.startswith("remove"):

            async def change(u: str = u) -> None:
                await owner(REMOVE_MEMBER, id=room.membership.pop(u))

        elif kind.startswith("add"):

            async def change(u: str = u) -> None:
                room.membership[u] = (await owner(ADD_MEMBER, r=room.room, u=u))["createMembership"]["id"]

        else:
            expect = [] if crowd is None else crowd.conns

            async def change(u: str = f"{r}.{n}") -> None:
                await poster(POST, r=room.room, b=f"post {u}")

        changes.append((change, expect))
    return changes


def report_b(args: argparse.Namespace, res: dict[tuple[str, str], Batch], q: float) -> None:
    print(
        f"\nCase B: a room of {args.members} members, Message.read through room.members (some userId = $sub); "
        f"{args.users} members each hold `messages(where: {{roomId: {{eq: $r}}}}, orderBy: createdAt DESC, limit: 20)` "
        f"live ({args.users} groups); {args.member_changes} changes of each kind per round, "
        f"medians of {args.rounds} rounds"
    )
    print(
        f"{'change':<19}{'no subscriber':>14}{'live':>9}{'beyond':>9}{'refills':>9}{'requery all':>13}{'all/live':>10}"
        "   SELECTs beyond the mutation's own"
    )
    every = args.users * q
    for kind in ("remove other", "add other", "remove subscriber", "add subscriber", "post"):
        base, live = res[(kind, "baseline")], res[(kind, "live")]
        extra = {t: live.selects[t] - base.selects[t] for t in TABLES}
        beyond = live.cpu_ms - base.cpu_ms
        print(
            f"{kind:<19}{base.cpu_ms:>14.2f}{live.cpu_ms:>9.2f}{beyond:>9.2f}{extra['messages']:>9g}{every:>13.1f}"
            f"{times(every, beyond):>10}   {fmt_selects(extra)}"
        )
    print(
        f"server CPU ms per change; beyond = minus the no-subscriber server; refills = SELECTs of messages per change; "
        f"one re-execution {q:.2f} ms ({args.users} at once), requery all = {args.users} of them "
        f"(a membership change names no subscriber's result: every one runs again)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="a,b")
    parser.add_argument("--subscribers", type=int, default=1000, help="case A: live subscribers")
    parser.add_argument("--groups", type=int, default=50, help="case A: projects, one group each")
    parser.add_argument("--tasks", type=int, default=30, help="case A: tasks per project before")
    parser.add_argument("--changes", type=int, default=30, help="case A: changes of each kind per round")
    parser.add_argument("--members", type=int, default=1000, help="case B: members of the room")
    parser.add_argument("--users", type=int, default=200, help="case B: members holding a live query")
    parser.add_argument("--member-changes", type=int, default=12, help="case B: changes of each kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step-timeout", type=float, default=60.0)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="the whole run stops after this long")
    parser.add_argument("--profile", action="store_true", help="cProfile the relation (A) / live (B) server")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    apply_quick(
        parser, args, {"subscribers": 200, "groups": 10, "changes": 5, "members": 300, "users": 40, "rounds": 1}
    )
    started = time.monotonic()
    async with asyncio.timeout(args.max_seconds):
        with tempfile.TemporaryDirectory(prefix="tidings-bench-relations-live-") as tmp:
            for case, run in (("a", case_a), ("b", case_b)):
                if case in args.cases.split(","):
                    began = time.monotonic()
                    await run(args, Path(tmp))
                    print(f"  case {case.upper()}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    print(f"\n({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    cli(main)
