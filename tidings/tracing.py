"""OpenTelemetry spans for operations, commits and deliveries; off by default, free when off.

With ``--tracing on`` (and ``opentelemetry-api`` installed: ``pip install tidings[tracing]``)
tidings makes three kinds of spans through the tracer provider the application configured
(an SDK and an exporter are the application's choice, as for any library):

- ``tidings.operation``: one per GraphQL operation, on every transport (``tidings.transport``
  http, ws or sse; ``graphql.operation.type`` and ``graphql.operation.name``);
- ``tidings.commit``: a write's transaction, child of its operation, with the event's
  ``tidings.seq`` and ``tidings.cursor`` once committed;
- ``tidings.delivery``: one per subscription group an event was rendered for, linked to the
  commit span when the commit happened in this process (the broker carries only the seq),
  with ``tidings.seq``, ``tidings.cursor`` and ``tidings.subscribers``.

Off, every entry point is a check of ``enabled`` and a shared no-op context: nothing imported,
nothing allocated per call.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

__all__ = ["Tracing"]


class _NoSpan:
    """What a disabled ``Tracing`` hands out: every method does nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def committed(self, seq: int, cursor: str) -> None:
        return None


_NO_SPAN = _NoSpan()


class _CommitSpan:
    __slots__ = ("_manager", "_span", "_tracing")

    def __init__(self, tracing: Tracing, manager: contextlib.AbstractContextManager[Any]) -> None:
        self._tracing = tracing
        self._manager = manager
        self._span: Any = None

    def __enter__(self) -> _CommitSpan:
        self._span = self._manager.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._manager.__exit__(*exc)

    def committed(self, seq: int, cursor: str) -> None:
        self._span.set_attribute("tidings.seq", seq)
        self._span.set_attribute("tidings.cursor", cursor)
        self._tracing.remember(seq, self._span.get_span_context())


class Tracing:
    """The spans of one app; ``enabled`` False makes every method a no-op."""

    def __init__(self, enabled: bool = False, *, tracer_provider: Any = None, links_kept: int = 10_000) -> None:
        self.enabled = enabled
        self.links_kept = links_kept
        self._commits: OrderedDict[int, Any] = OrderedDict()  # seq -> SpanContext, newest last
        self._tracer: Any = None
        self._link: Any = None
        self._root: Any = None
        if enabled:
            from opentelemetry import trace  # the optional extra: checked at startup (tidings.startup)
            from opentelemetry.context import Context

            self._tracer = trace.get_tracer("tidings", tracer_provider=tracer_provider)
            self._link = trace.Link
            self._root = Context()  # no parent: a delivery runs in the dispatcher, not in the committing request

    def operation(self, transport: str, operation_type: str, name: str | None) -> Any:
        """A context manager around one GraphQL operation."""
        if not self.enabled:
            return _NO_SPAN
        attributes = {"tidings.transport": transport, "graphql.operation.type": operation_type}
        if name:
            attributes["graphql.operation.name"] = name
        return self._tracer.start_as_current_span("tidings.operation", attributes=attributes)

    def commit(self, collection: str, operation: str) -> _CommitSpan | _NoSpan:
        """A context manager around a write's transaction; call ``committed(seq, cursor)`` inside."""
        if not self.enabled:
            return _NO_SPAN
        attributes = {"tidings.collection": collection, "tidings.operation": operation}
        return _CommitSpan(self, self._tracer.start_as_current_span("tidings.commit", attributes=attributes))

    @contextlib.contextmanager
    def delivery(self, collection: str, seq: int, cursor: str, subscribers: int) -> Iterator[None]:
        """A span around one group's rendering and delivery of an event (only when ``enabled``)."""
        commit = self._commits.get(seq)
        links = [self._link(commit)] if commit is not None else None
        attributes = {
            "tidings.collection": collection,
            "tidings.seq": seq,
            "tidings.cursor": cursor,
            "tidings.subscribers": subscribers,
        }
        span = self._tracer.start_as_current_span(
            "tidings.delivery", context=self._root, attributes=attributes, links=links
        )
        with span:
            yield

    def remember(self, seq: int, span_context: Any) -> None:
        self._commits[seq] = span_context
        while len(self._commits) > self.links_kept:
            self._commits.popitem(last=False)
