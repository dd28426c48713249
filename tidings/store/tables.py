"""SQLAlchemy tables: one real table per collection, the event log, and meta."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from tidings.filters import FieldKind
from tidings.model.collection import MISSING, Collection


class UTCDateTime(sa.types.TypeDecorator[dt.datetime]):
    """Stores instants in UTC and returns aware UTC datetimes.

    SQLite keeps a fixed-width naive text, so text order is time order, which
    the filter compiler relies on; PostgreSQL keeps ``timestamptz``.
    """

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(sa.DateTime(timezone=True))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _column_type(kind: FieldKind) -> sa.types.TypeEngine[Any]:
    if kind is FieldKind.STRING or kind is FieldKind.ENUM or kind is FieldKind.ID:
        return sa.Text()
    if kind is FieldKind.INT:
        return sa.BigInteger()
    if kind is FieldKind.FLOAT:
        return sa.Float()
    if kind is FieldKind.BOOLEAN:
        return sa.Boolean()
    if kind is FieldKind.DATETIME:
        return UTCDateTime()
    return sa.JSON(none_as_null=True)


def _info(default: Any) -> dict[str, Any]:
    return {} if default is MISSING else {"default": default}


DELETED_AT = "deleted_at"
SEQ_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Tables:
    """The schema's tables, built once at start-up (never per request)."""

    def __init__(self, collections: list[Collection]) -> None:
        self.metadata = sa.MetaData()
        self.events = sa.Table(
            "tidings_events",
            self.metadata,
            # AUTOINCREMENT on SQLite: a pruned or rolled-back number is never reused.
            sa.Column("seq", SEQ_TYPE, primary_key=True, autoincrement=True),
            sa.Column("collection", sa.Text(), nullable=False),
            sa.Column("operation", sa.Text(), nullable=False),
            sa.Column("record_id", sa.Text(), nullable=False),
            sa.Column("account", sa.Text(), nullable=True),
            sa.Column("record", sa.JSON(), nullable=False),
            sa.Column("previous", sa.JSON(), nullable=False),
            sa.Column("changed_fields", sa.JSON(), nullable=False),
            sa.Column("timestamp", UTCDateTime(), nullable=False),
            sa.Column("actor", sa.Text(), nullable=True),
            sqlite_autoincrement=True,
        )
        self.meta = sa.Table(
            "tidings_meta",
            self.metadata,
            sa.Column("key", sa.Text(), primary_key=True),
            sa.Column("value", sa.BigInteger(), nullable=False),
        )
        self.by_collection: dict[str, sa.Table] = {}
        table_names = {c.name: c.table_name for c in collections}
        for c in collections:
            references = c.reference_by_column
            columns = [
                sa.Column("id", sa.Text(), primary_key=True),
                sa.Column("account", sa.Text(), nullable=True, index=True),
                sa.Column("created_at", UTCDateTime(), nullable=False),
                sa.Column("updated_at", UTCDateTime(), nullable=False),
                sa.Column("version", sa.BigInteger(), nullable=False),
            ]
            for f in c.fields:
                ref = references.get(f.name)
                # A field's default rides along for migrations: what existing rows get when it is added.
                if ref is None:
                    columns.append(sa.Column(f.name, _column_type(f.kind), nullable=f.nullable, info=_info(f.default)))
                else:
                    # A real foreign key (SQLite enforces it with PRAGMA foreign_keys=ON); what a delete
                    # does to the rows that reference it is done by the store, an event per row, so the
                    # key itself only refuses (NO ACTION) what would leave a reference dangling.
                    target = sa.ForeignKey(f"{table_names[ref.target]}.id", name=f"fk_{c.table_name}_{f.name}")
                    columns.append(
                        sa.Column(f.name, sa.Text(), target, nullable=f.nullable, index=True, info=_info(f.default))
                    )
            if c.soft_delete:
                # Set by a soft delete: the row stays (restore), hidden from every read, until purged.
                columns.append(sa.Column(DELETED_AT, UTCDateTime(), nullable=True, index=True))
            self.by_collection[c.name] = sa.Table(c.table_name, self.metadata, *columns)  # type: ignore[call-overload]
