"""Hostile documents: bounded parsing, nothing kept of what was refused, big texts off the loop."""

from __future__ import annotations

import json
import threading
import uuid

import httpx
import pytest
from graphql import GraphQLSchema

from tests.support.servers import Server
from tests.support.wsclient import WS
from tests.test_realtime_sse import read_events
from tidings.auth.principal import ANONYMOUS, Principal
from tidings.engine.build import build_schema
from tidings.engine.documents import Documents
from tidings.model.collection import collections_from
from tidings.model.demo import COLLECTIONS
from tidings.schema.extensions import classify_all
from tidings.schema.validation import Introspection


def directives(count: int) -> str:
    return "{ __typename" + " @a" * count + " } # " + uuid.uuid4().hex


def long_list(count: int, item: str = '"x"') -> str:
    return "{ tasks(where: {title: {in: [" + ",".join([item] * count) + "]}}) { id } } # " + uuid.uuid4().hex


@pytest.fixture(scope="module")
def schema() -> GraphQLSchema:
    strawberry_schema, _ = build_schema(collections_from(COLLECTIONS))
    return strawberry_schema._schema


def codes(documents: Documents, schema: GraphQLSchema, query: str) -> list[str]:
    """The codes the transports answer (``classify`` gives graphql-core's errors theirs)."""
    return [(e.extensions or {})["code"] for e in classify_all(documents.get(schema, query, ANONYMOUS).errors)]


def test_a_document_past_the_token_limit_is_refused_and_nothing_of_it_is_kept(schema: GraphQLSchema) -> None:
    documents = Documents(max_tokens=5_000)
    query = directives(83_000)  # ~250 KB: the document
    parsed = documents.get(schema, query, ANONYMOUS)
    assert parsed.document is None
    assert [e.message for e in parsed.errors] == [
        "Syntax Error: Document contains more than 5000 tokens. Parsing aborted."
    ]
    assert documents.cached() == (0, 0)
    # Refused again from the digest's entry: its errors carry no source text and no nodes.
    (kept,) = documents.get(schema, query, ANONYMOUS).errors
    assert kept.source is None and kept.nodes is None and kept.locations == parsed.errors[0].locations


def test_directives_piled_on_one_location_are_bad_user_input(schema: GraphQLSchema) -> None:
    documents = Documents(max_directives=10)
    assert codes(documents, schema, directives(11)) == ["BAD_USER_INPUT"]
    assert "More than 10 directives" in documents.get(schema, directives(11), ANONYMOUS).errors[0].message
    assert codes(documents, schema, "{ __typename @skip(if: false) }") == []


def test_a_list_literal_too_long_is_bad_user_input(schema: GraphQLSchema) -> None:
    documents = Documents(max_list_items=1_000)
    assert codes(documents, schema, long_list(1_001)) == ["BAD_USER_INPUT"]
    assert codes(documents, schema, long_list(1_000)) == []


def test_only_valid_documents_are_cached_and_the_cache_is_bounded_by_bytes(schema: GraphQLSchema) -> None:
    documents = Documents(cache_entries=1_000, cache_bytes=64 * 200)
    assert codes(documents, schema, "{ nope }") == ["GRAPHQL_VALIDATION_FAILED"]
    assert codes(documents, schema, "{ tasks { id ") == ["GRAPHQL_PARSE_FAILED"]
    assert documents.cached() == (0, 0)
    padded = [f"{{ tasks(limit: {i}) {{ id }} }} # {'p' * 150}" for i in range(1, 200)]
    for query in padded:
        assert documents.get(schema, query, ANONYMOUS).document is not None
    entries, size = documents.cached()
    assert size <= 64 * 200 and 0 < entries < len(padded)
    newest = documents.get(schema, padded[-1], ANONYMOUS)
    assert documents.get(schema, padded[-1], ANONYMOUS) is newest  # it stayed


def test_introspection_is_judged_per_caller_on_one_cached_document(schema: GraphQLSchema) -> None:
    documents = Documents(introspection=Introspection.AUTHENTICATED)
    query, alice = "{ __schema { queryType { name } } }", Principal(sub="alice")
    refused = documents.get(schema, query, ANONYMOUS)
    assert refused.document is None
    assert [(e.extensions or {}).get("code") for e in classify_all(refused.errors)] == ["GRAPHQL_VALIDATION_FAILED"] * 2
    allowed = documents.get(schema, query, alice)
    assert allowed.document is not None and allowed.errors == []
    assert documents.get(schema, query, alice) is allowed and documents.cached()[0] == 1  # one entry for both
    assert documents.get(schema, query, None) is allowed  # what the document is, not who may run it
    off = Documents(introspection=Introspection.OFF)
    assert off.get(schema, query, alice).document is None
    assert off.get(schema, "{ tasks { id __typename } }", ANONYMOUS).errors == []


async def test_a_big_document_is_parsed_in_the_documents_thread(schema: GraphQLSchema) -> None:
    documents = Documents(offload_bytes=1_000)
    seen: list[str] = []
    compile_ = documents.compile

    def spy(s: GraphQLSchema, q: str) -> object:
        seen.append(threading.current_thread().name)
        return compile_(s, q)

    documents.compile = spy  # type: ignore[method-assign]
    big = "{ tasks { id } } # " + "x" * 2_000
    await documents.prepare(schema, big)
    await documents.prepare(schema, "{ tasks { title } }")  # small: left to get(), on the loop
    assert seen == ["tidings-documents_0"]
    assert documents.get(schema, big, ANONYMOUS).document is not None
    assert seen == ["tidings-documents_0"]  # from the cache
    documents.close()


async def test_big_unique_documents_are_refused_on_every_transport_and_not_cached(server: Server) -> None:
    engine = server.tidings.engine
    before = engine.documents.cached()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for query in (directives(60_000), long_list(40_000, "{}")):
            response = await client.post("/graphql", json={"query": query})
            assert response.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
        response = await client.post(
            "/graphql",
            json={"query": directives(60_000)},
            headers={"accept": "application/graphql-response+json"},
        )
        assert response.status_code == 400
        assert response.json()["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
        async with client.stream(
            "POST",
            "/graphql",
            json={"query": "subscription " + directives(60_000)},
            headers={"accept": "text/event-stream"},
        ) as stream:
            (event,) = await read_events(stream, 1)
            assert json.loads(event.data)["errors"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
        # A valid big document still runs (parsed in the documents thread).
        big_valid = "{ tasks { id } } # " + "x" * 50_000
        assert (await client.post("/graphql", json={"query": big_valid})).json()["data"] == {"tasks": []}
    ws = await WS.open(server.ws_url)
    await ws.init()
    await ws.subscribe("1", "subscription " + directives(60_000))
    message = await ws.recv()
    assert message["type"] == "error" and message["payload"][0]["extensions"]["code"] == "GRAPHQL_PARSE_FAILED"
    await ws.close()
    entries, size = engine.documents.cached()
    assert size - before[1] <= len(big_valid) and entries - before[0] <= 1


async def test_piled_directives_in_an_sse_subscription_are_bad_user_input(server: Server) -> None:
    query = "subscription { taskEvents" + " @skip(if: false)" * 11 + " { seq } }"
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as client,
        client.stream("GET", "/graphql", params={"query": query}, headers={"accept": "text/event-stream"}) as stream,
    ):
        (event,) = await read_events(stream, 1)
        (error,) = json.loads(event.data)["errors"]
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert error["message"] == "More than 10 directives at one location"
