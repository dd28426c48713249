"""Which browser origins may use tidings: CORS on HTTP and SSE, the Origin check on WebSockets.

``--cors-origins`` and ``--allowed-origins`` take the same list (``*`` for any origin,
``scheme://host:*`` for any port of a host) and share one default, empty: the same
origin only, plus in demo mode (no JWT secret or key) a frontend dev server on
``http://localhost`` or ``http://127.0.0.1``, any port. A page's own origin (the
``Origin`` naming the ``Host`` the request came to) never needs listing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp

from tidings.errors import ConfigurationError

__all__ = ["DEV_ORIGINS", "OriginCORS", "OriginPolicy", "is_same_origin"]

DEV_ORIGINS: Final = ("http://localhost:*", "http://127.0.0.1:*")
"""What an empty setting allows in demo mode, besides the same origin."""

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_SCHEME: Final = re.compile(r"[a-z][a-z0-9+.-]*")
_HOST: Final = re.compile(r"[a-z0-9._-]+|[0-9a-f:.]+")  # a name (punycode), an IPv4 or an IPv6 address
_FORMS: Final = "scheme://host[:port], scheme://host:* or *"


def _scheme_host_port(origin: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    return parts.scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS.get(parts.scheme)


@dataclass(frozen=True, slots=True)
class OriginPolicy:
    """The origins one setting allows, besides the same origin."""

    entries: tuple[str, ...]
    """As given (or the default), for the startup log."""
    any: bool = False
    exact: frozenset[str] = frozenset()
    any_port: frozenset[tuple[str, str]] = frozenset()
    """``(scheme, host)`` of the ``scheme://host:*`` entries."""

    @classmethod
    def parse(cls, value: str, *, auth_enabled: bool, setting: str = "origins") -> OriginPolicy:
        """The policy of a comma list; ``ConfigurationError`` naming ``setting`` for an entry that is no origin."""
        entries = tuple(o.strip().rstrip("/") for o in value.split(",") if o.strip())
        if not entries and not auth_enabled:
            entries = DEV_ORIGINS
        exact: set[str] = set()
        any_port: set[tuple[str, str]] = set()
        for entry in entries:
            if entry == "*":
                continue
            wildcard = entry.endswith(":*")
            problem = _origin_problem(entry[:-2] if wildcard else entry)
            if problem is not None:
                raise ConfigurationError(f"{setting}: expected {_FORMS}, got {entry!r} ({problem})")
            if wildcard and (parsed := _scheme_host_port(entry[:-2])) is not None:
                any_port.add(parsed[:2])
            else:
                exact.add(entry.lower())
        return cls(entries, "*" in entries, frozenset(exact), frozenset(any_port))

    @property
    def is_empty(self) -> bool:
        """Only the same origin: no cross-origin page at all."""
        return not self.entries

    def allows(self, origin: str) -> bool:
        """Whether a page on ``origin`` (another origin than the server's) may connect."""
        if self.any or origin.strip().lower() in self.exact:
            return True
        parsed = _scheme_host_port(origin) if self.any_port else None
        return parsed is not None and parsed[:2] in self.any_port

    def describe(self) -> str:
        if self.any:
            return "any origin"
        return ", ".join(("the same origin", *self.entries))


def _origin_problem(origin: str) -> str | None:
    """Why ``origin`` is not ``scheme://host[:port]`` (what a browser sends as ``Origin``); None when it is."""
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - raises ValueError for a port that is not one
    except ValueError as exc:
        return str(exc)
    if not _SCHEME.fullmatch(parts.scheme.lower()) or not origin.lower().startswith(f"{parts.scheme.lower()}://"):
        return "no scheme://"
    if "@" in parts.netloc:
        return "an origin has no user name"
    if not parts.hostname:
        return "no host"
    if not _HOST.fullmatch(parts.hostname):
        return f"{parts.hostname!r} is not a host name; '*' stands only for the port"
    if parts.path or parts.query or parts.fragment or origin.endswith(("?", "#")):
        return "an origin has no path, query or fragment"
    return None


def is_same_origin(origin: str, host: str | None) -> bool:
    """Whether ``origin`` names the host (and port) the request was sent to."""
    parsed = _scheme_host_port(origin)
    served = _scheme_host_port(f"{parsed[0]}://{host}") if parsed is not None and host else None
    return served is not None and parsed == served


class OriginCORS(CORSMiddleware):
    """Starlette's CORS, deciding by an ``OriginPolicy``; a refused preflight carries no
    CORS header at all, so nothing about the policy is disclosed to the refused page."""

    def __init__(self, app: ASGIApp, /, *, policy: OriginPolicy, **options: Any) -> None:
        super().__init__(app, allow_origins=["*"] if policy.any else [], **options)
        self.policy = policy

    def is_allowed_origin(self, origin: str) -> bool:
        return self.policy.allows(origin)

    def preflight_response(self, request_headers: Headers) -> Response:
        if not self.policy.allows(request_headers["origin"]):
            return PlainTextResponse("Disallowed CORS origin", status_code=400)
        return super().preflight_response(request_headers)
