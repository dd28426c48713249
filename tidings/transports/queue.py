"""The bounded per-connection send queue.

Overflow policy: when a connection holds more than ``max_messages`` frames or
``max_bytes`` bytes not yet written (its client stopped reading), or has had
frames waiting for ``write_timeout`` seconds without its backlog once clearing
(it stopped reading, or reads slower than it is sent to, at a rate too low to
reach the bound soon), the queue is discarded and the connection is closed with
a retryable code telling the client to resume from its last seq. Other
connections never wait for it, and the server never holds more than the bound
for it.

Writing is eager: a frame put on an empty queue is written at once, in the
caller's turn, and a task is made only when the write has to wait (the
socket's buffer is full). Fanning one event out to thousands of idle
connections thus costs no task and no loop round-trip per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, cast

_EMPTY: deque[str] = deque(maxlen=0)  # shared by every queue that never had to wait; appends are dropped


class SendQueue:
    """Frames waiting to be written, and the one task that writes them when writes wait."""

    __slots__ = (
        "_bytes",
        "_deadline",
        "_frames",
        "_on_overflow",
        "_write",
        "_writer",
        "closed",
        "max_bytes",
        "max_messages",
        "write_timeout",
    )

    def __init__(
        self,
        write: Callable[[str], Awaitable[None]],
        on_overflow: Callable[[], None],
        *,
        max_messages: int = 1000,
        max_bytes: int = 1_048_576,
        write_timeout: float = 0.0,
    ) -> None:
        self._write = write
        self._on_overflow = on_overflow
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.write_timeout = write_timeout  # 0 = writes may wait for ever
        self._deadline: asyncio.TimerHandle | None = None  # armed while a writer task exists
        self._frames: deque[str] = _EMPTY  # a real deque only once a write has to wait
        self._bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self.closed = False

    def put(self, frame: str) -> bool:
        """Queue a frame; False (and the overflow callback) if the bound is passed."""
        if self.closed:
            return False
        if self._writer is None:
            return self._write_now(frame)
        self._frames.append(frame)
        self._bytes += len(frame)
        if len(self._frames) > self.max_messages or self._bytes > self.max_bytes:
            self.close()
            self._on_overflow()
            return False
        return True

    def _write_now(self, frame: str) -> bool:
        coro = cast("Coroutine[Any, Any, None]", self._write(frame))  # an async def: no isinstance on the hot path
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return True  # written without waiting: the common case
        except Exception:  # the peer went away; the receive loop ends the connection
            self.close()
            return False
        # The write waits (the socket is full): a task finishes it, then drains what queues meanwhile.
        if self._frames is _EMPTY:
            self._frames = deque()
        loop = asyncio.get_running_loop()
        self._writer = loop.create_task(self._finish(_Resume(coro, waiting_on)))
        if self.write_timeout > 0:
            self._deadline = loop.call_later(self.write_timeout, self._backlog_too_old)
        return True

    async def _finish(self, pending: _Resume) -> None:
        try:
            await pending
            while self._frames and not self.closed:
                frame = self._frames.popleft()
                self._bytes -= len(frame)
                await self._write(frame)
        except Exception:  # the peer went away; the receive loop ends the connection
            self.close()
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None
                self._disarm()

    def _backlog_too_old(self) -> None:
        # The writer task lives from the first write that waited until the queue is
        # empty: alive now, the client has not caught up once in write_timeout. "No
        # write completed" would not do: a socket whose buffer the kernel keeps
        # growing takes a trickle of writes from a client that reads nothing.
        self._deadline = None
        if self._writer is None or self.closed:
            return
        self.close()
        self._on_overflow()

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    @property
    def pending(self) -> int:
        return len(self._frames)

    async def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued frame was written (or ``timeout``)."""
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(writer), timeout)

    def close(self) -> None:
        """Drop what is queued and stop writing."""
        self.closed = True
        self._frames = _EMPTY
        self._bytes = 0
        self._disarm()
        writer, self._writer = self._writer, None
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()


class _Resume:
    """Awaitable that carries on a coroutine already started by hand.

    ``coro.send(None)`` ran it up to its first suspension, which yielded
    ``first`` (the future it waits on); awaiting this object inside a task hands
    that future to the task and relays every later resume, value or exception
    (cancellation included) to the coroutine, as ``await coro`` would have.
    """

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # relayed into the coroutine, as await would
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value
