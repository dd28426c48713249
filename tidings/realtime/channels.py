"""Channels: ephemeral events (``publish``/``channelEvents``) and presence, beside collections.

Every channel event and presence change travels on one broker topic
(``<channel setting>:channels``), so every process sees them and hands each to
its own subscribers, found by channel key (the account and the name). Nothing
is written to the database. A subscriber renders its document once per event
and per distinct (document, variables): the members of a room share the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import os
import random
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable, Mapping
from typing import Any

import orjson
from graphql.execution import Executor

from tidings.auth.channel_rules import ChannelAction, ChannelRules, Resolved
from tidings.auth.principal import Principal
from tidings.errors import BadUserInput, CursorExpired, TidingsError
from tidings.events import ChangeEvent
from tidings.limits import Limits
from tidings.pubsub import Broker, BrokerUnavailable
from tidings.realtime.channel_store import ChannelStore, MemoryChannelStore, RedisChannelStore, split
from tidings.realtime.group import Sink, render_view
from tidings.realtime.presence import Diff, Entry, PresenceKind, PresenceRegistry, presence_view
from tidings.resolvers.context import Publisher

logger = logging.getLogger("tidings.realtime")

MAX_CHANNELS = 50  # channels one channelEvents subscription may name
MAX_TYPE_LENGTH = 64
FAN_OUT_TIMEOUT = 0.25  # a write's response never waits longer for its channel fan-out


class _Filled(dict[str, Any]):
    """A record for ``str.format_map``: a missing or null field leaves the template unfilled."""

    def __missing__(self, key: str) -> Any:
        raise KeyError(key)

    def __getitem__(self, key: str) -> Any:
        value = super().__getitem__(key)
        if value is None:
            raise KeyError(key)
        return value


class FanOut:
    """The app's publisher: rings the dispatcher's doorbell, then fans declared collections out to channels."""

    def __init__(self, publisher: Publisher, channels: Channels, templates: Mapping[str, tuple[str, ...]]) -> None:
        self.publisher = publisher
        self.channels = channels
        self.templates = {name: t for name, t in templates.items() if t}

    async def publish(self, event: ChangeEvent) -> None:
        await self.publisher.publish(event)
        templates = self.templates.get(event.collection)
        if templates:
            await self.channels.fan_out(event, templates)


class ChannelSubscriber:
    """One ``channelEvents`` or ``presence`` operation of one connection."""

    __slots__ = ("buffer", "connection", "executor", "keys", "op_id", "rate", "render_key", "sink", "stop", "types")

    def __init__(
        self,
        sink: Sink,
        op_id: str,
        keys: tuple[str, ...],
        executor: Executor[Any],
        render_key: Hashable,
        connection: str,
        stop: Callable[[ChannelSubscriber], None],
        types: frozenset[str] | None = None,
    ) -> None:
        self.sink = sink
        self.op_id = op_id
        self.keys = keys
        self.executor = executor
        self.render_key = render_key
        self.connection = connection
        self.stop = stop
        self.types = types
        self.buffer: list[tuple[int, bytes]] | None = None  # live events while the history replays
        self.rate: Any = None  # engine sets an event bucket; channel events are not counted against it

    def close(self) -> None:
        self.stop(self)


def _event_view(seq: int, data: Mapping[str, Any]) -> dict[str, Any]:
    sender = data.get("s")
    return {
        "channel": data["c"],
        "type": data["t"],
        "data": data.get("d"),
        "sender": {"sub": sender} if sender is not None else None,
        "at": dt.datetime.fromtimestamp(data["m"] / 1000, dt.UTC),
        "seq": str(seq),
    }


def parse_after(value: Any) -> int | None:
    """A channel cursor: a seq, or ``<anything>:<seq>`` (an SSE Last-Event-ID)."""
    if value is None:
        return None
    digits = str(value).rpartition(":")[2]
    if not digits.isascii() or not digits.isdigit() or len(digits) > 18:
        raise BadUserInput(f"after must be a channel event's seq (decimal digits), got {str(value)[:40]!r}")
    return int(digits)


class Channels:
    """This process's channel subscribers and presence, fed from the broker.

    Server code publishes with ``await app.state.tidings.channels.publish(...)``.
    """

    def __init__(
        self,
        broker: Broker,
        rules: ChannelRules,
        *,
        topic: str,
        limits: Limits | None = None,
        max_payload: int = 16_384,
        presence_ttl: float = 15.0,
    ) -> None:
        self.broker = broker
        self.rules = rules
        self.topic = topic
        self.limits = limits
        self.max_payload = max_payload
        self.presence_ttl = presence_ttl
        self.process = f"{os.getpid():x}{random.getrandbits(32):08x}"
        self.store: ChannelStore = MemoryChannelStore(broker, topic)
        self.presence = PresenceRegistry()
        self._subscribers: dict[str, set[ChannelSubscriber]] = {}
        self._watchers: dict[str, set[ChannelSubscriber]] = {}  # presence, by key
        self._loading: dict[str, tuple[asyncio.Event, list[dict[str, Any]]]] = {}
        self._joined: dict[tuple[str, str], ChannelSubscriber] = {}  # (connection, key) -> presence op
        self._connection_ids: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._numbers = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()  # leaves under way (closing is synchronous)
        self._consumer: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.delivered = 0
        # The app's on_publish hooks (principal, channel, type, data) -> data: may refuse or rewrite.
        self.before_publish: Callable[[Principal, str, str, Any], Awaitable[Any]] | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        from tidings.pubsub.redis import RedisBroker

        if isinstance(self.broker, RedisBroker):
            # Numbers, history and presence shared by every process: in the broker's Redis.
            self.store = RedisChannelStore(self.broker, self.broker.client, self.topic, self.process, self.presence_ttl)
            await self.store.heartbeat(())
            self._heartbeat = asyncio.create_task(self._beat(), name="tidings-presence-heartbeat")
        ready = asyncio.Event()
        self._consumer = asyncio.create_task(self._consume(ready), name="tidings-channels")
        await ready.wait()

    async def close(self) -> None:
        tasks = [t for t in (self._consumer, self._heartbeat) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        await self.store.close()

    def connection_id(self, client: Any) -> str:
        """``<process>.<n>``: a connection's key in presence and for ``echo: false``."""
        try:
            found = self._connection_ids.get(client)
            if found is None:
                found = self._connection_ids[client] = f"{self.process}.{next(self._numbers)}"
        except TypeError:  # not weakly referenceable (no connection): a key of its own
            return f"{self.process}.{next(self._numbers)}"
        return found

    # -- publish -------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        type: str,  # noqa: A002
        data: Any = None,
        *,
        sender: str | None = None,
        account: str | None = None,
    ) -> int:
        """Publish from server code (no rule or rate is checked): the event's seq.

        ``account`` is the tenant whose ``channel`` it is (ignored for global namespaces).
        """
        return await self._publish(self.rules.server_key(channel, account), type, data, sender, None)

    async def publish_as(
        self,
        principal: Principal,
        channel: str,
        type: str,  # noqa: A002
        data: Any,
        *,
        client: Any,
        echo: bool = True,
    ) -> int:
        """The ``publish`` mutation: rules and the size limit, then the rate limits (a refusal spends nothing)."""
        resolved = self.rules.resolve(channel, principal, ChannelAction.PUBLISH)
        if self.before_publish is not None:
            data = await self.before_publish(principal, resolved.channel, type, data)
        body = self._encode(resolved, type, data, principal.sub, None if echo else self._origin(client))
        if self.limits is not None:
            limited = await self.limits.check_publish(principal, client)
            if limited is not None:
                raise limited
        try:
            return await self._send(resolved, body)
        except BrokerUnavailable as exc:
            # An outage is not a bug: a warning here, and an answer the client can act on.
            logger.warning("Channel publish on %r failed: %s", resolved.channel, exc)
            raise TidingsError("The broker is unreachable: the event was not published; retry later") from exc

    def _origin(self, client: Any) -> str | None:
        return None if client is None or isinstance(client, str) else self.connection_id(client)

    async def _publish(self, resolved: Resolved, type: str, data: Any, sender: str | None, origin: str | None) -> int:  # noqa: A002
        return await self._send(resolved, self._encode(resolved, type, data, sender, origin))

    def _encode(self, resolved: Resolved, type: str, data: Any, sender: str | None, origin: str | None) -> bytes:  # noqa: A002
        if not 0 < len(type) <= MAX_TYPE_LENGTH:
            raise BadUserInput(f"type must be 1 to {MAX_TYPE_LENGTH} characters, got {len(type)}", field="type")
        if data is not None and len(orjson.dumps(data)) > self.max_payload:
            raise BadUserInput(
                f"data is larger than {self.max_payload} bytes (as JSON)", field="data", limit=self.max_payload
            )
        message = {"k": resolved.key, "c": resolved.channel, "t": type, "d": data, "s": sender, "o": origin}
        message["m"] = time.time() * 1000
        return orjson.dumps(message)

    async def _send(self, resolved: Resolved, body: bytes) -> int:
        ns = resolved.namespace
        return await self.store.publish_event(resolved.key, body, ns.history, ns.history_seconds)

    async def fan_out(self, event: ChangeEvent, templates: tuple[str, ...]) -> None:
        """Publish a committed change to the channels its collection declares (``"room:{room}"``).

        The commit stands whatever happens here: a template the record cannot fill is
        skipped, and a failed or slow publish is logged, never raised.
        """
        record = event.record
        kind = f"{event.collection[:1].lower()}{event.collection[1:]}.{event.operation.value.lower()}"
        data = {"id": event.record_id, "seq": str(event.seq), "operation": event.operation.value, "record": record}
        for template in templates:
            try:
                channel = template.format_map(_Filled(record))
            except (KeyError, ValueError, IndexError):
                continue
            try:
                async with asyncio.timeout(FAN_OUT_TIMEOUT):
                    await self.publish(channel, kind, data, sender=event.actor, account=event.account)
            except Exception as exc:
                logger.warning("Publishing %s seq %s to channel %r failed (%s)", kind, event.seq, channel, exc)

    # -- channelEvents ---------------------------------------------------------------

    async def subscribe_events(
        self,
        principal: Principal,
        args: Mapping[str, Any],
        *,
        executor: Executor[Any],
        render_key: Hashable,
        sink: Sink,
        op_id: str,
        after_override: str | None = None,
    ) -> ChannelSubscriber:
        names: list[str] = list(dict.fromkeys(args.get("channels") or ()))
        if not 0 < len(names) <= MAX_CHANNELS:
            raise BadUserInput(f"channels must name 1 to {MAX_CHANNELS} channels, got {len(names)}", field="channels")
        resolved = [self.rules.resolve(name, principal, ChannelAction.SUBSCRIBE) for name in names]
        after = parse_after(args.get("after"))
        if after is not None and len(resolved) > 1:
            raise BadUserInput("after resumes one channel: subscribe to that channel alone to resume it", field="after")
        if after is None and after_override is not None and len(resolved) == 1:
            with contextlib.suppress(BadUserInput):
                after = parse_after(after_override)
        types = args.get("types")
        subscriber = ChannelSubscriber(
            sink,
            op_id,
            tuple(r.key for r in resolved),
            executor,
            render_key,
            self.connection_id(sink),
            self._unsubscribe,
            frozenset(types) if types else None,
        )
        history = resolved[0].namespace if after is not None else None
        if history is not None and history.history:
            subscriber.buffer = []
        for key in subscriber.keys:
            self._subscribers.setdefault(key, set()).add(subscriber)
        if history is None or not history.history or after is None:
            return subscriber
        try:
            messages, complete = await self.store.history(resolved[0].key, after, history.history_seconds)
            if not complete:
                raise CursorExpired(
                    f"Events of {resolved[0].channel!r} after seq {after} are no longer kept; subscribe without after"
                )
        except BaseException:
            self._unsubscribe(subscriber)
            raise
        last = after
        for message in messages:
            seq_raw, body = split(message)
            last = int(seq_raw)
            self._deliver(subscriber, last, orjson.loads(body), {})
        buffered, subscriber.buffer = subscriber.buffer or [], None
        for seq, body in buffered:
            if seq > last:
                self._deliver(subscriber, seq, orjson.loads(body), {})
        return subscriber

    def _unsubscribe(self, subscriber: ChannelSubscriber) -> None:
        for key in subscriber.keys:
            found = self._subscribers.get(key)
            if found is not None:
                found.discard(subscriber)
                if not found:
                    del self._subscribers[key]

    def _deliver(
        self, subscriber: ChannelSubscriber, seq: int, data: Mapping[str, Any], cache: dict[Hashable, str]
    ) -> None:
        if subscriber.types is not None and data["t"] not in subscriber.types:
            return
        if data.get("o") is not None and data["o"] == subscriber.connection:
            return  # echo: false, and this is the publishing connection
        payload = cache.get(subscriber.render_key)
        if payload is None:
            payload = cache[subscriber.render_key] = render_view(subscriber.executor, _event_view(seq, data))
        self.delivered += 1
        subscriber.sink.push(subscriber.op_id, seq, payload)

    # -- the broker ------------------------------------------------------------------

    async def _consume(self, ready: asyncio.Event) -> None:
        failures = 0

        def subscribed() -> None:
            nonlocal failures
            failures = 0
            ready.set()

        while True:
            messages = self.broker.subscribe(self.topic, on_ready=subscribed)
            try:
                while True:
                    try:
                        message = await anext(messages)
                    except StopAsyncIteration:
                        return
                    except Exception as exc:
                        # Channel events are ephemeral: what the broker lost meanwhile is gone.
                        logger.warning("Channel events: broker subscription lost (%s); resubscribing", exc)
                        break
                    try:
                        self._receive(message)
                    except Exception:
                        logger.warning("A channel message could not be handled", exc_info=True)
            finally:
                if isinstance(messages, AsyncGenerator):
                    # Bounded: a stalled broker must not hold a shutdown.
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(0.25):
                            await messages.aclose()
            failures += 1
            ready.set()  # start() does not wait for a broker that is down
            await asyncio.sleep(min(1.0, 0.05 * 2 ** (failures - 1)) * random.uniform(0.5, 1.0))

    def _receive(self, message: bytes) -> None:
        head, body = split(message)
        if head == b"p":
            self._presence_message(orjson.loads(body))
            return
        data = orjson.loads(body)
        subscribers = self._subscribers.get(data["k"])
        if not subscribers:
            return
        seq = int(head)
        cache: dict[Hashable, str] = {}
        for subscriber in list(subscribers):
            if subscriber.buffer is not None:
                subscriber.buffer.append((seq, body))
                continue
            try:
                self._deliver(subscriber, seq, data, cache)
            except Exception:
                logger.exception("Rendering a channel event failed")

    # -- presence ------------------------------------------------------------------

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
            await self._ensure_loaded(key)
        except BaseException:
            del self._joined[(connection, key)]
            raise
        entry = Entry(connection, principal.sub, meta)
        self._notify(key, self.presence.join(key, entry))
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
        members = self.presence.members(key)
        sink.push(op_id, 0, render_view(executor, presence_view(PresenceKind.SYNC, members, None, len(members))))
        return watcher

    async def update(self, principal: Principal, channel: str, meta: Any, client: Any) -> bool:
        """``updatePresence``: new meta for the caller's connection in ``channel``."""
        resolved = self.rules.resolve(channel, principal, ChannelAction.PRESENCE)
        meta = self._check_meta(meta)
        entry = self.presence.entry(resolved.key, self.connection_id(client)) if client is not None else None
        if entry is None:
            raise BadUserInput(
                f"Join the presence of {channel!r} first (a presence subscription on this connection)", field="channel"
            )
        updated = Entry(entry.connection, entry.sub, meta)
        self._notify(resolved.key, self.presence.join(resolved.key, updated))
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
        key = watcher.keys[0]
        if self._joined.get((watcher.connection, key)) is not watcher:
            return
        del self._joined[(watcher.connection, key)]
        watchers = self._watchers.get(key)
        if watchers is not None:
            watchers.discard(watcher)
            if not watchers:
                del self._watchers[key]
        self._notify(key, self.presence.leave(key, watcher.connection))
        if key not in self._watchers:
            self.presence.forget(key)  # no one here watches it: stop mirroring it
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
                self.presence.join(key, entry)
        except Exception as exc:
            # Redis unreachable: this process's members only, completed by the changes that arrive.
            logger.warning("Presence: could not load the members of a channel from Redis (%s)", exc)
        finally:
            del self._loading[key]
            done.set()
        # Changes that raced the snapshot: every operation is idempotent.
        for message in pending:
            self._apply(message)

    def _presence_message(self, message: dict[str, Any]) -> None:
        key = message["k"]
        loading = self._loading.get(key)
        if loading is not None:
            loading[1].append(message)
        elif key in self._watchers:
            self._apply(message)

    def _apply(self, message: dict[str, Any]) -> None:
        key = message["k"]
        if message["op"] == "j":
            diff = self.presence.join(key, Entry(message["e"], message.get("u"), message.get("m")))
        else:
            diff = self.presence.leave(key, message["e"])
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

    async def _beat(self) -> None:
        """Refresh this process's liveness; drop the members of processes whose liveness expired."""
        interval = self.presence_ttl / 3
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
            processes |= self.presence.processes(key)
        dead = await self.store.dead(processes)
        if not dead:
            return
        for key in keys:
            gone = [e.connection for e in self.presence.entries(key) if e.process in dead]
            for connection in gone:
                self._notify(key, self.presence.leave(key, connection))
            if gone:
                await self.store.remove_entries(key, gone)

    @property
    def subscriber_count(self) -> int:
        """Live channelEvents subscriptions and presence operations of this process."""
        return len({id(s) for subs in self._subscribers.values() for s in subs}) + len(self._joined)

    @property
    def member_count(self) -> int:
        return len(self.presence)
