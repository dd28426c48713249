"""The request path: mutations and queries per server, side by side in one run.

Starts every variant at once, each in its own process on a free 127.0.0.1 port:

- ``tidings``: ``tidings serve`` (demo collections; every rate limit off, memory broker);
- ``naive``: Strawberry + SQLAlchemy ORM the way their docs show (``write_servers.naive_app``);
- ``raw``: Starlette + one SQLAlchemy Core INSERT on the async engine (``write_servers.raw_app``);
- ``raw-thread``: the same with the INSERT on one writer thread (SQLite only).

and drives each with the same client (raw asyncio HTTP/1.1, keep-alive connections):
``mutation($t: String!) { createTask(input: {title: $t}) { id title } }`` at each
``--concurrency`` for ``--seconds``, then the reads ``tasks(where: {status: {eq: $s}},
orderBy: [{priority: DESC}], limit: 50)`` and ``task(id)`` against a raw endpoint
running the same SELECT on tidings' database and serializing with orjson. Rounds are
interleaved (``--repeat``, default 3) and medians printed. On PostgreSQL
(``--pg URL``, e.g. TIDINGS_TEST_PG_URL) each variant gets a fresh database, dropped
afterwards, and the CPU of its PostgreSQL backends is read from /proc too.

    .venv/bin/python bench/write_path.py                     # SQLite, then PostgreSQL if TIDINGS_TEST_PG_URL is set
    .venv/bin/python bench/write_path.py --quick
    .venv/bin/python bench/write_path.py --dbs sqlite --profile 'py-spy record -o /tmp/w.svg --pid {pid}'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from harness import BENCH, ROOT, Server, apply_quick, cli, cpu_seconds_of, free_port, median, pct, stop_process

from tidings.store import normalize_url

CREATE = "mutation($t: String!) { createTask(input: {title: $t}) { id title } }"
LIST = (
    "query($s: String!) { tasks(where: {status: {eq: $s}}, orderBy: [{priority: DESC}], limit: 50) "
    "{ id title status priority createdAt } }"
)
GET = "query($id: ID!) { task(id: $id) { id title status priority createdAt } }"
APPS = {
    "naive": "write_servers:naive_app",
    "raw": "write_servers:raw_app",
    "raw-thread": "write_servers:raw_thread_app",
}


def plain_pg(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


@dataclass
class Variant:
    kind: str
    server: Server
    db: str  # the database it writes (sqlite:///... or postgresql://...)
    pg_db: str | None = None  # its PostgreSQL database's name, for the backends' CPU

    def paths(self) -> dict[str, str]:
        if self.kind in ("tidings", "baseline", "naive"):
            return {"create": "/graphql", "list": "/graphql", "get": "/graphql"}
        return {"create": "/create", "list": "/list", "get": "/get"}


def pg_backend_cpu(database: str | None) -> float:
    """CPU seconds of the PostgreSQL backends connected to ``database`` (their titles name it)."""
    if database is None:
        return 0.0
    total = 0.0
    needle = f" {database} ".encode()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes()
            if cmdline.startswith(b"postgres: ") and needle in cmdline:
                total += cpu_seconds_of(int(entry.name))
        except (OSError, ValueError):
            continue
    return total


@contextlib.contextmanager
def start(
    kind: str, workdir: Path, db: str, read_db: str, baseline: str | None = None, start_timeout: float = 30.0
) -> Iterator[Server]:
    """``kind`` "baseline" is tidings run from the source tree ``baseline`` (on PYTHONPATH)."""
    port = free_port()
    log = workdir / f"{kind}-{port}.log"
    common = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    env = dict(os.environ)
    if kind == "baseline" and baseline:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [baseline, env.get("PYTHONPATH")]))
    if kind in ("tidings", "baseline"):
        script = Path(sys.executable).with_name("tidings")
        launcher = [str(script)] if script.exists() else [sys.executable, "-m", "tidings.cli"]
        limits = ["--rate-mutations", "0", "--rate-queries", "0", "--rate-subscribe", "0", "--rate-events", "0"]
        cmd = [*launcher, "serve", *common, "--db", db, "--broker", "memory://", "--no-graphiql", *limits]
    else:
        env["BENCH_DB"] = normalize_url(db)
        env["BENCH_READ_DB"] = normalize_url(read_db)
        cmd = [sys.executable, "-m", "uvicorn", APPS[kind], "--app-dir", str(BENCH), *common]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    server = Server(kind, proc, port, log)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{kind} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError):
                import socket

                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not listen within {start_timeout:.0f} s")
            time.sleep(0.05)
        yield server
    finally:
        stop_process(proc)


# -- the client --------------------------------------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self.reader, self.writer, self.port = reader, writer, port

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, port)

    async def post(self, path: str, body: bytes) -> bytes:
        head = (
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = headers[9:12]
        length = -1
        for line in headers.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length < 0:
            raise RuntimeError(f"no content-length: {headers!r}")
        data = await self.reader.readexactly(length)
        if status != b"200" or b'"errors"' in data:
            raise RuntimeError(f"{status.decode()} {data[:300]!r}")
        return data

    def close(self) -> None:
        self.writer.close()


def request_body(op: str, n: int, task_id: str) -> bytes:
    if op == "create":
        return orjson.dumps({"query": CREATE, "variables": {"t": f"task {n}"}})
    if op == "list":
        return orjson.dumps({"query": LIST, "variables": {"s": "pending"}})
    return orjson.dumps({"query": GET, "variables": {"id": task_id}})


@dataclass
class Result:
    ops: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    db_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    concurrency: int = 1

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu / self.ops if self.ops else float("nan")

    @property
    def db_ms(self) -> float:
        return 1000 * self.db_cpu / self.ops if self.ops else float("nan")


async def measure(
    variant: Variant, op: str, concurrency: int, seconds: float, warm: float, task_id: str, pg_db: str | None
) -> Result:
    """``pg_db``: the database whose backends' CPU counts (steps run one at a time, so it is this step's)."""
    path = variant.paths()[op]
    counter = itertools.count()
    conns = [await Conn.open(variant.server.port) for _ in range(concurrency)]
    result = Result(concurrency=concurrency)
    try:

        async def loop(conn: Conn, until: float, record: bool) -> None:
            while time.monotonic() < until:
                body = request_body(op, next(counter), task_id)
                t0 = time.perf_counter()
                await conn.post(path, body)
                if record:
                    result.latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(loop(c, time.monotonic() + warm, False) for c in conns))
        cpu0, db0, t0 = variant.server.cpu_seconds(), pg_backend_cpu(pg_db), time.perf_counter()
        until = time.monotonic() + seconds
        await asyncio.wait_for(asyncio.gather(*(loop(c, until, True) for c in conns)), seconds + 60)
        result.seconds = time.perf_counter() - t0
        result.cpu = variant.server.cpu_seconds() - cpu0
        result.db_cpu = pg_backend_cpu(pg_db) - db0
        result.ops = len(result.latencies)
    finally:
        for c in conns:
            c.close()
    return result


# -- the run -----------------------------------------------------------------------------------


@contextlib.contextmanager
def pg_databases(url: str, names: list[str]) -> Iterator[dict[str, str]]:
    """Fresh databases on the server of ``url``, dropped afterwards."""

    def run(sql: str) -> None:
        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(plain_pg(url))
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(go()) if not _in_loop() else _thread_run(go)

    tag = secrets.token_hex(3)
    dbs = {n: f"bench_{n.replace('-', '_')}_{tag}" for n in names}
    base = plain_pg(url).rsplit("/", 1)[0]
    try:
        for db in dbs.values():
            run(f"CREATE DATABASE {db}")
        yield {n: f"{base}/{db}" for n, db in dbs.items()}
    finally:
        for db in dbs.values():
            with contextlib.suppress(Exception):
                run(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _in_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _thread_run(coro_fn: Any) -> None:
    import threading

    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro_fn())
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    t = threading.Thread(target=target)
    t.start()
    t.join(30)
    if errors:
        raise errors[0]


def fmt(r: list[Result], pg: bool) -> str:
    cpu = median([x.cpu_ms for x in r])
    text = f"{cpu:.2f} ms"
    if pg and len(r[0].latencies) and r[0].ops and r[0].concurrency == 1:
        text += f" (+{median([x.db_ms for x in r]):.2f} pg)"
    p50 = median([pct(x.latencies, 50) * 1000 for x in r])
    p99 = median([pct(x.latencies, 99) * 1000 for x in r])
    return f"{text}, {median([x.rate for x in r]):,.0f}/s, p50 {p50:.1f} p99 {p99:.1f}"


async def run_db(args: argparse.Namespace, dbname: str, workdir: Path) -> None:
    pg = dbname == "postgresql"
    kinds = [k for k in args.only.split(",") if not (pg and k == "raw-thread")]
    with contextlib.ExitStack() as stack:
        if pg:
            urls = stack.enter_context(pg_databases(args.pg, kinds))
        else:
            urls = {k: f"sqlite:///{workdir / f'{k}-{secrets.token_hex(3)}.db'}" for k in kinds}
        read_db = urls.get("tidings", next(iter(urls.values())))
        variants = []
        for k in kinds:
            server = stack.enter_context(start(k, workdir, urls[k], read_db, args.baseline))
            name = urls[k].rsplit("/", 1)[1] if pg else None
            variants.append(Variant(k, server, urls[k], name))
        tid = next((v for v in variants if v.kind == "tidings"), None)
        results: dict[tuple[str, str, int], list[Result]] = {}
        prof = None
        if args.profile and tid is not None:
            prof = subprocess.Popen(args.profile.format(pid=tid.server.pid).split(), stdin=subprocess.DEVNULL)
            time.sleep(0.5)
        try:
            for rnd in range(args.repeat if "create" in args.ops else 0):
                for c in args.concurrency:
                    for v in variants:
                        r = await measure(v, "create", c, args.seconds, args.warm, "", v.pg_db)
                        results.setdefault((v.kind, "create", c), []).append(r)
                        print(f"  [{dbname} round {rnd + 1}] {v.kind:10} create c={c:<3} {fmt([r], pg)}", flush=True)
            if tid is not None and {"list", "get"} & set(args.ops):
                readers = [v for v in variants if v.kind in ("tidings", "baseline", "raw")]
                ids: dict[str, str] = {}  # a task of each tidings server's own database; raw reads tidings'
                for v in readers:
                    if v.kind != "raw":
                        conn = await Conn.open(v.server.port)
                        created = orjson.loads(await conn.post("/graphql", request_body("create", -1, "")))
                        conn.close()
                        ids[v.kind] = created["data"]["createTask"]["id"]
                for rnd in range(args.repeat):
                    for op in [o for o in ("list", "get") if o in args.ops]:
                        for c in args.read_concurrency:
                            for v in readers:
                                own = v.kind == "baseline"
                                task_id = ids["baseline" if own else "tidings"]
                                db = v.pg_db if own else tid.pg_db
                                r = await measure(v, op, c, args.seconds, args.warm, task_id, db)
                                results.setdefault((v.kind, op, c), []).append(r)
                                print(f"  [{dbname} round {rnd + 1}] {v.kind:10} {op:6} c={c:<3} {fmt([r], pg)}")
        finally:
            if prof is not None:
                with contextlib.suppress(Exception):
                    prof.send_signal(2)
                    prof.wait(60)
        for v in variants:
            for line in v.server.log_problems():
                print(f"  ! {v.kind} log: {line}")
    print_table(dbname, kinds, results, args, pg)


def print_table(dbname: str, kinds: list[str], results: dict[Any, list[Result]], args: Any, pg: bool) -> None:
    print(f"\n{dbname}: server CPU per request (median of {args.repeat}), requests/s, p50/p99 ms")
    if pg:
        print("(+x pg: CPU of the variant's PostgreSQL backends, at c=1 only: beyond its pool a client's")
        print(" extra connections come and go, and an exited backend's CPU cannot be read)")
    print("| op | c | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for op in ("create", "list", "get"):
        for c in args.concurrency if op == "create" else args.read_concurrency:
            cells = [fmt(results[(k, op, c)], pg) if (k, op, c) in results else "" for k in kinds]
            if any(cells):
                print(f"| {op} | {c} | " + " | ".join(cells) + " |")
    print("\nratios (tidings / other, medians):")

    def med(k: str, op: str, c: int, what: str) -> float:
        rs = results.get((k, op, c))
        if not rs:
            return float("nan")
        if what == "cpu":
            return median([x.cpu_ms + (x.db_ms if pg and c == 1 else 0.0) for x in rs])
        return median([x.rate for x in rs])

    for op in ("create", "list", "get"):
        for c in args.concurrency if op == "create" else args.read_concurrency:
            for other in kinds[1:]:
                if (other, op, c) not in results or ("tidings", op, c) not in results:
                    continue
                cpu = med("tidings", op, c, "cpu") / med(other, op, c, "cpu")
                rate = med("tidings", op, c, "rate") / med(other, op, c, "rate")
                label = "CPU incl. PostgreSQL" if pg and c == 1 else "CPU"
                print(f"  {op:6} c={c:<3} vs {other:10} {label} x{cpu:.2f}  rate x{rate:.2f}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dbs", default="sqlite,postgresql", help="sqlite and/or postgresql")
    parser.add_argument("--pg", default=os.environ.get("TIDINGS_TEST_PG_URL"), help="PostgreSQL server URL")
    parser.add_argument("--only", default="tidings,naive,raw,raw-thread")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--read-concurrency", default="1")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per step")
    parser.add_argument("--warm", type=float, default=0.5, help="unmeasured seconds before each step")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-reads", action="store_true", help="the same as --ops create")
    parser.add_argument("--ops", default="create,list,get", help="which of create, list and get to measure")
    parser.add_argument("--profile", default=None, help="command run against tidings' pid during the run")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--baseline",
        default=None,
        help="also run tidings from this source tree as 'baseline' (e.g. a `git worktree` of an older commit)",
    )
    args = parser.parse_args()
    apply_quick(parser, args, {"seconds": 1.0, "repeat": 1, "warm": 0.2})
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    args.read_concurrency = [int(x) for x in args.read_concurrency.split(",")]
    args.ops = ["create"] if args.no_reads else args.ops.split(",")
    if "tidings" in args.only.split(","):
        args.only = ",".join(["tidings", *[k for k in args.only.split(",") if k != "tidings"]])
    if args.baseline:
        kinds = args.only.split(",")
        args.only = ",".join([*kinds[:1], "baseline", *kinds[1:]])
    with tempfile.TemporaryDirectory(prefix="tidings-write-") as tmp:
        for dbname in args.dbs.split(","):
            if dbname == "postgresql" and not args.pg:
                print("postgresql: skipped (no --pg or TIDINGS_TEST_PG_URL)")
                continue
            await run_db(args, dbname, Path(tmp))


if __name__ == "__main__":
    cli(main, "servers")
