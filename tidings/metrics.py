"""Prometheus metrics: plain counters on the hot paths, turned into metric families at scrape time.

Hot paths bump ints on objects they already hold (the dispatcher, a connection's
``ConnectionStats``, this ``Metrics``); ``snapshot`` reads them when /metrics is
scraped, so a delivery costs an integer increment and nothing else. With several
worker processes (``PROMETHEUS_MULTIPROC_DIR`` set), each process writes its snapshot
to that directory once a second and whichever process answers a scrape sums them all,
together with the files of any prometheus_client metric the application defines.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import hmac
import ipaddress
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from graphql import FieldNode, GraphQLError, OperationDefinitionNode
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from strawberry.extensions import SchemaExtension
from strawberry.types.graphql import OperationType

from tidings.errors import ConfigurationError, ErrorCode

if TYPE_CHECKING:
    from tidings.realtime.dispatcher import Dispatcher
    from tidings.store import Store

__all__ = ["LATENCY_BOUNDS", "LatencyHistogram", "Metrics", "MetricsAccess", "MutationCounter"]

logger = logging.getLogger("tidings.metrics")

LATENCY_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the delivery latency buckets; one more bucket holds the rest."""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class LatencyHistogram:
    """Seconds from an event's commit to its frames' write, counted per delivery in fixed buckets."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BOUNDS) + 1)
        self.total = 0.0

    def observe(self, committed: dt.datetime, deliveries: int) -> None:
        """``deliveries`` frames for an event committed at ``committed`` were just written or queued."""
        seconds = max(time.time() - committed.timestamp(), 0.0)
        self.counts[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += deliveries
        self.total += seconds * deliveries


# name: (type, help, label names). Counters gain "_total" in the exposition.
_SPECS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "tidings_connections": ("gauge", "Open WebSocket connections and SSE streams", ("transport",)),
    "tidings_connections_opened": ("counter", "Connections opened", ("transport",)),
    "tidings_subscriptions": ("gauge", "Live subscriptions", ()),
    "tidings_subscription_groups": ("gauge", "Groups of identical subscriptions (one render per event each)", ()),
    "tidings_events_dispatched": ("counter", "Events the dispatcher fanned out", ()),
    "tidings_deliveries": ("counter", "Events pushed to subscribers' send queues (replays included)", ()),
    "tidings_delivery_latency_seconds": (
        "histogram",
        "Seconds from an event's commit to its frame's write (or queueing, when the socket is full)",
        (),
    ),
    "tidings_send_queue_frames": ("gauge", "Frames waiting in connections' send queues", ()),
    "tidings_send_queue_depth_max": ("gauge", "The longest connection send queue, in frames", ()),
    "tidings_slow_consumers_dropped": ("counter", "Connections closed for falling behind (4008)", ("transport",)),
    "tidings_replays": ("counter", "Resumes that replayed the event log", ()),
    "tidings_replayed_events": ("counter", "Events sent from the event log to resuming subscribers", ()),
    "tidings_gap_fills": ("counter", "Event log reads that filled a gap in the doorbells", ()),
    "tidings_broker_outages": ("counter", "Times the broker became unreachable", ()),
    "tidings_broker_reconnects": ("counter", "Broker subscriptions made again after one was lost", ()),
    "tidings_mutations": (
        "counter",
        "Mutations by collection and outcome (ok or the error code)",
        ("collection", "outcome"),
    ),
    "tidings_auth_failures": ("counter", "Refused credentials by transport and reason", ("transport", "reason")),
    "tidings_store_failures": (
        "counter",
        "Database transactions that failed UNAVAILABLE: writes (group commits, /readyz probes) and reads, by reason "
        "(disk_full, out_of_memory, io_error, unreachable)",
        ("operation", "reason"),
    ),
    "tidings_store_writable": (
        "gauge",
        "1, or 0 while the last write transaction failed UNAVAILABLE, until one commits (summed over processes)",
        (),
    ),
}
_MAX_GAUGES = frozenset({"tidings_send_queue_depth_max"})

Snapshot = dict[str, dict[str, Any]]
"""name -> label values joined by _SEP -> a number, or [bucket counts..., sum] for a histogram."""
_SEP = "\x1f"


class Metrics:
    """This process's figures: counters kept here, gauges read from the app's parts at scrape time."""

    def __init__(
        self,
        store: Store | None = None,
        *,
        dispatcher: Dispatcher | None = None,
        latency: LatencyHistogram | None = None,
        connections: Iterable[Any] = (),
    ) -> None:
        self.store = store
        self.connections_opened: defaultdict[str, int] = defaultdict(int)
        self.slow_consumers: defaultdict[str, int] = defaultdict(int)
        self.auth_failures: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.mutations: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.closed_deliveries = 0  # deliveries of connections that closed; live ones count on their stats
        self.latency = latency or LatencyHistogram()
        self.dispatcher = dispatcher
        self.connections = connections  # live connections, each with .stats and .queue

    def auth_failed(self, transport: str, error: Exception) -> None:
        self.auth_failures[transport, auth_reason(error)] += 1

    def snapshot(self) -> Snapshot:
        """Every figure now, keyed for merging with other processes' snapshots."""
        out: Snapshot = {name: {} for name in _SPECS}
        live: defaultdict[str, int] = defaultdict(int)
        deliveries, frames, deepest = self.closed_deliveries, 0, 0
        for conn in list(self.connections):
            stats = conn.stats
            live[stats.transport] += 1
            deliveries += stats.delivered
            depth = conn.queue.pending
            frames += depth
            deepest = max(deepest, depth)
        for transport in ("ws", "sse"):
            out["tidings_connections"][transport] = live.get(transport, 0)
        out["tidings_connections_opened"] = dict(self.connections_opened)
        out["tidings_deliveries"][""] = deliveries
        out["tidings_send_queue_frames"][""] = frames
        out["tidings_send_queue_depth_max"][""] = deepest
        out["tidings_delivery_latency_seconds"][""] = [*self.latency.counts, self.latency.total]
        out["tidings_slow_consumers_dropped"] = dict(self.slow_consumers)
        out["tidings_auth_failures"] = {_SEP.join(k): v for k, v in self.auth_failures.items()}
        out["tidings_mutations"] = {_SEP.join(k): v for k, v in self.mutations.items()}
        if self.store is not None:
            out["tidings_store_failures"] = {_SEP.join(k): v for k, v in list(self.store.failures.items())}
            out["tidings_store_writable"][""] = int(self.store.write_fault is None)
        d = self.dispatcher
        if d is not None:
            out["tidings_subscriptions"][""] = d.subscriber_count
            out["tidings_subscription_groups"][""] = len(d.groups)
            out["tidings_events_dispatched"][""] = d.dispatched
            out["tidings_gap_fills"][""] = d.gaps_filled
            out["tidings_broker_outages"][""] = d.broker_outages
            out["tidings_broker_reconnects"][""] = max(d.broker_subscriptions - 1, 0)
            out["tidings_replays"][""] = d.replayer.replays
            out["tidings_replayed_events"][""] = d.replayer.replayed
        return out


