"""Channel numbers, history and presence entries in PostgreSQL: the PostgreSQL
broker, so every process on the database shares them, in four tables named
after the topic (created on start) and reached through the broker's pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Iterable
from typing import Protocol

import asyncpg
import orjson

from tidings.pubsub.base import BrokerUnavailable
from tidings.pubsub.channel_store import Entry, living

# NOTIFY refuses a payload of 8000 bytes or more (the default block size).
MAX_PAYLOAD = 7999


class _Broker(Protocol):
    """What the store needs of its PostgreSQL broker (tidings.pubsub.postgres.PostgresBroker)."""

    connect_timeout: float

    @property
    def pool(self) -> asyncpg.Pool: ...

    async def publish(self, channel: str, message: bytes) -> None: ...


_FAULTS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)
# A pooled connection from before a server restart (or a terminated backend) fails with
# these before the statement ran: one more try on a fresh connection is safe.
_STALE = (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncpg.exceptions.AdminShutdownError)
_CLEANUP_INTERVAL = 60.0  # seconds between one process's removals of expired rows
_SEQ_HEAD = len("9223372036854775807|")  # the longest "<seq>|" before a body

# Templates of the statements: {seqs}, {history}, {presence}, {alive} are the tables;
# {number} numbers an event of channel $1 (its counter row stays locked until commit).
_NUMBER = """s AS (INSERT INTO {seqs} AS c (key, seq, at) VALUES ($1, 1, now())
          ON CONFLICT (key) DO UPDATE SET seq = c.seq + 1, at = now() RETURNING c.seq)"""
_SQL = {
    "create": """
        CREATE UNLOGGED TABLE IF NOT EXISTS {seqs} (
            key text PRIMARY KEY, seq bigint NOT NULL, at timestamptz NOT NULL);
        CREATE UNLOGGED TABLE IF NOT EXISTS {history} (
            key text NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL,
            expires timestamptz NOT NULL, message text NOT NULL, PRIMARY KEY (key, seq));
        CREATE INDEX IF NOT EXISTS "{prefix}_history_expires" ON {history} (expires);
        CREATE UNLOGGED TABLE IF NOT EXISTS {presence} (
            key text NOT NULL, connection text NOT NULL, process text NOT NULL,
            value text NOT NULL, at timestamptz NOT NULL, PRIMARY KEY (key, connection));
        CREATE UNLOGGED TABLE IF NOT EXISTS {alive} (process text PRIMARY KEY, expires timestamptz NOT NULL)""",
    # $1 key, $2 body, $3 topic
    "publish": "WITH {number} SELECT s.seq, pg_notify($3, s.seq::text || '|' || $2::text) FROM s",
    # ... and $4 keep, $5 keep seconds
    "publish_kept": """
    WITH {number},
    kept AS (INSERT INTO {history} (key, seq, at, expires, message)
             SELECT $1, s.seq, now(), now() + make_interval(secs => $5), s.seq::text || '|' || $2::text FROM s),
    trimmed AS (DELETE FROM {history} h USING s
                WHERE h.key = $1 AND (h.seq <= s.seq - $4::bigint OR h.expires < now()))
    SELECT s.seq, pg_notify($3, s.seq::text || '|' || $2::text) FROM s""",
    "history": """
        SELECT c.seq AS head, h.seq, h.message FROM {seqs} c
        LEFT JOIN {history} h ON h.key = c.key AND h.seq > $2 AND h.at >= now() - make_interval(secs => $3)
        WHERE c.key = $1 ORDER BY h.seq""",
    "put": """
        INSERT INTO {presence} (key, connection, process, value, at) VALUES ($1, $2, $3, $4, clock_timestamp())
        ON CONFLICT (key, connection) DO UPDATE SET process = $3, value = $4, at = clock_timestamp()""",
    "remove": "DELETE FROM {presence} WHERE key = $1 AND connection = ANY($2::text[])",
    "load": "SELECT connection, value FROM {presence} WHERE key = $1 ORDER BY at, connection",
    "beat": """
        INSERT INTO {alive} (process, expires) VALUES ($1, now() + make_interval(secs => $2))
        ON CONFLICT (process) DO UPDATE SET expires = EXCLUDED.expires""",
    "alive": "SELECT process FROM {alive} WHERE process = ANY($1::text[]) AND expires > now()",
    "leave": "DELETE FROM {alive} WHERE process = $1",
    # A channel idle for a day starts its numbers again, as with Redis; entries outlive
    # their process by 4 ttl ($1 = 3 ttl) at most, so a crashed cluster leaves none behind.
    "cleanup": """
        WITH gone AS (DELETE FROM {seqs} WHERE at < now() - interval '1 day' RETURNING key),
        expired AS (DELETE FROM {history} WHERE expires < now() OR key IN (SELECT key FROM gone)),
        stale AS (DELETE FROM {alive} WHERE expires < now() - make_interval(secs => $1))
        DELETE FROM {presence} p WHERE NOT EXISTS (
            SELECT 1 FROM {alive} a WHERE a.process = p.process AND a.expires >= now() - make_interval(secs => $1))""",
}


def table_prefix(topic: str) -> str:
    """The start of the tables' names: ``topic`` when it is a short, plain identifier,
    else its plain letters cut short and a hash of it (two topics never share tables)."""
    safe = re.sub(r"[^a-z0-9_]", "_", topic.lower())
    if safe == topic and len(safe) <= 40:
        return safe
    return f"{safe[:30]}_{hashlib.sha256(topic.encode()).hexdigest()[:8]}"


class PostgresChannelStore:
    """Several processes on one database: numbers, history and presence entries in tables.

    One statement numbers an event (a row lock on its channel's counter), keeps it
    and NOTIFYs it: NOTIFYs are delivered in commit order and the lock orders the
    commits, so every listener sees one channel's events in seq order. Each process
    refreshes its row in ``<prefix>_alive`` every ``ttl / 3`` seconds; an entry whose
    process row expired belongs to a process that died without leaving, and is
    removed by whichever process sweeps first.
    """

    is_shared = True

    def __init__(self, broker: _Broker, topic: str, process: str, ttl: float) -> None:
        self.broker = broker
        self.topic = topic
        self.process = process
        self.ttl = ttl
        self.prefix = table_prefix(topic)
        # Identifiers only, from table_prefix (a-z, 0-9, _), never a caller's text.
        names = {t: f'"{self.prefix}_{t}"' for t in ("seqs", "history", "presence", "alive")}
        names["prefix"] = self.prefix
        names["number"] = _NUMBER.format(**names)
        self.sql = {name: template.format(**names) for name, template in _SQL.items()}
        self._cleaned = 0.0

    async def start(self) -> None:
        try:
            async with self.broker.pool.acquire(timeout=self.broker.connect_timeout) as conn, conn.transaction():
                # Processes starting together: CREATE ... IF NOT EXISTS races without the lock.
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('tidings channels'), hashtext($1))", self.prefix
                )
                await conn.execute(self.sql["create"])
        except _FAULTS as exc:
            raise BrokerUnavailable(f"PostgreSQL channel tables cannot be created: {exc}") from exc
        await self.heartbeat(())

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        try:
            try:
                return await self._fetch_once(sql, *args)
            except _STALE:
                await self.broker.pool.expire_connections()
                return await self._fetch_once(sql, *args)
        except _FAULTS as exc:
            raise BrokerUnavailable(f"PostgreSQL channel store: {exc}") from exc

    async def _fetch_once(self, sql: str, *args: object) -> list[asyncpg.Record]:
        async with self.broker.pool.acquire(timeout=self.broker.connect_timeout) as conn:
            return await conn.fetch(sql, *args)  # type: ignore[no-any-return]

    async def publish_event(self, key: str, body: bytes, keep: int, keep_seconds: float) -> int:
        if len(body) + _SEQ_HEAD > MAX_PAYLOAD:
            raise ValueError(f"A {len(body)}-byte channel event exceeds NOTIFY's limit of {MAX_PAYLOAD} bytes")
        if keep:
            rows = await self._fetch(self.sql["publish_kept"], key, body.decode(), self.topic, keep, keep_seconds)
        else:
            rows = await self._fetch(self.sql["publish"], key, body.decode(), self.topic)
        return int(rows[0]["seq"])

    async def history(self, key: str, after: int, keep_seconds: float) -> tuple[list[bytes], bool]:
        rows = await self._fetch(self.sql["history"], key, after, keep_seconds)
        head = int(rows[0]["head"]) if rows else 0
        kept = [(int(row["seq"]), row["message"].encode()) for row in rows if row["seq"] is not None]
        complete = after >= head or (bool(kept) and kept[0][0] == after + 1)
        return [m for _, m in kept], complete

    async def publish_presence(self, body: bytes) -> None:
        await self.broker.publish(self.topic, b"p|" + body)

    async def put_entry(self, key: str, entry: Entry) -> None:
        value = orjson.dumps({"u": entry.sub, "m": entry.meta}).decode()
        await self._fetch(self.sql["put"], key, entry.connection, entry.process, value)

    async def remove_entries(self, key: str, connections: Iterable[str]) -> None:
        names = list(connections)
        if names:
            await self._fetch(self.sql["remove"], key, names)

    async def load(self, key: str) -> list[Entry]:
        rows = await self._fetch(self.sql["load"], key)
        entries = []
        for row in rows:
            data = orjson.loads(row["value"])
            entries.append(Entry(row["connection"], data.get("u"), data.get("m")))
        return await living(self, key, entries)

    async def heartbeat(self, keys: Iterable[str]) -> None:
        await self._fetch(self.sql["beat"], self.process, self.ttl)
        now = time.monotonic()
        if now - self._cleaned >= _CLEANUP_INTERVAL:
            self._cleaned = now
            await self._fetch(self.sql["cleanup"], self.ttl * 3)

    async def dead(self, processes: Iterable[str]) -> set[str]:
        names = sorted(p for p in processes if p != self.process)
        if not names:
            return set()
        alive = {row["process"] for row in await self._fetch(self.sql["alive"], names)}
        return set(names) - alive

    async def close(self) -> None:
        # A graceful stop: the others need not wait for the TTL. Briefly: a stalled server
        # must not hold the shutdown (the TTL ends this process's entries anyway).
        with contextlib.suppress(Exception):
            async with asyncio.timeout(0.25):
                await self._fetch(self.sql["leave"], self.process)
