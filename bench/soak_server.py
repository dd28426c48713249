"""`tidings` with tracemalloc on, writing a snapshot on SIGUSR1 (for bench/soak.py).

    python bench/soak_server.py FOLDER serve --port 8000 ...

Snapshot n goes to FOLDER/snapshot-<n>.pickle, then FOLDER/snapshot-<n>.done marks it complete.
The handler runs on the main thread between bytecodes, which is the event loop's thread: the
snapshot is of a quiescent heap, and the pause it costs shows in the soak's latencies, once.
"""

from __future__ import annotations

import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType

from tidings.cli import main

tracemalloc.start(1)
folder = Path(sys.argv[1])
taken = 0


def dump(signum: int, frame: FrameType | None) -> None:
    global taken
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    snap.dump(str(folder / f"snapshot-{taken}.pickle"))
    (folder / f"snapshot-{taken}.done").touch()
    taken += 1


signal.signal(signal.SIGUSR1, dump)
sys.exit(main(sys.argv[2:]))