def auth_reason(error: Exception) -> str:
    """A bounded label for why credentials were refused."""
    code = getattr(error, "code", None)
    if code is ErrorCode.FORBIDDEN:
        return "forbidden"
    message = str(getattr(error, "message", error))
    if "expired" in message.lower():
        return "expired"
    if message.startswith("Authorization must be"):
        return "malformed"
    return "invalid"


def merge(snapshots: Iterable[tuple[Snapshot, bool]]) -> Snapshot:
    """Sum snapshots of several processes; gauges only over live ones (``True``), max gauges by max."""
    out: Snapshot = {name: {} for name in _SPECS}
    for snapshot, alive in snapshots:
        for name, values in snapshot.items():
            spec = _SPECS.get(name)
            if spec is None or (spec[0] == "gauge" and not alive):
                continue
            into = out[name]
            for key, value in values.items():
                if spec[0] == "histogram":
                    before = into.get(key)
                    into[key] = value if before is None else [a + b for a, b in zip(before, value, strict=True)]
                elif name in _MAX_GAUGES:
                    into[key] = max(into.get(key, 0), value)
                else:
                    into[key] = into.get(key, 0) + value
    return out


def families(snapshot: Snapshot) -> Iterator[Metric]:
    for name, (kind, help_text, labels) in _SPECS.items():
        values = snapshot.get(name, {})
        family: Metric
        if kind == "histogram":
            family = HistogramMetricFamily(name, help_text, labels=list(labels))
            for key, counts in values.items():
                cumulative, buckets = 0, []
                for bound, count in zip([*map(str, LATENCY_BOUNDS), "+Inf"], counts[:-1], strict=True):
                    cumulative += count
                    buckets.append((bound, float(cumulative)))
                family.add_metric(_labels(key, labels), buckets, counts[-1])
        else:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = cls(name, help_text, labels=list(labels))
            for key, value in values.items():
                family.add_metric(_labels(key, labels), value)
        yield family


def _labels(key: str, names: tuple[str, ...]) -> list[str]:
    return key.split(_SEP) if names else []


