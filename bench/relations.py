"""The nested read, tidings against the floor: server CPU per request, side by side in one run.

``query { tasks(limit: 50) { title project { name tasks(orderBy: [{createdAt: DESC}], limit: 10)
{ title project { name } } } } }`` on ``tidings serve`` (bench/relations_model.py: projects and
their tasks, SQLite) and on bench/relations_raw.py (Starlette running the same three SELECTs by
hand on the same file, orjson). Each round sends ``--requests`` at ``--concurrency`` to each
server in turn; the servers' CPU time (from /proc) per request is compared, medians of
``--repeat`` rounds. Target: tidings within 2x of the floor.

    .venv/bin/python bench/relations.py
    .venv/bin/python bench/relations.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from harness import BENCH, ROOT, apply_quick, cli, cpu_seconds_of, free_port, median, stop_process

NESTED = (
    "query($n: Int) { tasks(limit: $n) { title project { name "
    "tasks(orderBy: [{createdAt: DESC}], limit: 10) { title project { name } } } } }"
)


def start(cmd: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not start: {log.read_text(errors='replace')[-2000:]}") from None
            time.sleep(0.1)


async def drive(url: str, requests: int, concurrency: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        queue = iter(range(requests))

        async def worker() -> None:
            for _ in queue:
                response = await client.post("/graphql", json={"query": NESTED, "variables": {"n": 50}})
                body = response.json()
                assert "errors" not in body and len(body["data"]["tasks"]) == 50, body

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def seed(url: str, projects: int, tasks: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        ids = []
        for i in range(projects):
            r = await client.post(
                "/graphql", json={"query": f'mutation {{ createProject(input: {{name: "p{i}"}}) {{ id }} }}'}
            )
            ids.append(r.json()["data"]["createProject"]["id"])
        create = "mutation($t: String!, $p: ID) { createTask(input: {title: $t, projectId: $p}) { id } }"
        for i in range(tasks):
            await client.post("/graphql", json={"query": create, "variables": {"t": f"t{i}", "p": ids[i % projects]}})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer requests and rounds")
    args = parser.parse_args()
    apply_quick(parser, args, {"requests": 100, "repeat": 2})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        db = work / "relations.db"
        env = {**os.environ, "PYTHONPATH": str(BENCH), "BENCH_DB": str(db)}
        tport, rport = free_port(), free_port()
        script = Path(sys.executable).with_name("tidings")
        launcher = [str(script)] if script.exists() else [sys.executable, "-m", "tidings.cli"]
        tidings = start(
            [*launcher, "serve", "--host", "127.0.0.1", "--port", str(tport), "--log-level", "warning",
             "--db", f"sqlite:///{db}", "--collections", "relations_model:COLLECTIONS", "--no-graphiql",
             "--rate-mutations", "0", "--rate-queries", "0"],
            env, tport, work / "tidings.log",
        )  # fmt: skip
        raw = None
        try:
            await seed(f"http://127.0.0.1:{tport}", 20, 400)
            raw = start(
                [sys.executable, "-m", "uvicorn", "relations_raw:app", "--app-dir", str(BENCH), "--host", "127.0.0.1",
                 "--port", str(rport), "--log-level", "warning"],
                env, rport, work / "raw.log",
            )  # fmt: skip
            per: dict[str, list[float]] = {"tidings": [], "raw": []}
            for _ in range(args.repeat):
                for name, proc, port in (("tidings", tidings, tport), ("raw", raw, rport)):
                    await drive(f"http://127.0.0.1:{port}", 20, args.concurrency)  # warm
                    before, started = cpu_seconds_of(proc.pid), time.monotonic()
                    await drive(f"http://127.0.0.1:{port}", args.requests, args.concurrency)
                    cpu = cpu_seconds_of(proc.pid) - before
                    per[name].append(cpu / args.requests * 1000)
                    print(f"  {name:8} {args.requests} requests in {time.monotonic() - started:.2f} s, "
                          f"server CPU {cpu:.2f} s")  # fmt: skip
            t, r = median(per["tidings"]), median(per["raw"])
            print("nested read (50 tasks, their projects, 10 latest tasks each), server CPU per request:")
            print(f"  tidings {t:.2f} ms, raw Starlette + 3 SELECTs + orjson {r:.2f} ms: x{t / r:.2f} (target <= 2)")
        finally:
            stop_process(tidings)
            if raw is not None:
                stop_process(raw)


if __name__ == "__main__":
    cli(main)
