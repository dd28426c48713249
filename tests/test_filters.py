"""The filter language: parser, and the SQL and Python compilers agreeing on every record."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.backends import service_url
from tidings.errors import BadUserInput
from tidings.filters import (
    MATCH_ALL,
    And,
    Compare,
    FieldKind,
    FieldSpec,
    Filter,
    Not,
    Op,
    Or,
    compile_predicate,
    compile_sql,
    equality_terms,
    parse_filter,
)
from tidings.store.tables import UTCDateTime

FIELDS = {
    "id": FieldSpec("id", "id", FieldKind.ID),
    "name": FieldSpec("name", "name", FieldKind.STRING),
    "note": FieldSpec("note", "note", FieldKind.STRING),
    "n": FieldSpec("n", "n", FieldKind.INT),
    "x": FieldSpec("x", "x", FieldKind.FLOAT),
    "flag": FieldSpec("flag", "flag", FieldKind.BOOLEAN),
    "at": FieldSpec("at", "at", FieldKind.DATETIME),
    "doc": FieldSpec("doc", "doc", FieldKind.JSON),
    "level": FieldSpec("level", "level", FieldKind.ENUM),
}

metadata = sa.MetaData()
TABLE = sa.Table(
    "things",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("note", sa.Text),
    sa.Column("n", sa.BigInteger),
    sa.Column("x", sa.Float),
    sa.Column("flag", sa.Boolean),
    sa.Column("at", UTCDateTime()),
    sa.Column("doc", sa.JSON(none_as_null=True)),
    sa.Column("level", sa.Text),
)


def test_parse_ands_fields_and_ops_and_skips_nulls() -> None:
    f = parse_filter({"n": {"gt": 1, "lte": 5, "eq": None}, "name": {"eq": "a"}}, FIELDS)
    assert f == And(
        (
            Compare("n", FieldKind.INT, Op.GT, 1),
            Compare("n", FieldKind.INT, Op.LTE, 5),
            Compare("name", FieldKind.STRING, Op.EQ, "a"),
        )
    )
    assert parse_filter(None, FIELDS) == MATCH_ALL
    assert parse_filter({}, FIELDS) == MATCH_ALL
    nested = parse_filter({"OR": [{"n": {"eq": 1}}, {"NOT": {"flag": {"eq": True}}}]}, FIELDS)
    assert nested == Or((Compare("n", FieldKind.INT, Op.EQ, 1), Not(Compare("flag", FieldKind.BOOLEAN, Op.EQ, True))))


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ({"n": {"contains": "x"}}, "n"),
        ({"nope": {"eq": 1}}, "nope"),
        ({"n": {"in": 3}}, "n"),
        ({"name": {"eq": 3}}, "name"),
        ({"doc": {"eq": 1}}, "doc"),
        ({"flag": {"isNull": "yes"}}, "flag"),
    ],
)
def test_parse_rejects_bad_input_naming_the_field(where: dict[str, Any], field: str) -> None:
    with pytest.raises(BadUserInput) as info:
        parse_filter(where, FIELDS)
    assert info.value.extensions["field"] == field


def test_parse_limits_depth_and_normalizes_datetimes() -> None:
    deep: dict[str, Any] = {"n": {"eq": 1}}
    for _ in range(20):
        deep = {"NOT": deep}
    with pytest.raises(BadUserInput):
        parse_filter(deep, FIELDS)
    f = parse_filter({"at": {"gt": "2026-01-01T02:00:00+02:00"}}, FIELDS)
    assert isinstance(f, Compare) and f.value == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_equality_terms_only_top_level_conjuncts() -> None:
    f = parse_filter({"name": {"eq": "r7"}, "AND": [{"n": {"eq": 2}}], "OR": [{"note": {"eq": "z"}}]}, FIELDS)
    assert equality_terms(f) == {"name": "r7", "n": 2}
    assert equality_terms(parse_filter({"NOT": {"name": {"eq": "x"}}}, FIELDS)) == {}


def test_predicate_two_valued_nulls() -> None:
    lt = compile_predicate(parse_filter({"n": {"lt": 3}}, FIELDS))
    not_lt = compile_predicate(parse_filter({"NOT": {"n": {"lt": 3}}}, FIELDS))
    assert (lt({"n": None}), not_lt({"n": None})) == (False, True)
    assert (lt({"n": 1}), not_lt({"n": 1})) == (True, False)
    assert compile_predicate(parse_filter({"name": {"contains": "B"}}, FIELDS))({"name": "abc"}) is False
    assert compile_predicate(parse_filter({"n": {"in": []}}, FIELDS))({"n": 1}) is False
    assert compile_predicate(parse_filter({"n": {"notIn": []}}, FIELDS))({"n": 1}) is True
    assert compile_predicate(parse_filter({"flag": {"eq": True}}, FIELDS))({"flag": 1}) is True


# -- property: SQL and Python agree ---------------------------------------------------

TEXT = st.sampled_from(["", "a", "A", "ab", "aB", "b%", "_x", "%", "é", "Zed", "zed", "a_b", "100%"])
INTS = st.integers(-3, 3)
FLOATS = st.sampled_from([-1.5, 0.0, 0.5, 2.0, 3.0])
TIMES = st.sampled_from([dt.datetime(2026, 1, d, h, tzinfo=dt.UTC) for d in (1, 2) for h in (0, 12)])
LEVELS = st.sampled_from(["LOW", "HIGH"])


def nullable(s: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), s)


RECORD = st.fixed_dictionaries(
    {
        "name": nullable(TEXT),
        "note": nullable(TEXT),
        "n": nullable(INTS),
        "x": nullable(FLOATS),
        "flag": nullable(st.booleans()),
        "at": nullable(TIMES),
        "doc": nullable(st.sampled_from([{"a": 1}, [1], "s"])),
        "level": nullable(LEVELS),
    }
)

VALUES = {
    "name": TEXT,
    "note": TEXT,
    "n": INTS,
    "x": FLOATS,
    "flag": st.booleans(),
    "at": TIMES,
    "level": LEVELS,
    "id": st.sampled_from(["r0", "r1", "r2", "zz"]),
}


@st.composite
def leaf(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(FIELDS)))
    from tidings.filters import OPS_BY_KIND

    op = draw(st.sampled_from(sorted(OPS_BY_KIND[FIELDS[name].kind], key=lambda o: o.value)))
    if op is Op.IS_NULL:
        return {name: {"isNull": draw(st.booleans())}}
    values = VALUES[name]
    if op in (Op.IN, Op.NOT_IN):
        return {name: {op.value: draw(st.lists(values, max_size=3))}}
    return {name: {op.value: draw(values)}}


WHERE = st.recursive(
    leaf(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"AND": xs}, st.lists(inner, max_size=3)),
        st.builds(lambda xs: {"OR": xs}, st.lists(inner, max_size=3)),
        st.builds(lambda x: {"NOT": x}, inner),
    ),
    max_leaves=6,
)


def check_agreement(engine: sa.Engine, dialect: str, records: list[dict[str, Any]], where: dict[str, Any]) -> None:
    rows = [{"id": f"r{i}", **r} for i, r in enumerate(records)]
    f: Filter = parse_filter(where, FIELDS)
    with engine.begin() as conn:
        conn.execute(TABLE.delete())
        if rows:
            conn.execute(TABLE.insert(), rows)
        selected = {r.id for r in conn.execute(sa.select(TABLE.c.id).where(compile_sql(f, TABLE, dialect)))}
    predicate = compile_predicate(f)
    expected = {r["id"] for r in rows if predicate(r)}
    assert selected == expected, (where, rows)


@pytest.fixture(scope="module")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{tmp_path_factory.mktemp('f') / 'f.db'}")
    metadata.create_all(engine)
    return engine


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(RECORD, max_size=6), where=WHERE)
def test_sql_and_python_agree_on_sqlite(
    sqlite_engine: sa.Engine, records: list[dict[str, Any]], where: dict[str, Any]
) -> None:
    check_agreement(sqlite_engine, "sqlite", records, where)


@settings(max_examples=150, deadline=None)
@given(records=st.lists(RECORD, max_size=6), where=WHERE)
def test_sql_and_python_agree_on_postgresql(records: list[dict[str, Any]], where: dict[str, Any]) -> None:
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    url = service_url("TIDINGS_TEST_PG_URL", "PostgreSQL")

    async def run() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
            async with engine.connect() as conn:
                await conn.run_sync(lambda sync: check_agreement_conn(sync, records, where))
        finally:
            await engine.dispose()

    asyncio.run(run())


def check_agreement_conn(conn: sa.Connection, records: list[dict[str, Any]], where: dict[str, Any]) -> None:
    rows = [{"id": f"r{i}", **r} for i, r in enumerate(records)]
    f = parse_filter(where, FIELDS)
    with conn.begin():
        conn.execute(TABLE.delete())
        if rows:
            conn.execute(TABLE.insert(), rows)
        selected = {r.id for r in conn.execute(sa.select(TABLE.c.id).where(compile_sql(f, TABLE, "postgresql")))}
    predicate = compile_predicate(f)
    assert selected == {r["id"] for r in rows if predicate(r)}, (where, rows)
