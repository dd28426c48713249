"""The per-connection state both WebSocket protocols keep: phase and active operation ids."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from collections.abc import Set as AbstractSet

from tidings.protocols.close_codes import CloseCode, close_reason
from tidings.protocols.commands import Close, Command

__all__ = ["ConnectionState", "Phase", "ReadOnlySet", "WebSocketProtocolState"]


class Phase(enum.Enum):
    """Where a WebSocket connection is in its life; it only ever moves down this list."""

    AWAITING_INIT = "awaiting_init"
    """Open, no ``connection_init`` yet."""
    INITIALISING = "initialising"
    """``connection_init`` received; the transport is deciding (``Authenticate``)."""
    ACKNOWLEDGED = "acknowledged"
    """``connection_ack`` sent; operations may run."""
    CLOSED = "closed"
    """A ``Close`` was returned; nothing more is sent."""


class ConnectionState:
    """Phase, active operation ids and the operation cap of one connection."""

    __slots__ = ("active", "active_view", "max_operations", "phase")

    def __init__(self, max_operations: int) -> None:
        if max_operations < 1:
            raise ValueError(f"max_operations must be at least 1, got {max_operations}")
        self.phase = Phase.AWAITING_INIT
        self.active: set[str] = set()
        self.active_view = ReadOnlySet(self.active)
        self.max_operations = max_operations

    @property
    def is_full(self) -> bool:
        return len(self.active) >= self.max_operations

    def close(self, code: CloseCode, reason: str) -> list[Command]:
        """Finish the connection: the first call returns the ``Close``, later ones nothing."""
        if self.phase is Phase.CLOSED:
            return []
        self.phase = Phase.CLOSED
        # The transport cancels every operation on close, so none stays active here.
        self.active.clear()
        return [Close(code, close_reason(reason))]

    def init_timeout(self) -> list[Command]:
        """The init timer fired: close 4408 unless the connection was acknowledged."""
        if self.phase in (Phase.AWAITING_INIT, Phase.INITIALISING):
            return self.close(CloseCode.CONNECTION_INIT_TIMEOUT, "Connection initialisation timeout")
        return []


class ReadOnlySet(AbstractSet[str]):
    """A live, read-only view of a set of strings."""

    __slots__ = ("_items",)

    def __init__(self, items: set[str]) -> None:
        self._items = items

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"ReadOnlySet({sorted(self._items)!r})"


class WebSocketProtocolState:
    """What both WebSocket protocols answer about their connection: its phase and running ids."""

    __slots__ = ("_state",)

    def __init__(self, *, max_operations: int = 100) -> None:
        self._state = ConnectionState(max_operations)

    @property
    def phase(self) -> Phase:
        return self._state.phase

    @property
    def is_acknowledged(self) -> bool:
        return self._state.phase is Phase.ACKNOWLEDGED

    @property
    def is_closed(self) -> bool:
        return self._state.phase is Phase.CLOSED

    @property
    def active_ids(self) -> AbstractSet[str]:
        """The ids of the running operations (a read-only view)."""
        return self._state.active_view

    def is_active(self, id: str) -> bool:  # noqa: A002 (the wire field's name)
        return id in self._state.active
