"""Who is asking: the claims a verified token gives, or anonymity."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Principal:
    """The caller, derived from a verified token only (never from variables)."""

    sub: str | None = None
    account: str | None = None
    role: str | None = None
    exp: float | None = None
    claims: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

    @property
    def is_authenticated(self) -> bool:
        return self.sub is not None

    def claim(self, name: str) -> Any:
        return self.claims.get(name)


ANONYMOUS = Principal()

ANY_ACCOUNT: Any = type("AnyAccount", (), {"__repr__": lambda self: "ANY_ACCOUNT"})()
"""Index key for subscribers that see every account (no tenancy, or an admin)."""
