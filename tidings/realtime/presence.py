"""Presence state: who is in each channel, with which connections and metadata.

``PresenceRegistry`` is pure (no I/O, no clock): it applies join, update and
leave of one connection ("entry") and says what changed for the member (a
user, ``sub``; an anonymous caller is a member per connection). Every operation
is idempotent, so a process may apply its own change at once and again when the
broker brings it back, and may apply a snapshot and then the changes that raced it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tidings.events import PresenceKind
from tidings.pubsub.channel_store import Entry

JSONValue = Any


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """A member as clients see it: its latest connection and meta, and how many connections it has."""

    sub: str | None
    connection: str
    meta: JSONValue
    connections: int


@dataclasses.dataclass(frozen=True, slots=True)
class Diff:
    kind: PresenceKind
    member: Member
    count: int  # members in the channel after the change


class _Channel:
    __slots__ = ("entries", "members")

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        # member -> its entries in join order (the last one's meta represents it)
        self.members: dict[str, dict[str, Entry]] = {}


class PresenceRegistry:
    """Members per channel key; each change answers the diff to send, or None."""

    def __init__(self) -> None:
        self._channels: dict[str, _Channel] = {}

    def join(self, key: str, entry: Entry) -> Diff | None:
        """Add or update ``entry``: JOIN for a new member, UPDATE for a new connection or meta."""
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = _Channel()
        old = channel.entries.get(entry.connection)
        if old == entry:
            return None
        if old is not None and old.member != entry.member:
            self.leave(key, old.connection)
            return self.join(key, entry)
        channel.entries[entry.connection] = entry
        entries = channel.members.get(entry.member)
        if entries is None:
            entries = channel.members[entry.member] = {}
        entries.pop(entry.connection, None)
        entries[entry.connection] = entry
        kind = PresenceKind.JOIN if len(entries) == 1 and old is None else PresenceKind.UPDATE
        return Diff(kind, _member(entry, len(entries)), len(channel.members))

    def leave(self, key: str, connection: str) -> Diff | None:
        """Remove one connection: LEAVE when it was its member's last, else UPDATE."""
        channel = self._channels.get(key)
        if channel is None:
            return None
        entry = channel.entries.pop(connection, None)
        if entry is None:
            return None
        entries = channel.members[entry.member]
        del entries[connection]
        if entries:
            latest = next(reversed(entries.values()))
            return Diff(
                PresenceKind.UPDATE,
                Member(entry.sub, connection, latest.meta, len(entries)),
                len(channel.members),
            )
        del channel.members[entry.member]
        if not channel.entries:
            del self._channels[key]
        return Diff(PresenceKind.LEAVE, _member(entry, 0), len(channel.members))

    def members(self, key: str) -> list[Member]:
        channel = self._channels.get(key)
        if channel is None:
            return []
        result = []
        for entries in channel.members.values():
            latest = next(reversed(entries.values()))
            result.append(_member(latest, len(entries)))
        return result

    def entries(self, key: str) -> list[Entry]:
        channel = self._channels.get(key)
        return list(channel.entries.values()) if channel is not None else []

    def entry(self, key: str, connection: str) -> Entry | None:
        channel = self._channels.get(key)
        return channel.entries.get(connection) if channel is not None else None

    def processes(self, key: str) -> set[str]:
        return {e.process for e in self.entries(key)}

    def forget(self, key: str) -> None:
        self._channels.pop(key, None)

    def keys(self) -> list[str]:
        return list(self._channels)

    def __len__(self) -> int:
        return sum(len(c.entries) for c in self._channels.values())


def _member(entry: Entry, connections: int) -> Member:
    return Member(entry.sub, entry.connection, entry.meta, connections)


def presence_view(
    kind: PresenceKind, members: list[Member] | None, member: Member | None, count: int
) -> dict[str, Any]:
    """The root value a ``presence`` subscription's selection set is executed on."""
    return {
        "kind": kind,
        "members": [dataclasses.asdict(m) for m in members] if members is not None else None,
        "member": dataclasses.asdict(member) if member is not None else None,
        "count": count,
    }
