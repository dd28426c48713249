"""Presence in channels: join, update and leave of this process's connections, shared
through the channel store, mirrored from the broker, swept when a process dies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import orjson
from graphql.execution import Executor

from tidings.auth.channel_rules import ChannelAction, ChannelRules
from tidings.auth.principal import Principal
from tidings.errors import BadUserInput
from tidings.events import PresenceKind
from tidings.pubsub.channel_store import ChannelStore, Entry
from tidings.realtime.channel_access import ChannelAccess
from tidings.realtime.channel_events import ChannelSubscriber
from tidings.realtime.group import Sink, render_view
from tidings.realtime.presence import Diff, PresenceRegistry, presence_view

logger = logging.getLogger("tidings.realtime")


class ChannelPresence:
    """The ``presence`` operations of this process, and the members of the channels they watch."""

    def __init__(
        self,
        store: ChannelStore,
        rules: ChannelRules,
        connection_id: Callable[[Any], str],
        *,
        access: ChannelAccess,
        max_payload: int = 16_384,
        ttl: float = 15.0,
    ) -> None:
        self.store = store
        self.rules = rules
        self.access = access  # read:<Collection> rules: admission and re-checks
        self.connection_id = connection_id
        self.max_payload = max_payload
        self.ttl = ttl
        self.registry = PresenceRegistry()
        self._watchers: dict[str, set[ChannelSubscriber]] = {}  # by key
        self._loading: dict[str, tuple[asyncio.Event, list[dict[str, Any]]]] = {}
        self._joined: dict[tuple[str, str], ChannelSubscriber] = {}  # (connection, key) -> presence op
        self._tasks: set[asyncio.Task[None]] = set()  # leaves under way (closing is synchronous)

    async def join(
        self,
        principal: Principal,
        args: Mapping[str, Any],
        *,
        executor: Executor[Any],
        render_key: Hashable,
        sink: Sink,
        op_id: str,
    ) -> ChannelSubscriber:
        """The ``presence`` subscription: join, send the member list, then the changes."""
        resolved = self.rules.resolve(args["channel"], principal, ChannelAction.PRESENCE)
        meta = self._check_meta(args.get("meta"))
        connection = self.connection_id(sink)
        key = resolved.key
        if (connection, key) in self._joined:
            raise BadUserInput(f"This connection is already in the presence of {resolved.channel!r}", field="channel")
        watcher = ChannelSubscriber(sink, op_id, (key,), executor, render_key, connection, self._leave)
        self._joined[(connection, key)] = watcher  # before any await: a second join is refused
        try:
            # Before the member is seen by anyone: one who may not read the record never joins.
            ticket = await self.access.admit(principal, resolved, ChannelAction.PRESENCE)
            await self._ensure_loaded(key)
        except BaseException:
            del self._joined[(connection, key)]
            raise
        entry = Entry(connection, principal.sub, meta)
        self._notify(key, self.registry.join(key, entry))
        # Watching (changes keep reaching the registry) but not yet sent anything: the
        # member list goes out once the entry is shared, so a client that saw its SYNC
        # is seen by every process that loads the channel after that.
        watcher.buffer = []
        self._watchers.setdefault(key, set()).add(watcher)
        try:
            await self._share_entry(key, entry)
        except BaseException:
            # Cancelled (the client stopped the operation meanwhile): no one else will leave for it.
            self._leave(watcher)
            raise
        watcher.buffer = None
        members = self.registry.members(key)
        sink.push(op_id, 0, render_view(executor, presence_view(PresenceKind.SYNC, members, None, len(members))))
        # Tracked once joined whole (a re-check ending it earlier would race the join's own writes);
        # a change since the admission's read began is re-checked at once (see track).
        self.access.track(watcher, (ticket,))
        return watcher

    async def update(self, principal: Principal, channel: str, meta: Any, client: Any) -> bool:
        """``updatePresence``: new meta for the caller's connection in ``channel``.

        A read:<Collection> rule reads nothing here: only a joined connection may update, and a
        joined one was admitted and is re-checked on every change its admission depends on.
        """
        resolved = self.rules.resolve(channel, principal, ChannelAction.PRESENCE)
        meta = self._check_meta(meta)
        entry = self.registry.entry(resolved.key, self.connection_id(client)) if client is not None else None
        if entry is None:
            raise BadUserInput(
                f"Join the presence of {channel!r} first (a presence subscription on this connection)", field="channel"
            )
        updated = Entry(entry.connection, entry.sub, meta)
        self._notify(resolved.key, self.registry.join(resolved.key, updated))
        await self._share_entry(resolved.key, updated)
        return True

    def _check_meta(self, meta: Any) -> Any:
        if meta is not None and len(orjson.dumps(meta)) > self.max_payload:
            raise BadUserInput(
                f"meta is larger than {self.max_payload} bytes (as JSON)", field="meta", limit=self.max_payload
            )
        return meta

    async def _share_entry(self, key: str, entry: Entry) -> None:
        try:
            await self.store.put_entry(key, entry)
            await self.store.publish_presence(
                orjson.dumps({"op": "j", "k": key, "e": entry.connection, "u": entry.sub, "m": entry.meta})
            )
        except Exception as exc:
            logger.warning("Presence: could not share %s with other processes (%s)", entry.connection, exc)

    def _leave(self, watcher: ChannelSubscriber) -> None:
        self.access.untrack(watcher)
        key = watcher.keys[0]
        if self._joined.get((watcher.connection, key)) is not watcher:
            return
        del self._joined[(watcher.connection, key)]
        watchers = self._watchers.get(key)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[key]
        self._notify(key, self.registry.leave(key, watcher.connection))
        if key not in self._watchers:
            self.registry.forget(key)  # no one here watches it: stop mirroring it
        task = asyncio.get_running_loop().create_task(self._share_leave(key, [watcher.connection]))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _share_leave(self, key: str, connections: list[str]) -> None:
        try:
            await self.store.remove_entries(key, connections)
            for connection in connections:
                await self.store.publish_presence(orjson.dumps({"op": "l", "k": key, "e": connection}))
        except Exception as exc:
            logger.warning("Presence: could not share a leave with other processes (%s)", exc)

    async def settle(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for the leaves under way to be shared."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def _ensure_loaded(self, key: str) -> None:
        loading = self._loading.get(key)
        if loading is not None:
            await loading[0].wait()
            return
        if key in self._watchers:
            return
        done, pending = asyncio.Event(), list[dict[str, Any]]()
        self._loading[key] = (done, pending)
        try:
            for entry in await self.store.load(key):
                self.registry.join(key, entry)
        except Exception as exc:
            # The store unreachable: this process's members only, completed by the changes that arrive.
            logger.warning("Presence: could not load the members of a channel (%s)", exc)
        finally:
            del self._loading[key]
            done.set()
        # Changes that raced the snapshot: every operation is idempotent.
        for message in pending:
            self._apply(message)

    def receive(self, message: dict[str, Any]) -> None:
        """A presence change from the broker topic (this process's own come back too)."""
        key = message["k"]
        loading = self._loading.get(key)
        if loading is not None:
            loading[1].append(message)
        elif key in self._watchers:
            self._apply(message)

    def _apply(self, message: dict[str, Any]) -> None:
        key = message["k"]
        if message["op"] == "j":
            diff = self.registry.join(key, Entry(message["e"], message.get("u"), message.get("m")))
        else:
            diff = self.registry.leave(key, message["e"])
        self._notify(key, diff)

    def _notify(self, key: str, diff: Diff | None) -> None:
        if diff is None:
            return
        cache: dict[Hashable, str] = {}
        for watcher in list(self._watchers.get(key, ())):
            if watcher.buffer is not None:
                continue  # its SYNC, sent later, includes this change
            payload = cache.get(watcher.render_key)
            if payload is None:
                view = presence_view(diff.kind, None, diff.member, diff.count)
                payload = cache[watcher.render_key] = render_view(watcher.executor, view)
            watcher.sink.push(watcher.op_id, 0, payload)

    async def beat(self) -> None:
        """Refresh this process's liveness; drop the members of processes whose liveness expired."""
        interval = self.ttl / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self.store.heartbeat({key for _, key in self._joined})
                await self.sweep()
            except Exception as exc:
                logger.warning("Presence heartbeat failed (%s); retrying in %.1f s", exc, interval)

    async def sweep(self) -> None:
        keys = list(self._watchers)
        processes: set[str] = set()
        for key in keys:
            processes |= self.registry.processes(key)
        dead = await self.store.dead(processes)
        if not dead:
            return
        for key in keys:
            gone = [e.connection for e in self.registry.entries(key) if e.process in dead]
            for connection in gone:
                self._notify(key, self.registry.leave(key, connection))
            if gone:
                await self.store.remove_entries(key, gone)

    @property
    def joined_count(self) -> int:
        """Presence operations of this process."""
        return len(self._joined)

    @property
    def member_count(self) -> int:
        return len(self.registry)
