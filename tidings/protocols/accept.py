"""HTTP ``Accept`` parsing and content negotiation (RFC 9110 section 12.5.1), pure.

Each offered media type takes the quality of the most specific range matching it
(``type/subtype`` over ``type/*`` over ``*/*``); a quality of 0 means "not acceptable".
Among acceptable types the highest quality wins, then the one named by the more
specific range, then the one the client listed first, then the server's order.
Media type parameters other than ``q`` are ignored for matching: every body tidings
sends is UTF-8, the only parameter clients put there. A malformed element is skipped;
a header with no valid element counts as absent, which accepts anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MediaRange", "negotiate", "parse_accept", "quality"]


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an ``Accept`` header."""

    type: str
    subtype: str
    q: float
    position: int
    """Where the client listed it, from 0."""

    @property
    def specificity(self) -> int:
        """2 for ``type/subtype``, 1 for ``type/*``, 0 for ``*/*``."""
        return 0 if self.type == "*" else 1 if self.subtype == "*" else 2

    def matches(self, media_type: str) -> bool:
        type_, _, subtype = media_type.lower().partition("/")
        return self.type in ("*", type_) and self.subtype in ("*", subtype)


def _split(value: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double-quoted strings (RFC 9110 5.6.4)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _qvalue(text: str) -> float | None:
    """``0[.ddd]`` or ``1[.000]`` as a float; None if malformed."""
    whole, _, digits = text.partition(".")
    if whole not in ("0", "1") or len(digits) > 3 or not (digits.isdigit() or not digits):
        return None
    value = float(text)
    return value if value <= 1.0 else None


_TCHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def _is_token(text: str) -> bool:
    return bool(text) and all(c in _TCHARS for c in text)


def parse_accept(value: str | None) -> list[MediaRange]:
    """The valid media ranges of an ``Accept`` header, in the client's order."""
    ranges: list[MediaRange] = []
    for element in _split(value or "", ","):
        media, *params = _split(element, ";")
        type_, slash, subtype = media.strip().lower().partition("/")
        if not slash or not _is_token(type_) or not _is_token(subtype) or (type_ == "*" and subtype != "*"):
            continue
        q: float | None = 1.0
        for param in params:
            name, _, raw = param.strip().partition("=")
            if name.strip().lower() == "q":
                q = _qvalue(raw.strip())
                break  # RFC 9110: the weight ends the media type's parameters
        if q is not None:
            ranges.append(MediaRange(type_, subtype, q, len(ranges)))
    return ranges


def quality(ranges: Sequence[MediaRange], media_type: str) -> MediaRange | None:
    """The range that decides ``media_type``'s quality: the most specific match, else None."""
    best: MediaRange | None = None
    for candidate in ranges:
        if candidate.matches(media_type) and (best is None or candidate.specificity > best.specificity):
            best = candidate
    return best


def negotiate(value: str | None, offered: Sequence[str]) -> str | None:
    """The best of ``offered`` (the server's preference order) for this ``Accept``, or None.

    No ``Accept`` (or none that parses) accepts anything: the first offered type.
    """
    ranges = parse_accept(value)
    if not ranges:
        return offered[0] if offered else None
    best: tuple[float, int, int, int] | None = None
    chosen: str | None = None
    for index, media_type in enumerate(offered):
        match = quality(ranges, media_type)
        if match is None or match.q <= 0:
            continue
        key = (match.q, match.specificity, -match.position, -index)
        if best is None or key > best:
            best, chosen = key, media_type
    return chosen
