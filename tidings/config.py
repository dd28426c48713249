"""Settings: every knob with its default, its CLI flag and its environment variable."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tidings.errors import ConfigurationError


@dataclasses.dataclass(frozen=True, slots=True)
class Bound:
    """A numeric setting's range: at least ``low`` (more than ``low`` with ``above``), at most ``high``."""

    low: float
    high: float | None = None
    above: bool = False

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if value < self.low or (self.above and value == self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        if self.high is not None:
            return f"from {self.low:g} to {self.high:g}"
        return f"{'more than' if self.above else 'at least'} {self.low:g}"


AT_LEAST_0, AT_LEAST_1, ABOVE_0 = Bound(0), Bound(1), Bound(0, above=True)


def _field(default: Any, help: str, bound: Bound | None = None) -> Any:  # noqa: A002
    return dataclasses.field(default=default, metadata={"help": help, "bound": bound})


@dataclasses.dataclass(slots=True)
class Settings:
    """Server settings. ``from_env`` reads ``TIDINGS_<NAME>`` for each field."""

    host: str = _field("127.0.0.1", "interface to listen on")
    port: int = _field(8000, "port to listen on", Bound(1, 65535))
    db: str = _field("sqlite:///tidings.db", "database URL: sqlite:///file.db or postgresql://user:pass@host/db")
    broker: str = _field(
        "auto",
        "broker URL: memory:// (one process), redis://host:6379/0, postgresql://... or postgres (the --db's "
        "LISTEN/NOTIFY); auto: postgres with a PostgreSQL --db, else memory://",
    )
    workers: int = _field(
        1,
        "server processes sharing the port, each with its own dispatcher (more than 1 needs a shared broker)",
        AT_LEAST_1,
    )
    db_outage_wait: float = _field(
        5.0,
        "seconds a read or write waits for a database it lost (a restart, a failover) before it fails "
        "UNAVAILABLE (HTTP 503); 0 = at once",
        AT_LEAST_0,
    )
    collections: str | None = _field(None, "module:attr or file.toml of collections (default: the demo)")
    app: str | None = _field(
        None, "module:attr of a tidings.App (or a create_app app): collections, hooks and your own Strawberry code"
    )
    migrate: str | None = _field(
        None,
        "schema changes at start: auto (run pending migration files, apply additive changes), check (refuse to "
        "start on any difference), off (compare nothing); default auto in demo mode, check with a JWT secret or key",
    )
    migrations: str | None = _field(
        None,
        "folder of migration files (default: migrations/ beside a .toml --collections, else in the working directory)",
    )
    graphiql: bool = _field(True, "serve GraphiQL on GET /graphql from a browser")
    legacy_ws: bool = _field(True, "accept the legacy graphql-ws subprotocol (subscriptions-transport-ws)")
    # auth
    jwt_secret: str | None = _field(None, "HS256 secret; when set (or a public key is), tokens are required")
    jwt_public_key: str | None = _field(None, "path of a PEM public key for RS256/ES256 tokens")
    jwt_algorithm: str | None = _field(None, "JWT algorithm (default HS256 with a secret, RS256 with a key)")
    jwt_issuer: str | None = _field(None, "required iss claim")
    jwt_audience: str | None = _field(None, "required aud claim")
    jwt_leeway: float = _field(5.0, "seconds of clock skew allowed on exp/nbf/iat", AT_LEAST_0)
    claim_sub: str = _field("sub", "claim naming the user")
    claim_account: str = _field("account", "claim naming the tenant")
    claim_role: str = _field("role", "claim naming the role")
    admin_role: str | None = _field(None, "role that may read and write every account (none unless named here)")
    anonymous: str = _field(
        "auto", "anonymous access: auto (on without a key), on, off, or a comma list of collections"
    )
    allowed_origins: str = _field(
        "",
        "comma list of other origins allowed to open WebSockets ('*' = any, 'http://host:*' = any port); "
        "empty: same origin only, plus http://localhost:* and http://127.0.0.1:* in demo mode",
    )
    cors_origins: str = _field(
        "", "comma list of other origins allowed by CORS on HTTP and SSE (same syntax and default as --allowed-origins)"
    )
    # limits
    keepalive: float = _field(
        15.0,
        "seconds between WebSocket pings and SSE heartbeats; a ping unanswered this long closes 4008 (0 = off)",
        AT_LEAST_0,
    )
    shutdown_timeout: float = _field(
        10.0, "seconds a SIGTERM gives open connections to flush their queues before the process exits", AT_LEAST_0
    )
    shutdown_reconnect_ms: int = _field(
        1000,
        "SHUTTING_DOWN system events tell each client to reconnect after a random 0 to this many ms (0 = at once)",
        AT_LEAST_0,
    )
    token_expiring_lead: float = _field(
        60.0, "seconds before a connection's token expires that systemEvents sends TOKEN_EXPIRING", AT_LEAST_0
    )
    hook_queue: int = _field(
        10_000,
        "after-hook calls (connect, subscribe, commit...) that may wait to run; beyond, new ones are dropped",
        AT_LEAST_1,
    )
    init_timeout: float = _field(5.0, "seconds a WebSocket has to send connection_init", ABOVE_0)
    header_timeout: float = _field(
        10.0, "seconds a client has to send an HTTP request's headers (0 = no limit)", AT_LEAST_0
    )
    body_timeout: float = _field(30.0, "seconds a client has to send an HTTP request's body (0 = no limit)", AT_LEAST_0)
    max_subscriptions: int = _field(100, "active operations per connection", AT_LEAST_1)
    max_message_size: int = _field(262_144, "largest inbound WebSocket message or HTTP body, bytes", Bound(1024))
    queue_messages: int = _field(1000, "send queue bound per connection, in messages", AT_LEAST_1)
    queue_bytes: int = _field(1_048_576, "send queue bound per connection, in bytes", Bound(1024))
    write_timeout: float = _field(
        10.0,
        "seconds a connection's frames may wait without its backlog once clearing before it is closed (0 = off)",
        AT_LEAST_0,
    )
    ws_compression: bool = _field(
        False, "permessage-deflate on WebSockets (compresses every message once per connection: off for fan-out)"
    )
    max_limit: int = _field(1000, "largest page a list query may ask for", AT_LEAST_1)
    live_max_rows: int = _field(
        1000, "most rows a live query's window may keep (its limit must be at most this)", AT_LEAST_1
    )
    max_depth: int = _field(10, "deepest query allowed (introspection included)", AT_LEAST_1)
    max_tokens: int = _field(
        5000, "most tokens a GraphQL document may have; parsing stops there (GRAPHQL_PARSE_FAILED)", AT_LEAST_1
    )
    tracing: str = _field("off", "OpenTelemetry spans (needs opentelemetry-api: pip install tidings[tracing]): on, off")
    introspection: str = _field(
        "auto",
        "answer __schema and __type queries: auto (on in demo mode, off with a JWT secret or key), on, off, "
        "or authenticated (callers with a valid token)",
    )
    suggestions: str = _field(
        "auto", "'Did you mean ...?' in error messages: auto (on in demo mode, off with a JWT secret or key), on, off"
    )
    # rate limits (token buckets: so many a second, up to a burst; a rate of 0 turns one off)
    rate_subscribe: float = _field(20.0, "subscribe operations per second per connection (0 = off)", AT_LEAST_0)
    rate_subscribe_burst: int = _field(50, "subscribe operations a connection may send at once", AT_LEAST_1)
    rate_user_subscribe: float = _field(
        100.0, "subscribe operations per second per user, all connections together (0 = off)", AT_LEAST_0
    )
    rate_user_subscribe_burst: int = _field(500, "subscribe operations a user may send at once", AT_LEAST_1)
    rate_mutations: float = _field(
        100.0,
        "mutations per second per user (anonymous: per WebSocket, or per IP on HTTP and SSE; 0 = off)",
        AT_LEAST_0,
    )
    rate_mutations_burst: int = _field(1000, "mutations a user may send at once", AT_LEAST_1)
    rate_queries: float = _field(0.0, "queries per second, counted like mutations (0 = off)", AT_LEAST_0)
    rate_queries_burst: int = _field(1000, "queries a user may send at once", AT_LEAST_1)
    rate_events: float = _field(
        0.0,
        "events delivered per second per subscription; beyond, it ends with RATE_LIMITED to resume (0 = off)",
        AT_LEAST_0,
    )
    rate_events_burst: int = _field(100, "events a subscription may receive at once", AT_LEAST_1)
    rate_publish: float = _field(20.0, "channel publishes per second per connection (0 = off)", AT_LEAST_0)
    rate_publish_burst: int = _field(40, "channel publishes a connection may send at once", AT_LEAST_1)
    rate_user_publish: float = _field(
        50.0, "channel publishes per second per user, all connections together (0 = off)", AT_LEAST_0
    )
    rate_user_publish_burst: int = _field(100, "channel publishes a user may send at once", AT_LEAST_1)
    rate_redis_timeout: float = _field(
        0.1,
        "seconds a per-user budget call to Redis may hold a request; beyond, this process counts on its own "
        "budgets for 5 s",
        ABOVE_0,
    )
    # channels and presence
    channel_max_payload: int = _field(16_384, "largest channel event data or presence meta, bytes of JSON", AT_LEAST_1)
    presence_ttl: float = _field(
        15.0, "seconds after which the presence members of a process that died without leaving disappear", ABOVE_0
    )
    # resume
    retention_seconds: float = _field(86_400.0, "keep events this long for resume (0 = no age limit)", AT_LEAST_0)
    retention_events: int = _field(100_000, "keep at most this many events (0 = no count limit)", AT_LEAST_0)
    prune_interval: float = _field(60.0, "seconds between retention passes", ABOVE_0)
    gap_check_interval: float = _field(1.0, "seconds between checks of the event log head", ABOVE_0)
    channel: str = _field(
        "tidings:events", "broker channel of the doorbells; deployments that share a broker need distinct ones"
    )
    ready_lag: float = _field(
        5.0, "seconds the dispatcher may stay behind the event log's head before /readyz answers 503", AT_LEAST_0
    )
    ready_timeout: float = _field(1.0, "seconds /readyz waits for the database and the broker to answer", ABOVE_0)
    log_level: str = _field("info", "log level")
    log_format: str = _field("text", "log lines as text, or json: one JSON object per line, with structured fields")
    metrics: str = _field(
        "loopback",
        "Prometheus /metrics: off, loopback (only clients on 127.0.0.1 or ::1) or token:<secret> (Bearer <secret>)",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(env_name(f.name))
            if raw is not None:
                values[f.name] = coerce(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key)

    def switch(self, name: str) -> bool:
        """An on/off/auto setting's value; auto means on in demo mode (no JWT secret or key) only."""
        value = str(getattr(self, name)).strip().lower()
        if value == "auto":
            return not self.auth_enabled
        flag = _flag(value)
        if flag is not None:
            return flag
        raise ConfigurationError(f"--{name.replace('_', '-')} must be auto, on or off, got {value!r}")

    def migrate_mode(self) -> str:
        """``--migrate`` as ``auto``, ``check`` or ``off`` (unset: auto in demo mode, check with auth)."""
        if self.migrate is None:
            return "check" if self.auth_enabled else "auto"
        value = self.migrate.strip().lower()
        if value not in ("auto", "check", "off"):
            raise ConfigurationError(f"--migrate must be auto, check or off, got {self.migrate!r}")
        return value

    def migrations_directory(self) -> Path:
        """Where migration files live: ``--migrations``, else beside a TOML collections file, else ./migrations."""
        if self.migrations:
            return Path(self.migrations)
        if self.collections and self.collections.endswith(".toml"):
            return Path(self.collections).parent / "migrations"
        return Path("migrations")

    def introspection_mode(self) -> str:
        """``--introspection`` as ``on``, ``off`` or ``authenticated`` (auto: on in demo mode only)."""
        value = str(self.introspection).strip().lower()
        if value == "authenticated":
            if not self.auth_enabled:
                raise ConfigurationError(
                    "--introspection authenticated needs a JWT secret or key (in demo mode nobody is authenticated)"
                )
            return value
        if value == "auto" or _flag(value) is not None:
            return "on" if self.switch("introspection") else "off"
        raise ConfigurationError(f"--introspection must be auto, on, off or authenticated, got {value!r}")


def check_bounds(settings: Settings) -> None:
    """Refuse a numeric setting outside its range (``--help`` states each one), naming both."""
    for f in dataclasses.fields(settings):
        bound: Bound | None = f.metadata.get("bound")
        value = getattr(settings, f.name)
        if bound is None or bound.admits(value):
            continue
        expected = bound.describe() if math.isfinite(value) else f"a finite number, {bound.describe()}"
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        raise ConfigurationError(f"--{f.name.replace('_', '-')}: expected {expected}, got {shown}")


def _flag(word: str) -> bool | None:
    """A lower-case on/off word (on, true, 1, yes; off, false, 0, no) as a bool; None for any other."""
    if word in ("on", "true", "1", "yes"):
        return True
    if word in ("off", "false", "0", "no"):
        return False
    return None


def coerce(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind.startswith("bool"):
            flag = _flag(raw.lower())
            if flag is None:
                raise ValueError(raw)
            return flag
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{env_name(f.name)}: expected {kind}, got {raw!r}") from exc
    return raw


def env_name(name: str) -> str:
    return "TIDINGS_" + name.upper()
