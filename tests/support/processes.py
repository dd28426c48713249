"""Real processes for tests: a throwaway redis-server and PostgreSQL, and ``tidings serve`` spawned and stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from tests.support.backends import unavailable
from tests.support.servers import free_port

TIDINGS = str(Path(sys.executable).with_name("tidings"))


# -- redis-server --------------------------------------------------------------------


class RedisProcess:
    """A throwaway redis-server that a test may kill, restart, pause and resume."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tmp_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(args, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.command(b"PING") != b"+PONG":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def command(self, *words: bytes) -> bytes | None:
        """One command over a fresh connection; its first reply line, or None if unreachable."""
        request = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(request)
                return s.recv(1024).split(b"\r\n", 1)[0]
        except OSError:
            return None

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.kill()


@contextlib.contextmanager
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    """A started :class:`RedisProcess`, stopped on exit; skips (fails under CI) without redis-server."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server not installed")
    redis = RedisProcess(tmp_path)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()


# -- PostgreSQL ----------------------------------------------------------------------


def _postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian's layout, as scripts/services reads it)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    return found[-1] if found else None


class PostgresProcess:
    """A throwaway PostgreSQL cluster of one test's own, on a free loopback port, that the test may
    stop, start and restart (``pg_ctl``): an outage of the database, not of a shared server.

    As root (CI) the cluster belongs to the postgres user, as scripts/services makes it: its
    directory is made outside pytest's temporary tree, which that user cannot enter.
    """

    def __init__(self, bin_dir: Path, tmp_path: Path) -> None:
        self.bin = bin_dir
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.as_root = os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="tidings-pg-")) if self.as_root else tmp_path / "pg"
        self.data = self.dir / "data"
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.as_root:
            command = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(map(shlex.quote, command))]
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{args[0]} {args[1]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}"
            )

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _ctl(self, action: str, *args: str) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k '' -c fsync=off"
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o", options, *args)

    def start(self) -> None:
        self._ctl("start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-m", mode)

    def restart(self, mode: str = "fast") -> None:
        self._ctl("restart", "-m", mode)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w")
        if self.as_root:
            shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres_process(tmp_path: Path) -> Iterator[PostgresProcess]:
    """A started :class:`PostgresProcess`, removed on exit; skips (fails under CI) without PostgreSQL."""
    bin_dir = _postgres_bin()
    if bin_dir is None or not (bin_dir / "pg_ctl").exists():
        unavailable("PostgreSQL not installed (no /usr/lib/postgresql/*/bin/pg_ctl)")
    pg = PostgresProcess(bin_dir, tmp_path)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.close()


# -- tidings serve -------------------------------------------------------------------


def serve_command(port: int, *args: str) -> list[str]:
    """The ``tidings serve`` command line on ``port``."""
    return [TIDINGS, "serve", "--port", str(port), *args]


async def spawn_serve(port: int, *args: str, cwd: Path | None = None, **streams: Any) -> asyncio.subprocess.Process:
    """``tidings serve`` as an asyncio subprocess, unbuffered; ``streams``: stdout and stderr (default DEVNULL)."""
    return await asyncio.create_subprocess_exec(
        *serve_command(port, *args),
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=streams.get("stdout", asyncio.subprocess.DEVNULL),
        stderr=streams.get("stderr", asyncio.subprocess.DEVNULL),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def stop_serve(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM if it still runs, then SIGKILL if it has not exited within 15 s."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


class ServeProcess:
    """A ``tidings serve`` started with :func:`popen_serve`: its process, port and log (stdout and stderr)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/graphql"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def exit_status(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"tidings serve still running {timeout} s after the signal")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def popen_serve(log: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    """``tidings serve`` on ``port`` writing stdout and stderr to ``log``."""
    command = serve_command(port, *args)
    with log.open("wb") as out:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


class Process(ServeProcess):
    def problems(self) -> list[str]:
        return [line for line in self.text().splitlines() if "ERROR" in line or "Traceback" in line]

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, db: Path | str, *flags: str, port: int | None = None) -> AsyncIterator[Process]:
    """``tidings serve --db sqlite:///<db> --log-level info`` until it listens; killed on exit.

    ``db``: a SQLite file, or a database URL.
    """
    port = port or free_port()
    log = tmp_path / f"serve-{port}.log"
    url = db if isinstance(db, str) else f"sqlite:///{db}"
    proc = popen_serve(log, port, "--db", url, "--log-level", "info", *flags)
    process = Process(proc, port, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, process.text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            assert time.monotonic() < deadline, "tidings serve did not listen"
            await asyncio.sleep(0.05)
        yield process
    finally:
        process.kill()
