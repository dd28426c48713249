"""Resolvers take graphql-core's coerced arguments directly: every kind of argument, over a real server."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from strawberry.types.base import StrawberryObjectDefinition

from tests.support.servers import Server, gql_post, make_server
from tidings.engine.build import build_schema
from tidings.model.collection import JSON, collection, collections_from
from tidings.resolvers.crud import DIRECT


class Level(enum.Enum):
    LOW = "low"
    MID = "mid"
    HIGH = "high"


@collection(soft_delete=True)
class Sensor:
    """Every kind of argument value: enum, JSON, datetime, optional and defaulted fields."""

    label: str
    level: Level = Level.LOW
    reading: float | None = None
    at: dt.datetime | None = None
    data: JSON | None = None
    note: str | None = None


COLLECTIONS = collections_from([Sensor])


def test_every_generated_query_and_mutation_runs_unwrapped() -> None:
    """graphql-core calls the collection resolvers themselves, not Strawberry's argument-converting wrapper."""
    schema, _ = build_schema(COLLECTIONS)
    direct: set[str] = set()
    for concrete in schema.schema_converter.type_map.values():
        definition = concrete.definition
        if not isinstance(definition, StrawberryObjectDefinition) or definition.name not in ("Query", "Mutation"):
            continue
        fields = schema._schema.get_type(definition.name).fields  # type: ignore[union-attr]
        for field in definition.fields:
            if field.metadata.get(DIRECT):
                assert field.base_resolver is not None
                assert fields[field.graphql_name or field.name].resolve is field.base_resolver.wrapped_func
                direct.add(field.graphql_name or field.name)
    assert direct == {
        "sensor",
        "sensors",
        "sensorsCount",
        "sensorsConnection",
        "sensorsAggregate",
        "createSensor",
        "updateSensor",
        "deleteSensor",
        "restoreSensor",
    }


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = make_server(tmp_path, collections=COLLECTIONS)
    try:
        yield s
    finally:
        s.stop()


FIELDS = "id label level reading at data note version"


async def _ok(http: httpx.AsyncClient, query: str, variables: dict[str, Any] | None = None) -> Any:
    body = await gql_post(http, query, variables)
    assert "errors" not in body, body
    return body["data"]


async def test_arguments_of_every_kind_reach_the_store(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        create = f"mutation($in: CreateSensorInput!) {{ createSensor(input: $in) {{ {FIELDS} }} }}"
        a = (await _ok(http, create, {"in": {"label": "a", "level": "HIGH", "at": "2026-01-02T03:04:05+02:00"}}))[
            "createSensor"
        ]
        assert a["level"] == "HIGH" and a["at"] == "2026-01-02T01:04:05+00:00" and a["reading"] is None
        # Literals rather than variables, enum and JSON object literals included.
        b = (
            await _ok(
                http,
                f'mutation {{ createSensor(input: {{label: "b", level: MID, reading: 2.5, data: {{k: [1, "x"]}}}})'
                f" {{ {FIELDS} }} }}",
            )
        )["createSensor"]
        assert (b["level"], b["reading"], b["data"]) == ("MID", 2.5, {"k": [1, "x"]})
        c = (await _ok(http, create, {"in": {"label": "c", "note": "keep"}}))["createSensor"]
        assert c["level"] == "LOW"  # the declared default

        # Update: an omitted field keeps its value, an explicit null clears it, enums by name.
        update = f"""mutation($id: ID!, $in: UpdateSensorInput!, $v: Int) {{
            updateSensor(id: $id, input: $in, expectedVersion: $v) {{ {FIELDS} }} }}"""
        changed = (await _ok(http, update, {"id": c["id"], "in": {"level": "HIGH", "reading": 1.0}, "v": 1}))[
            "updateSensor"
        ]
        assert (changed["level"], changed["reading"], changed["note"], changed["version"]) == ("HIGH", 1.0, "keep", 2)
        cleared = (await _ok(http, update, {"id": c["id"], "in": {"note": None}}))["updateSensor"]
        assert cleared["note"] is None and cleared["level"] == "HIGH" and cleared["version"] == 3
        stale = await gql_post(http, update, {"id": c["id"], "in": {"label": "x"}, "v": 1})
        assert stale["errors"][0]["extensions"]["code"] == "CONFLICT"

        # Filters on an enum (eq, in, NOT), nested OR, a datetime; two sort keys, one an enum.
        listing = """query($w: SensorWhere, $o: [SensorOrderBy!]) { sensors(where: $w, orderBy: $o) { label } }"""
        labels = await _ok(
            http, listing, {"w": {"level": {"in": ["HIGH", "MID"]}}, "o": [{"level": "DESC"}, {"label": "ASC"}]}
        )
        # Enums sort by their stored value: "mid" < "high" descending is mid, then high.
        assert [r["label"] for r in labels["sensors"]] == ["b", "a", "c"]
        query = """{ sensors(where: {OR: [{level: {eq: LOW}}, {NOT: {at: {isNull: true}}}]}, orderBy: [{label: DESC}])
                     { label } sensorsCount(where: {level: {ne: HIGH}}) }"""
        got = await _ok(http, query)
        assert got == {"sensors": [{"label": "a"}], "sensorsCount": 1}
        one = await _ok(http, "query($id: ID!) { sensor(id: $id) { label } }", {"id": b["id"]})
        assert one == {"sensor": {"label": "b"}}

        # Strawberry's own path (a GET query) runs the same resolvers.
        response = await http.get("/graphql", params={"query": '{ sensors(where: {label: {eq: "b"}}) { level } }'})
        assert response.json()["data"] == {"sensors": [{"level": "MID"}]}

        # Bad arguments are the resolver's own errors, with their codes.
        bad = await gql_post(http, "{ sensors(orderBy: [{label: ASC, level: DESC}]) { id } }")
        assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        bad = await gql_post(http, "{ sensors(limit: -1) { id } }")
        assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        bad = await gql_post(http, "mutation { createSensor(input: {label: null}) { id } }")
        assert bad["errors"][0]["extensions"]["code"] in ("BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED")

        # Delete and restore take the id alone.
        gone = await _ok(http, "mutation($id: ID!) { deleteSensor(id: $id) { label } }", {"id": a["id"]})
        assert gone == {"deleteSensor": {"label": "a"}}
        assert await _ok(http, "{ sensorsCount }") == {"sensorsCount": 2}
        back = await _ok(http, "mutation($id: ID!) { restoreSensor(id: $id) { label } }", {"id": a["id"]})
        assert back == {"restoreSensor": {"label": "a"}}
