"""What every transport needs from the app: one object, built by ``app.py``."""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

from tidings.auth.tokens import Authenticator
from tidings.config import Settings
from tidings.realtime.engine import Engine


@dataclasses.dataclass(slots=True)
class TransportContext:
    settings: Settings
    engine: Engine
    authenticator: Authenticator
    connections: weakref.WeakSet[Any] = dataclasses.field(default_factory=weakref.WeakSet)

    def origin_allowed(self, origin: str | None) -> bool:
        """Cross-site WebSocket hijacking guard (OWASP ASVS 4.4.2)."""
        allowed = [o.strip() for o in self.settings.allowed_origins.split(",") if o.strip()]
        if "*" in allowed or origin is None:
            # No Origin header: not a browser, so no ambient credentials to hijack.
            return True
        return origin in allowed


def header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None
