"""What every transport needs from the app: one object, built by ``app.py``."""

from __future__ import annotations

import dataclasses
import itertools
import secrets
import weakref
from typing import Any

from tidings.auth.tokens import Authenticator
from tidings.config import Settings
from tidings.engine.runner import Engine
from tidings.errors import ErrorCode
from tidings.metrics import Metrics
from tidings.transports.origins import OriginPolicy, is_same_origin
from tidings.transports.stats import log_closed
from tidings.types import Scope


@dataclasses.dataclass(slots=True)
class TransportContext:
    settings: Settings
    engine: Engine
    authenticator: Authenticator
    connections: weakref.WeakSet[Any] = dataclasses.field(default_factory=weakref.WeakSet)
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    instance: str = dataclasses.field(default_factory=lambda: secrets.token_hex(4))
    """This app's part of every connection id: ids stay unique across processes."""
    origins: OriginPolicy = dataclasses.field(init=False)
    """``--allowed-origins``: who may open a WebSocket from another origin."""
    _ids: itertools.count[int] = dataclasses.field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.origins = OriginPolicy.parse(
            self.settings.allowed_origins, auth_enabled=self.authenticator.enabled, setting="--allowed-origins"
        )

    def track(self, conn: Any) -> None:
        """An open connection (with ``stats`` and ``queue``): listed, counted, closable by an admin."""
        conn.stats.id = f"{self.instance}-{next(self._ids)}"
        self.connections.add(conn)
        self.metrics.connections_opened[conn.stats.transport] += 1

    def untrack(self, conn: Any, close_code: int | None) -> None:
        """The connection ended: its deliveries join the closed ones', its close line is logged."""
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        self.metrics.closed_deliveries += conn.stats.delivered
        log_closed(conn.stats, close_code)

    def origin_allowed(self, origin: str | None, host: str | None = None) -> bool:
        """Cross-site WebSocket hijacking guard (OWASP ASVS 4.4.2)."""
        if origin is None:
            # No Origin header: not a browser, so no ambient credentials to hijack.
            return True
        return is_same_origin(origin, host) or self.origins.allows(origin)


def client_ip(scope: Scope) -> str | None:
    """The peer's address (behind a proxy, as uvicorn's --forwarded-allow-ips makes it)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def declares_json(scope: Scope) -> bool:
    """Whether a POST says its body is JSON (GraphQL over HTTP: else 415).

    The types a form can send (text/plain, urlencoded, multipart) and a missing type
    need no CORS preflight: executing them would let any site forge requests.
    """
    content_type = header(scope, b"content-type") or ""
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def unsupported_media_type(scope: Scope) -> dict[str, Any]:
    given = header(scope, b"content-type")
    message = f"Content-Type must be application/json, got {given!r}" if given else "Content-Type is required"
    return {"errors": [{"message": message, "extensions": {"code": ErrorCode.BAD_USER_INPUT.value}}]}


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None
