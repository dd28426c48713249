"""What a database failure means for the request: the database's fault (no space, an I/O error, a
lost connection), answered UNAVAILABLE, or the request's own, raised as it came.

The one place the drivers' failures (sqlite3, asyncpg, as SQLAlchemy wraps them) are read.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import defaultdict
from collections.abc import Iterator

import asyncpg
import sqlalchemy as sa

from tidings.errors import Unavailable

__all__ = ["BACKOFF", "Fault", "commit_unknown", "is_disconnect", "storage_fault", "unavailable"]

logger = logging.getLogger("tidings.store")
BACKOFF = (0.0, 0.05, 0.1, 0.2, 0.4, 0.5)
"""Seconds between tries on a lost connection: at once (a kept connection that a restart closed;
the server is likely back), then more slowly; the last one repeats."""

_SQLITE_IOERR, _SQLITE_FULL = 10, 13  # primary result codes (the low byte of an extended one)
# PostgreSQL SQLSTATEs: a session the server ended or refused (admin_shutdown, crash_shutdown,
# cannot_connect_now: starting up or shutting down; too_many_connections), besides class 08.
_PG_GONE = frozenset({"57P01", "57P02", "57P03", "53300"})


class Fault(str, enum.Enum):
    """Why the database could not serve a request (the metrics' ``reason`` label)."""

    DISK_FULL = "disk_full"
    OUT_OF_MEMORY = "out_of_memory"
    IO_ERROR = "io_error"
    UNREACHABLE = "unreachable"


_STORAGE = {"53100": Fault.DISK_FULL, "53200": Fault.OUT_OF_MEMORY, "58030": Fault.IO_ERROR}
_MESSAGES = {
    Fault.DISK_FULL: "The database has no space left to write",
    Fault.OUT_OF_MEMORY: "The database is out of memory",
    Fault.IO_ERROR: "The database cannot write to its storage (I/O error)",
}
_STORAGE_RETRY = 5.0  # space is seldom freed within a second
_OUTAGE_RETRY = 1.0  # the request already waited --db-outage-wait


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the driver error SQLAlchemy wraps (``orig``), and what each was raised from."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [getattr(current, "orig", None), current.__cause__]


def storage_fault(exc: BaseException) -> Fault | None:
    """No space (SQLITE_FULL; 53100 disk_full, 53200 out_of_memory) or an I/O error (SQLITE_IOERR,
    58030 io_error): the database cannot write, whatever the request. None for anything else."""
    for error in _chain(exc):
        code = getattr(error, "sqlite_errorcode", None)
        if isinstance(code, int):
            if code & 0xFF == _SQLITE_FULL:
                return Fault.DISK_FULL
            if code & 0xFF == _SQLITE_IOERR:
                return Fault.IO_ERROR
        fault = _STORAGE.get(str(getattr(error, "sqlstate", None)))
        if fault is not None:
            return fault
    return None


def is_disconnect(exc: BaseException) -> bool:
    """A lost or refused connection (a restart, a failover): the statement did not run on it, or ran
    in a transaction the server rolls back. Not the request's fault; another connection may serve it."""
    for error in _chain(exc):
        if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, OSError):  # refused, reset, unreachable: the socket, not the server's answer
            return True
        if isinstance(error, asyncpg.InterfaceError) and "connection is closed" in str(error):
            return True  # asyncpg's own check, before sending anything
        if isinstance(error, asyncpg.InternalClientError) and str(error).startswith("cannot switch to state"):
            # asyncpg refused to send: the server ended the session (its FATAL came in unasked)
            # and left the protocol waiting for a sync that never comes.
            return True
        sqlstate = str(getattr(error, "sqlstate", None))
        if sqlstate.startswith("08") or sqlstate in _PG_GONE:
            return True
    return False


def unavailable(fault: Fault, wait: float) -> Unavailable:
    """The error a request gets for ``fault``; ``wait``: how long it waited for the database."""
    if fault is not Fault.UNREACHABLE:
        return Unavailable(f"{_MESSAGES[fault]}; nothing was written, retry later", retry_after=_STORAGE_RETRY)
    if wait <= 0:
        return Unavailable(
            "The connection to the database was lost during the request; retry", retry_after=_OUTAGE_RETRY
        )
    return Unavailable(
        f"The database did not answer within {wait:g} s (--db-outage-wait); retry later", retry_after=_OUTAGE_RETRY
    )


def commit_unknown(wait: float) -> Unavailable:
    """A write whose COMMIT was sent when the connection was lost, and whether it committed could
    not be read within ``wait`` seconds: the one UNAVAILABLE that may have been written."""
    return Unavailable(
        f"The connection to the database was lost while committing and the outcome could not be read within "
        f"{wait:g} s: read what you wrote before sending it again",
        retry_after=_OUTAGE_RETRY,
        outcome="unknown",
    )


class WriteHealth:
    """Whether writes succeed: the last write transaction's fault (None once one commits again),
    and the transactions that failed UNAVAILABLE by (operation, reason). /readyz and the metrics
    read it; the writers (and read snapshots, for reads) report to it."""

    def __init__(self) -> None:
        self.fault: Fault | None = None
        self._fault_since = 0.0
        # (operation, reason) -> transactions that failed UNAVAILABLE: writes, and reads (snapshots).
        self.failures: defaultdict[tuple[str, str], int] = defaultdict(int)

    def error(self, exc: Exception, waited: float = 0.0) -> Exception:
        """What a failed write transaction answers: UNAVAILABLE for a fault of the database (its
        disk full, an I/O error, its connection lost past ``waited`` seconds), else ``exc`` itself."""
        fault = storage_fault(exc) or (Fault.UNREACHABLE if is_disconnect(exc) else None)
        if fault is None:
            return exc
        self.failures["write", fault.value] += 1
        if self.fault is None:
            self._fault_since = time.monotonic()
            logger.warning("Writes failing (%s): %s", fault.value, describe(exc))
        self.fault = fault
        error = unavailable(fault, waited)
        error.__cause__ = exc
        return error

    def committed(self) -> None:
        if self.fault is not None:  # read and written by the writer alone (its thread, or the drain)
            logger.info(
                "Writes succeed again, %.1f s after they began failing (%s)",
                time.monotonic() - self._fault_since,
                self.fault.value,
            )
            self.fault = None

    def read_failed(self, exc: Exception, waited: float) -> Unavailable:
        self.failures["read", Fault.UNREACHABLE.value] += 1
        logger.warning("A read failed: the database was unreachable for %g s (%s)", waited, describe(exc))
        return unavailable(Fault.UNREACHABLE, waited)


def describe(exc: BaseException) -> str:
    """The driver's error in one line, for a log line: its type and first line."""
    error = getattr(exc, "orig", None) or exc
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
