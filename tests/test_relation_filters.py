"""Relation filters: the SQL compiler and the Python predicate (over records ``expand``ed with
their related rows, one batch per relation and level) agree, on SQLite and PostgreSQL, for
random data and random filters that follow references and back references, under read guards."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.backends import fresh_database
from tidings import Many, Ref, collection, many, ref
from tidings.filters import MATCH_ALL, Compare, FieldKind, Filter, Op, compile_predicate, parse_filter
from tidings.model.collection import Collection, collections_from
from tidings.store import Store
from tidings.store.relations import expand


@collection
class Team:
    name: str
    size: int | None = None
    projects: Many[Venture] = many(via="team")


@collection(plural="ventures")
class Venture:
    name: str
    archived: bool = False
    team: Ref[Team] | None = ref(on_delete="set_null")
    jobs: Many[Job] = many(via="venture")


@collection
class Job:
    title: str
    status: str | None = None
    priority: int | None = None
    venture: Ref[Venture] | None = ref(on_delete="cascade")
    parent: Ref[Job] | None = ref(on_delete="set_null")
    children: Many[Job] = many(via="parent")


COLLECTIONS: list[Collection] = collections_from([Team, Venture, Job])
TEAM, VENTURE, JOB = COLLECTIONS
STATUSES = ["open", "done", None]
NAMES = ["a", "b", "c"]


def scalar_where(coll: Collection, rng: random.Random) -> dict[str, Any]:
    if coll is JOB:
        choice = rng.choice(["status", "priority", "title"])
        if choice == "status":
            return {
                "status": rng.choice([{"eq": rng.choice(STATUSES[:2])}, {"isNull": rng.random() < 0.5}, {"ne": "open"}])
            }
        if choice == "priority":
            return {"priority": {rng.choice(["gt", "lte", "eq"]): rng.randint(0, 3)}}
        return {"title": {"in": rng.sample(NAMES, 2)}}
    if coll is VENTURE:
        return rng.choice([{"archived": {"eq": rng.random() < 0.5}}, {"name": {"eq": rng.choice(NAMES)}}])
    return rng.choice(
        [{"size": {"gt": rng.randint(0, 3)}}, {"name": {"ne": rng.choice(NAMES)}}, {"size": {"isNull": True}}]
    )


RELATIONS: dict[str, list[tuple[str, Collection, bool]]] = {
    "Team": [("projects", VENTURE, True)],
    "Venture": [("team", TEAM, False), ("jobs", JOB, True)],
    "Job": [("venture", VENTURE, False), ("parent", JOB, False), ("children", JOB, True)],
}


def random_where(coll: Collection, rng: random.Random, depth: int = 0) -> dict[str, Any]:
    roll = rng.random()
    if depth >= 3 or roll < 0.3:
        return scalar_where(coll, rng)
    if roll < 0.45:
        key = rng.choice(["AND", "OR"])
        return {key: [random_where(coll, rng, depth + 1) for _ in range(rng.randint(1, 2))]}
    if roll < 0.55:
        return {"NOT": random_where(coll, rng, depth + 1)}
    name, target, to_many = rng.choice(RELATIONS[coll.name])
    inner = random_where(target, rng, depth + 1) if rng.random() < 0.85 else {}
    if to_many:
        return {name: {rng.choice(["some", "none", "every"]): inner}}
    return {name: inner}


def guard_for(restricted: bool) -> Any:
    """A read guard per collection: jobs with priority 3 (or ventures named "c") unreadable."""
    guards: dict[str, Filter] = {
        "Job": Compare("priority", FieldKind.INT, Op.NE, 3) if restricted else MATCH_ALL,
        "Venture": Compare("name", FieldKind.STRING, Op.NE, "c") if restricted else MATCH_ALL,
        "Team": MATCH_ALL,
    }
    return guards.__getitem__


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(await fresh_database(request.param, tmp_path), COLLECTIONS)
    await s.start()
    yield s
    await s.close()


async def seed(store: Store, rng: random.Random) -> None:
    teams = [
        (
            await store.create(
                TEAM, {"name": rng.choice(NAMES), "size": rng.choice([None, 0, 1, 2, 3])}, account=None, actor=None
            )
        )[0]["id"]
        for _ in range(3)
    ]
    ventures = []
    for _ in range(5):
        values = {"name": rng.choice(NAMES), "archived": rng.random() < 0.4, "team_id": rng.choice([None, *teams])}
        ventures.append((await store.create(VENTURE, values, account=None, actor=None))[0]["id"])
    jobs: list[str] = []
    for _ in range(14):
        values = {
            "title": rng.choice(NAMES),
            "status": rng.choice(STATUSES),
            "priority": rng.choice([None, 0, 1, 2, 3]),
            "venture_id": rng.choice([None, *ventures]),
            "parent_id": rng.choice([None, *jobs]) if jobs else None,
        }
        jobs.append((await store.create(JOB, values, account=None, actor=None))[0]["id"])
    # A soft-deleted-like gap: delete one venture (its jobs cascade) so some references go.
    await store.delete(VENTURE, ventures[-1], guard=MATCH_ALL, actor=None)


async def test_sql_and_the_expanded_predicate_agree_on_relation_filters(store: Store) -> None:
    rng = random.Random(20261206)
    await seed(store, rng)
    checked = 0
    async with store.reader() as reader:
        everything = {c.name: await reader.list(c, MATCH_ALL) for c in COLLECTIONS}
        for case in range(240):
            coll = rng.choice(COLLECTIONS)
            where = random_where(coll, rng)
            flt = parse_filter(where, coll.filter_fields, guard_for=guard_for(case % 2 == 1))
            selected = {r["id"] for r in await reader.list(coll, flt)}
            expanded = await expand(reader, coll, everything[coll.name], flt)
            predicate = compile_predicate(flt)
            assert selected == {r["id"] for r in expanded if predicate(r)}, (coll.name, where)
            checked += bool(selected) + 1
    assert checked > 240  # some filters selected something
