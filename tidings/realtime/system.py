"""System events: ``subscription { systemEvents { kind message at data } }``, per connection.

Nothing goes through the broker: each event concerns one connection of this process
(its token is about to expire, its rules changed, this process is shutting down; the schema
changed, which the dispatcher hears from the broker and this process tells each connection), so
it is pushed straight onto that connection's send queue, behind what it already holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import weakref
from typing import Any

from graphql.execution import Executor

from tidings.events import SystemEventKind
from tidings.realtime.group import Sink, render_view


class SystemSubscriber:
    """One ``systemEvents`` operation of one connection."""

    __slots__ = ("executor", "op_id", "rate", "sink")

    def __init__(self, sink: Sink, op_id: str, executor: Executor[Any]) -> None:
        self.sink = sink
        self.op_id = op_id
        self.executor = executor
        self.rate: Any = None  # the engine sets an event bucket; system events are not counted against it


@dataclasses.dataclass(slots=True)
class _Token:
    expires_at: float  # loop time
    timer: asyncio.TimerHandle
    warned: bool = False


class SystemEvents:
    """This process's ``systemEvents`` subscribers, by connection, and its token-expiry warnings.

    ``expiring_lead``: seconds before a connection's token expires that TOKEN_EXPIRING goes out.
    """

    def __init__(self, *, expiring_lead: float = 60.0) -> None:
        self.expiring_lead = expiring_lead
        # Weak: a connection that ends without a word (it always says, but) leaves nothing behind.
        self._subscribers: weakref.WeakKeyDictionary[Any, list[SystemSubscriber]] = weakref.WeakKeyDictionary()
        self._tokens: weakref.WeakKeyDictionary[Any, _Token] = weakref.WeakKeyDictionary()

    def subscribe(self, sink: Sink, op_id: str, executor: Executor[Any]) -> SystemSubscriber:
        subscriber = SystemSubscriber(sink, op_id, executor)
        self._subscribers.setdefault(sink, []).append(subscriber)
        token = self._tokens.get(sink)
        if token is not None and token.warned:
            # The warning went out before this subscription existed: it still concerns it.
            self._send(subscriber, *self._expiring(token))
        return subscriber

    def unsubscribe(self, subscriber: SystemSubscriber) -> None:
        found = self._subscribers.get(subscriber.sink)
        if found is not None and subscriber in found:
            found.remove(subscriber)
            if not found:
                del self._subscribers[subscriber.sink]

    def emit(self, sink: Sink, kind: SystemEventKind, message: str, data: dict[str, Any] | None = None) -> int:
        """Send one event to every ``systemEvents`` operation of ``sink``; how many got it."""
        subscribers = list(self._subscribers.get(sink, ()))
        for subscriber in subscribers:
            self._send(subscriber, kind, message, data)
        return len(subscribers)

    def schema_updated(self) -> int:
        """Tell every connection that the deployment's schema changed; how many heard it."""
        return sum(
            self.emit(sink, SystemEventKind.SCHEMA_UPDATED, "Schema changed: refresh your client")
            for sink in self.connections()
        )

    def connections(self) -> list[Any]:
        """The connections with at least one ``systemEvents`` operation."""
        return list(self._subscribers.keys())

    def _send(self, subscriber: SystemSubscriber, kind: SystemEventKind, message: str, data: Any) -> None:
        view = {"kind": kind, "message": message, "at": dt.datetime.now(dt.UTC), "data": data}
        subscriber.sink.push(subscriber.op_id, 0, render_view(subscriber.executor, view))

    # -- token expiry ------------------------------------------------------------------

    def watch_token(self, sink: Sink, expires_in: float | None) -> None:
        """Warn ``sink`` ``expiring_lead`` seconds before its token expires (again after a renewal).

        ``expires_in``: seconds until the token's own ``exp``, not the close at ``exp`` plus the
        leeway. The leeway forgives clock skew; counted in, the warning came after ``exp``.
        """
        self.forget(sink)
        if expires_in is None:
            return
        loop = asyncio.get_running_loop()
        ref = weakref.ref(sink)  # the timer must not keep a closed connection alive for hours
        timer = loop.call_later(max(expires_in - self.expiring_lead, 0.0), self._warn, ref)
        self._tokens[sink] = _Token(loop.time() + expires_in, timer)

    def forget(self, sink: Sink) -> None:
        """The connection ended (or renewed its token): no warning for the old token."""
        token = self._tokens.pop(sink, None)
        if token is not None:
            token.timer.cancel()

    def _warn(self, ref: weakref.ref[Any]) -> None:
        sink = ref()
        token = self._tokens.get(sink) if sink is not None else None
        if sink is None or token is None:
            return
        token.warned = True
        self.emit(sink, *self._expiring(token))

    def _expiring(self, token: _Token) -> tuple[SystemEventKind, str, dict[str, Any]]:
        remaining = max(token.expires_at - asyncio.get_running_loop().time(), 0.0)
        expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=remaining)
        return (
            SystemEventKind.TOKEN_EXPIRING,
            f"Your token expires in {remaining:.0f} s: call renewToken with a new one to stay connected",
            {"expiresInMs": int(remaining * 1000), "expiresAt": expires_at.isoformat()},
        )
