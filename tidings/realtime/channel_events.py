"""Channel events: ``publish`` and ``channelEvents``, numbered and kept by the channel
store, replayed from its history for ``after:``, rendered once per event and document.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

import orjson
from graphql.execution import Executor

from tidings.auth.channel_rules import ChannelAction, ChannelRules, Resolved
from tidings.auth.principal import Principal
from tidings.errors import BadUserInput, CursorExpired, TidingsError
from tidings.limits import Limits
from tidings.pubsub import BrokerUnavailable
from tidings.pubsub.channel_store import ChannelStore, split
from tidings.realtime.channel_access import ChannelAccess
from tidings.realtime.group import Sink, render_view

logger = logging.getLogger("tidings.realtime")

MAX_CHANNELS = 50  # channels one channelEvents subscription may name
MAX_TYPE_LENGTH = 64


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


class ChannelEvents:
    """This process's ``channelEvents`` subscribers, by channel key, and the way in for publishes."""

    def __init__(
        self,
        store: ChannelStore,
        rules: ChannelRules,
        connection_id: Callable[[Any], str],
        *,
        access: ChannelAccess,
        limits: Limits | None = None,
        max_payload: int = 16_384,
        before_publish: Callable[[Principal, str, str, Any], Awaitable[Any]] | None = None,
    ) -> None:
        self.store = store
        self.rules = rules
        self.access = access  # read:<Collection> rules: admission and re-checks
        self.connection_id = connection_id
        self.limits = limits
        self.max_payload = max_payload
        self._subscribers: dict[str, set[ChannelSubscriber]] = {}
        self.delivered = 0
        # The app's on_publish hooks (principal, channel, type, data) -> data: may refuse or rewrite.
        self.before_publish = before_publish

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
        resolved = self.rules.server_key(channel, account)
        return await self._send(resolved, self._encode(resolved, type, data, sender, None))

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
        await self.access.admit(principal, resolved, ChannelAction.PUBLISH)
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

    # -- channelEvents ---------------------------------------------------------------

    async def subscribe(
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
        tickets = [await self.access.admit(principal, r, ChannelAction.SUBSCRIBE) for r in resolved]
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
        self.access.track(subscriber, tickets)  # no await since the admissions: see track
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
        self.access.untrack(subscriber)
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

    def receive(self, head: bytes, body: bytes) -> None:
        """An event from the broker topic (its seq, its JSON): to this process's subscribers of its channel."""
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

    @property
    def subscriber_count(self) -> int:
        return len({id(s) for subs in self._subscribers.values() for s in subs})
