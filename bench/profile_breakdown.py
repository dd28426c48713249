"""Share of samples per layer in a py-spy raw profile (``py-spy record -f raw``).

Each sample is charged to the innermost frame that belongs to a known layer, so a
json encoder called by SQLAlchemy counts as json and SQLAlchemy called by tidings
counts as SQLAlchemy. Samples of threads other than the event loop's are "writer
thread" (tidings runs SQLite writes on one), split again by layer.

    .venv/bin/py-spy record -r 250 -f raw -o /tmp/w.txt --pid <tidings pid>
    .venv/bin/python bench/profile_breakdown.py /tmp/w.txt [/tmp/other.txt ...]
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

# (layer, substrings of a frame's "function (file:line)"), innermost match wins.
LAYERS = (
    ("json (std)", ("json/encoder.py", "json/decoder.py", "json/__init__.py")),
    ("uuid", ("uuid.py",)),
    ("graphql-core parse", ("graphql/language/",)),
    ("graphql-core validate", ("graphql/validation/",)),
    ("graphql-core execute", ("graphql/execution/", "graphql/pyutils/", "graphql/type/")),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("sqlite3 / aiosqlite / asyncpg", ("sqlite3/", "aiosqlite/", "asyncpg/")),
    ("Strawberry", ("strawberry/",)),
    ("tidings", ("tidings/",)),
    ("Starlette", ("starlette/",)),
    ("uvicorn + httptools", ("uvicorn/", "httptools/")),
    ("asyncio / uvloop", ("asyncio/", "uvloop/", "selectors.py")),
    ("threads (hand-off)", ("concurrent/futures/", "threading.py", "queue.py")),
)


# Innermost frames where a thread waits (blocked on a queue or lock): py-spy samples them
# as active here, so they are dropped, and shares are of the remaining samples.
IDLE = ("_worker (concurrent/futures/thread.py:81)", "_connection_worker_thread (aiosqlite/core.py:59)")


def layer_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, marks in LAYERS:
            if any(m in frame for m in marks):
                return name
    return "other"


def breakdown(path: Path) -> tuple[Counter[str], int]:
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1] in IDLE:
            continue
        thread = "loop" if any("Runner.run" in f or "asyncio_run" in f for f in frames) else "writer thread"
        key = layer_of(frames) if thread == "loop" else f"writer thread: {layer_of(frames)}"
        counts[key] += int(n)
        total += int(n)
    return counts, total


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]]
    results = [breakdown(p) for p in paths]
    keys = sorted({k for c, _ in results for k in c}, key=lambda k: -sum(c[k] / max(t, 1) for c, t in results))
    print("| layer | " + " | ".join(p.name for p in paths) + " |")
    print("|---|" + "---|" * len(paths))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{100 * c[k] / max(t, 1):.1f}%" for c, t in results) + " |")


if __name__ == "__main__":
    main()
