"""``tidings serve --workers N``: N server processes on one listening socket.

The parent binds the port once and starts N workers (spawned, not forked: each
imports tidings afresh). Each worker is a whole server (its own dispatcher,
connections and send queues) on the shared socket; the kernel hands each new
connection to one of them. They share the database and the broker: a mutation
on one worker rings the doorbell every worker's dispatcher hears, which is why
the in-memory broker is refused here.

The parent only supervises: SIGTERM or Ctrl-C is passed on as SIGTERM, each worker
drains its connections (``tidings.server.Server``) and exits 0, and so does the
parent. A worker that dies (a crash, kill -9) is replaced; its clients reconnect
to the others and resume with their last seq. A worker that fails to start stops
them all (exit 3), as one process would. A worker whose supervisor dies (kill -9)
drains and exits rather than serve on unsupervised.

/metrics sums every worker's figures: the parent makes a temporary directory and names
it in ``PROMETHEUS_MULTIPROC_DIR`` before it spawns a worker (so a worker's
prometheus_client reads it at import, as its multiprocess mode requires), marks the
files of a worker that died as dead, and removes the directory when it exits. A
``PROMETHEUS_MULTIPROC_DIR`` already set is used as it is, and kept.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.context import SpawnProcess
from types import FrameType

from tidings.config import Settings
from tidings.errors import ConfigurationError
from tidings.metrics import MULTIPROC_ENV
from tidings.pubsub import resolve_broker_url

logger = logging.getLogger("tidings.workers")

STARTUP_FAILED = 3  # uvicorn's exit status for a failed startup, as ``tidings serve`` uses it
_RESTART_INTERVAL = 1.0  # a worker slot is restarted at most this often


def check_workers(settings: Settings) -> None:
    """Refuse a worker count the settings cannot serve: the processes must share news and data."""
    n = settings.workers
    if n < 1:
        raise ConfigurationError(f"--workers {n}: expected 1 or more")
    if n == 1:
        return
    broker = resolve_broker_url(settings.broker, settings.db)
    if broker in ("memory", "memory://"):
        raise ConfigurationError(
            f"--workers {n}: the memory broker reaches one process only, so events would not cross workers; "
            "use --broker redis://host:6379/0, or a PostgreSQL --db (its LISTEN/NOTIFY broker is the default)"
        )
    db = settings.db
    if db.startswith("sqlite") and (":memory:" in db or db.rstrip("/") in ("sqlite:", "sqlite:/", "sqlite://")):
        raise ConfigurationError(f"--workers {n}: an in-memory SQLite database would be a different one per worker")
    given = _given_metrics_directory()
    if given is not None and not os.path.isdir(given):
        raise ConfigurationError(
            f"{MULTIPROC_ENV} {given}: expected a directory every worker can write (for /metrics), got none there"
        )


def _given_metrics_directory() -> str | None:
    """The operator's ``PROMETHEUS_MULTIPROC_DIR`` (or prometheus_client's older lower-case name)."""
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


def _metrics_directory(settings: Settings) -> str | None:
    """A fresh directory for the workers' /metrics files, named in the environment they inherit.

    None when /metrics is off or the operator named one: theirs is used and kept.
    """
    if settings.metrics.strip().lower() == "off" or _given_metrics_directory() is not None:
        return None
    directory = tempfile.mkdtemp(prefix="tidings-metrics-")
    os.environ[MULTIPROC_ENV] = directory  # before any spawn: a worker's prometheus_client reads it at import
    logger.info("The workers' /metrics figures meet in %s (removed at exit)", directory)
    return directory


def _mark_dead(pid: int | None) -> None:
    """prometheus_client's bookkeeping for a worker that is gone: its live gauges stop counting."""
    directory = _given_metrics_directory()
    if pid is not None and directory is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def supervise(settings: Settings) -> int:
    """Run ``settings.workers`` workers until SIGTERM or Ctrl-C; the exit status."""
    import uvicorn

    from tidings.logs import uvicorn_logging

    config = uvicorn.Config("tidings", host=settings.host, port=settings.port, **uvicorn_logging(settings))
    listener = config.bind_socket()
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    received: list[int] = []

    def on_signal(sig: int, _frame: FrameType | None) -> None:
        received.append(sig)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    metrics_directory = _metrics_directory(settings)

    def spawn(slot: int) -> tuple[SpawnProcess, float]:
        process = context.Process(
            target=_worker, args=(settings, listener), name=f"tidings-worker-{slot}", daemon=False
        )
        process.start()
        return process, time.monotonic()

    workers: list[tuple[SpawnProcess, float]] = []
    status = 0
    try:
        workers.extend(spawn(slot) for slot in range(settings.workers))
        logger.info(
            "Started %d workers (pids %s) on %s:%d",
            len(workers),
            ", ".join(str(p.pid) for p, _ in workers),
            settings.host,
            settings.port,
        )
        while not stop.wait(0.2):  # supervision tick: notice exits, restart
            for slot, (process, started) in enumerate(workers):
                code = process.exitcode
                if code is None:
                    continue
                if code == STARTUP_FAILED:
                    logger.error("Worker %d (pid %s) failed to start; stopping the others", slot, process.pid)
                    status = STARTUP_FAILED
                    stop.set()
                    break
                if time.monotonic() - started < _RESTART_INTERVAL:
                    continue
                how = f"signal {-code}" if code < 0 else f"status {code}"
                logger.warning("Worker %d (pid %s) exited with %s; starting another", slot, process.pid, how)
                _mark_dead(process.pid)
                workers[slot] = spawn(slot)
    finally:
        for process, _ in workers:
            if process.exitcode is None and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        # Each worker bounds its own drain by shutdown_timeout; past that and a margin, it is stuck.
        deadline = time.monotonic() + settings.shutdown_timeout + 5.0
        for process, _ in workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                logger.warning("Worker pid %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
        listener.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if metrics_directory is not None:
            del os.environ[MULTIPROC_ENV]
            shutil.rmtree(metrics_directory, ignore_errors=True)
    # -SIGTERM: a worker still starting (a replacement) when the signal came, before it
    # could handle it: it served nothing, so it has nothing to drain.
    if status == 0 and any(process.exitcode not in (0, -signal.SIGTERM) for process, _ in workers):
        status = 1
    logger.info("Stopped %d workers (on %s)", len(workers), ", ".join(signal.Signals(s).name for s in received))
    return status


def _worker(settings: Settings, listener: socket.socket) -> None:
    """One worker: what ``tidings serve`` runs, on the parent's socket."""
    import gc

    import uvicorn

    from tidings.launch import build_app
    from tidings.logs import configure_logging
    from tidings.redaction import install_redaction
    from tidings.server import Server
    from tidings.serving import uvicorn_options

    configure_logging(settings)  # --log-format json: the workers' lines are JSON too
    _stop_with_parent()
    app, _ = build_app(settings)
    gc.collect()
    gc.freeze()
    config = uvicorn.Config(app, **uvicorn_options(settings))
    install_redaction()
    server = Server(config, app.state.tidings)
    server.run(sockets=[listener])
    if not server.started:
        sys.exit(STARTUP_FAILED)


def _stop_with_parent() -> None:
    """SIGTERM to this worker (a graceful drain) if the supervisor dies, so none outlives it unseen."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        logger.warning("The supervisor (pid %s) is gone; stopping this worker", parent.pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="tidings-parent-watch", daemon=True).start()


__all__ = ["check_workers", "supervise"]
