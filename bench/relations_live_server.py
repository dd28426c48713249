"""`tidings serve` that counts the SELECTs it runs, for bench/relations_live.py.

    python bench/relations_live_server.py serve --collections relations_live_model:COLLECTIONS ...

Every SELECT any engine of the process runs (the reading threads' and the writer's) is counted
by the first table it reads from, in a small shared file (``BENCH_SELECTS``: one 8-byte counter
per name of ``TABLES``, the last for any other table) that the bench reads while the server runs.
With ``BENCH_PROFILE`` set to a path, SIGUSR1 starts cProfile on the event loop's thread and
SIGUSR2 stops it and writes its stats there (``python -m pstats`` reads them).
"""

from __future__ import annotations

import cProfile
import mmap
import os
import re
import signal
import struct
import sys
import threading
from typing import Any

import sqlalchemy as sa

TABLES = ("tasks", "projects", "rooms", "memberships", "messages", "other")
SLOT = struct.Struct("<q")
FIRST_TABLE = re.compile(r'\bFROM\s+"?(\w+)', re.IGNORECASE)


def counters(path: str) -> mmap.mmap:
    with open(path, "r+b") as f:
        return mmap.mmap(f.fileno(), SLOT.size * len(TABLES))


def read_counts(path: str) -> dict[str, int]:
    """The counts so far, by table (for the bench, in its own process)."""
    with open(path, "rb") as f:
        data = f.read()
    return {name: SLOT.unpack_from(data, i * SLOT.size)[0] for i, name in enumerate(TABLES)}


def install_counter(path: str) -> None:
    shared = counters(path)
    lock = threading.Lock()
    slots = {name: i * SLOT.size for i, name in enumerate(TABLES)}

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip()[:6].upper() != "SELECT":
            return
        found = FIRST_TABLE.search(statement)
        offset = slots.get(found.group(1) if found else "other", slots["other"])
        with lock:
            SLOT.pack_into(shared, offset, SLOT.unpack_from(shared, offset)[0] + 1)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)


def install_profiler(path: str) -> None:
    profile = cProfile.Profile()

    def start(signum: int, frame: object) -> None:
        profile.enable()

    def stop(signum: int, frame: object) -> None:
        profile.disable()
        profile.dump_stats(path)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


if __name__ == "__main__":
    if os.environ.get("BENCH_SELECTS"):
        install_counter(os.environ["BENCH_SELECTS"])
    if os.environ.get("BENCH_PROFILE"):
        install_profiler(os.environ["BENCH_PROFILE"])
    from tidings.cli import main

    sys.exit(main(sys.argv[1:]))
