"""The bounded per-connection send queue.

Overflow policy: when a connection holds more than ``max_messages`` frames or
``max_bytes`` bytes not yet written (its client stopped reading), the queue
is discarded and the connection is closed with a retryable code telling the
client to resume from its last seq. Other connections never wait for it, and
the server never holds more than the bound for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable


class SendQueue:
    """Frames waiting to be written, and the one task that writes them.

    The writer task exists only while there is something to write, so an idle
    connection costs no task.
    """

    __slots__ = ("_bytes", "_frames", "_on_overflow", "_write", "_writer", "closed", "max_bytes", "max_messages")

    def __init__(
        self,
        write: Callable[[str], Awaitable[None]],
        on_overflow: Callable[[], None],
        *,
        max_messages: int = 1000,
        max_bytes: int = 1_048_576,
    ) -> None:
        self._write = write
        self._on_overflow = on_overflow
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._frames: deque[str] = deque()
        self._bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self.closed = False

    def put(self, frame: str) -> bool:
        """Queue a frame; False (and the overflow callback) if the bound is passed."""
        if self.closed:
            return False
        self._frames.append(frame)
        self._bytes += len(frame)
        if len(self._frames) > self.max_messages or self._bytes > self.max_bytes:
            self.close()
            self._on_overflow()
            return False
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return True

    @property
    def pending(self) -> int:
        return len(self._frames)

    async def _drain(self) -> None:
        try:
            while self._frames and not self.closed:
                frame = self._frames.popleft()
                self._bytes -= len(frame)
                await self._write(frame)
        except Exception:
            self.close()
        finally:
            self._writer = None

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued frame was written (or ``timeout``)."""
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(writer), timeout)

    def close(self) -> None:
        """Drop what is queued and stop writing."""
        self.closed = True
        self._frames.clear()
        self._bytes = 0
        writer, self._writer = self._writer, None
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
