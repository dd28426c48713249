"""Settings: every knob with its default, its CLI flag and its environment variable."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from tidings.errors import ConfigurationError


def _field(default: Any, help: str, *, env: str | None = None) -> Any:  # noqa: A002
    return dataclasses.field(default=default, metadata={"help": help, "env": env})


@dataclasses.dataclass(slots=True)
class Settings:
    """Server settings. ``from_env`` reads ``TIDINGS_<NAME>`` for each field."""

    host: str = _field("127.0.0.1", "interface to listen on")
    port: int = _field(8000, "port to listen on")
    db: str = _field("sqlite:///tidings.db", "database URL: sqlite:///file.db or postgresql://user:pass@host/db")
    broker: str = _field("memory://", "broker URL: memory:// (one process) or redis://host:6379/0")
    collections: str | None = _field(None, "module:attr or file.toml of collections (default: the demo)")
    graphiql: bool = _field(True, "serve GraphiQL on GET /graphql from a browser")
    legacy_ws: bool = _field(True, "accept the legacy graphql-ws subprotocol (subscriptions-transport-ws)")
    # auth
    jwt_secret: str | None = _field(None, "HS256 secret; when set (or a public key is), tokens are required")
    jwt_public_key: str | None = _field(None, "path of a PEM public key for RS256/ES256 tokens")
    jwt_algorithm: str | None = _field(None, "JWT algorithm (default HS256 with a secret, RS256 with a key)")
    jwt_issuer: str | None = _field(None, "required iss claim")
    jwt_audience: str | None = _field(None, "required aud claim")
    jwt_leeway: float = _field(5.0, "seconds of clock skew allowed on exp/nbf/iat")
    claim_sub: str = _field("sub", "claim naming the user")
    claim_account: str = _field("account", "claim naming the tenant")
    claim_role: str = _field("role", "claim naming the role")
    admin_role: str | None = _field(None, "role that may read and write every account")
    anonymous: str = _field(
        "auto", "anonymous access: auto (on without a key), on, off, or a comma list of collections"
    )
    allowed_origins: str = _field("*", "comma list of origins allowed to open WebSockets ('*' = any)")
    cors_origins: str = _field("", "comma list of origins allowed by CORS on HTTP and SSE ('*' = any)")
    # limits
    keepalive: float = _field(15.0, "seconds between WebSocket pings and SSE heartbeats")
    init_timeout: float = _field(5.0, "seconds a WebSocket has to send connection_init")
    max_subscriptions: int = _field(100, "active operations per connection")
    max_message_size: int = _field(262_144, "largest inbound WebSocket message or HTTP body, bytes")
    queue_messages: int = _field(1000, "send queue bound per connection, in messages")
    queue_bytes: int = _field(1_048_576, "send queue bound per connection, in bytes")
    ws_compression: bool = _field(
        False, "permessage-deflate on WebSockets (compresses every message once per connection: off for fan-out)"
    )
    max_limit: int = _field(1000, "largest page a list query may ask for")
    max_depth: int = _field(10, "deepest query allowed")
    # resume
    retention_seconds: float = _field(86_400.0, "keep events this long for resume (0 = no age limit)")
    retention_events: int = _field(100_000, "keep at most this many events (0 = no count limit)")
    prune_interval: float = _field(60.0, "seconds between retention passes")
    gap_check_interval: float = _field(1.0, "seconds between checks of the event log head")
    channel: str = _field(
        "tidings:events", "broker channel of the doorbells; deployments that share a broker need distinct ones"
    )
    log_level: str = _field("info", "log level")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get("TIDINGS_" + f.name.upper())
            if raw is not None:
                values[f.name] = coerce(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.jwt_secret or self.jwt_public_key)


def coerce(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind.startswith("bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError as exc:
        raise ConfigurationError(f"TIDINGS_{f.name.upper()}: expected {kind}, got {raw!r}") from exc
    return raw


def env_name(name: str) -> str:
    return "TIDINGS_" + name.upper()