class _Collector(Collector):
    def __init__(self, read: Callable[[], Snapshot]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        return families(self.read())


class MultiProcess:
    """``PROMETHEUS_MULTIPROC_DIR``: this process's snapshot in a file there, every process's summed on scrape.

    A file is replaced whole (written beside, then renamed), so a scrape never reads half
    of one. A process that exited leaves its counters (totals never go down) but not its
    gauges: a file whose process is gone counts as dead, however it ended.
    """

    def __init__(self, directory: Path, metrics: Metrics, *, interval: float = 1.0) -> None:
        self.directory = directory
        self.metrics = metrics
        self.interval = interval
        self.path = directory / f"tidings_{os.getpid()}_{id(metrics):x}.json"
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.write()
        self._task = asyncio.create_task(self._run(), name="tidings-metrics")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.write(alive=False)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.write()
            except OSError as exc:
                logger.warning("Cannot write metrics to %s: %s", self.directory, exc)

    def write(self, *, alive: bool = True) -> None:
        data = {"pid": os.getpid(), "alive": alive, "metrics": self.metrics.snapshot()}
        temporary = self.path.with_suffix(".tmp")
        temporary.write_bytes(orjson.dumps(data))
        temporary.replace(self.path)

    def read(self) -> Snapshot:
        own = self.metrics.snapshot()  # this process's figures as of now, not of its last write
        snapshots: list[tuple[Snapshot, bool]] = [(own, True)]
        for path in self.directory.glob("tidings_*.json"):
            if path == self.path:
                continue
            try:
                data = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue  # removed meanwhile
            snapshots.append((data["metrics"], bool(data.get("alive")) and _is_running(int(data["pid"]))))
        return merge(snapshots)


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def registry_for(
    metrics: Metrics, environ: Mapping[str, str] | None = None
) -> tuple[CollectorRegistry, MultiProcess | None]:
    """The registry /metrics serves: this process alone, or every process sharing the directory."""
    environ = os.environ if environ is None else environ
    registry = CollectorRegistry(auto_describe=False)
    directory = environ.get(MULTIPROC_ENV)
    if not directory:
        registry.register(_Collector(metrics.snapshot))
        ProcessCollector(registry=registry)
        return registry, None
    shared = MultiProcess(Path(directory), metrics)
    registry.register(_Collector(shared.read))
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call] # the application's own prometheus_client metrics
    return registry, shared


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(registry), CONTENT_TYPE_LATEST


class MetricsAccess:
    """``--metrics``: off, ``loopback`` (only 127.0.0.0/8 and ::1) or ``token:<secret>`` (a bearer token)."""

    def __init__(self, setting: str) -> None:
        value = setting.strip()
        self.enabled = value.lower() != "off"
        self.loopback = value.lower() == "loopback"
        self.token: bytes | None = None
        if value.lower().startswith("token:"):
            secret = value[len("token:") :]
            if len(secret) < 16:
                raise ConfigurationError(
                    f"--metrics token:<secret>: the secret needs 16 characters or more, got {len(secret)}"
                )
            self.token = secret.encode()
        elif self.enabled and not self.loopback:
            raise ConfigurationError(f"--metrics must be off, loopback or token:<secret>, got {setting!r}")

    def check(self, client: str | None, authorization: str | None) -> int:
        """The HTTP status to answer with: 200 to serve, 404 when off, 403 or 401 when refused."""
        if not self.enabled:
            return 404
        if self.token is not None:
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token):
                return 200
            return 401
        return 200 if _is_loopback(client) else 403


def _is_loopback(client: str | None) -> bool:
    if client is None:
        return False
    try:
        return ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False


class MutationCounter(SchemaExtension):
    """Counts each mutation root field by collection and outcome: ``ok`` or its error's code."""

    metrics: Metrics
    collections: Mapping[str, str]  # mutation field name -> collection name

    def on_operation(self) -> Iterator[None]:
        yield
        ec = self.execution_context
        result = ec.result
        document = ec.graphql_document
        if result is None or document is None or ec.operation_type is not OperationType.MUTATION:
            return
        operation = next(
            (
                d
                for d in document.definitions
                if isinstance(d, OperationDefinitionNode)
                and (ec.operation_name is None or (d.name is not None and d.name.value == ec.operation_name))
            ),
            None,
        )
        if operation is not None:
            count_mutations(self.metrics, self.collections, operation, result.errors)


def count_mutations(
    metrics: Metrics,
    collections: Mapping[str, str],
    operation: OperationDefinitionNode,
    errors: Sequence[GraphQLError] | None,
) -> None:
    """Counts a mutation's root fields by collection and outcome: ``ok`` or its error's code."""
    failed: dict[str, str] = {}
    for error in errors or ():
        if not error.path:
            return  # the request never ran (validation): no mutation happened
        code = (error.extensions or {}).get("code", ErrorCode.INTERNAL_SERVER_ERROR.value)
        failed.setdefault(str(error.path[0]), str(code))
    for selection in operation.selection_set.selections:
        if not isinstance(selection, FieldNode):
            continue
        collection = collections.get(selection.name.value)
        if collection is None:
            continue
        key = (selection.alias or selection.name).value
        metrics.mutations[collection, failed.get(key, "ok")] += 1


def mutation_counter(metrics: Metrics, collections: Mapping[str, str]) -> type[MutationCounter]:
    """A ``MutationCounter`` bound to this app's figures and mutation fields."""
    return type("MutationCounter", (MutationCounter,), {"metrics": metrics, "collections": dict(collections)})
