"""OpenTelemetry spans (tidings/tracing.py): operations on every transport, commits, deliveries linked to them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.servers import Server, make_server, until, wait_subscribers
from tests.support.wsclient import WS
from tests.test_realtime_sse import read_events

CREATE = 'mutation { createTask(input: {title: "traced"}) { id } }'
EVENTS = "subscription { taskEvents { seq cursor record { title } } }"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def provider_of(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
def traced(tmp_path: Path, exporter: InMemorySpanExporter) -> Iterator[Server]:
    server = make_server(tmp_path, tracing="on", tracer_provider=provider_of(exporter))
    yield server
    server.stop()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def test_a_mutation_its_commit_and_the_deliveries_it_causes_are_spans_linked_by_the_cursor(
    traced: Server, exporter: InMemorySpanExporter
) -> None:
    ws = await WS.open(traced.ws_url)
    await ws.init()
    await ws.subscribe("1", EVENTS)
    async with (
        httpx.AsyncClient(base_url=traced.url, timeout=10) as client,
        client.stream("GET", "/graphql", params={"query": EVENTS}, headers={"accept": "text/event-stream"}) as sse,
    ):
        await wait_subscribers(traced, 2)
        assert (await client.post("/graphql", json={"query": CREATE})).json()["data"]["createTask"]["id"]
        event = (await ws.recv())["payload"]["data"]["taskEvents"]
        (sse_event,) = await read_events(sse, 1)
        assert json.loads(sse_event.data)["data"]["taskEvents"]["cursor"] == event["cursor"]
    await ws.close()
    await until(lambda: len(named(exporter, "tidings.delivery")) >= 1)

    operations = {
        (s.attributes["tidings.transport"], s.attributes["graphql.operation.type"]): s
        for s in named(exporter, "tidings.operation")
    }
    assert {("http", "mutation"), ("ws", "subscription"), ("sse", "subscription")} <= set(operations)
    (commit,) = named(exporter, "tidings.commit")
    mutation = operations[("http", "mutation")]
    assert commit.parent is not None and commit.parent.span_id == mutation.context.span_id
    assert commit.context.trace_id == mutation.context.trace_id
    assert commit.attributes["tidings.collection"] == "Task" and commit.attributes["tidings.operation"] == "create"
    assert commit.attributes["tidings.cursor"] == event["cursor"] and commit.attributes["tidings.seq"] == int(
        event["seq"]
    )
    deliveries = named(exporter, "tidings.delivery")
    # The WebSocket and SSE subscriptions: one group or two, every subscriber counted once.
    assert {d.attributes["tidings.cursor"] for d in deliveries} == {event["cursor"]}
    assert sum(d.attributes["tidings.subscribers"] for d in deliveries) == 2
    for delivery in deliveries:
        assert delivery.parent is None  # the dispatcher's own trace, linked to the commit
        assert [link.context.span_id for link in delivery.links] == [commit.context.span_id]


async def test_tracing_off_makes_no_span(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    server = make_server(tmp_path, tracer_provider=provider_of(exporter))  # --tracing off, the default
    try:
        assert not server.tidings.tracing.enabled
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            assert (await client.post("/graphql", json={"query": CREATE})).json()["data"]
        assert exporter.get_finished_spans() == ()
    finally:
        server.stop()
