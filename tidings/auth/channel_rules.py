"""Channel namespaces: who may subscribe to, publish on and join the presence of
each channel, and which broker key (tenant scope) a channel name stands for.

A namespace is a pattern of ``:``-separated segments: a literal (``room``), ``*``
(any one or more characters, to the end), or a claim (``$sub``, ``$account``,
``$role``, ``$claims.<name>``: the segment must equal the caller's claim, so
``user:$sub`` is each user's own channel), or ``{id}`` (a record's id). Rules use the
collection rule words: ``public``, ``authenticated``, ``role:a,b``, ``none`` (nobody but the
admin role), and ``read:<Collection>``: whoever may read the record ``{id}`` names, under that
collection's read rule (which may follow relations: a room's members). This module only says
which record a caller must be able to read; ``tidings.realtime.channel_access`` reads it.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from tidings.auth.principal import Principal
from tidings.errors import BadUserInput, ConfigurationError, Forbidden, Unauthenticated

__all__ = ["Channel", "ChannelAction", "ChannelRules", "RecordRule", "Resolved"]

MAX_CHANNEL_LENGTH = 200
_NAME = re.compile(rf"[\x21-\x7e]{{1,{MAX_CHANNEL_LENGTH}}}")  # printable ASCII, no spaces
_CLAIM = re.compile(r"\$(sub|account|role|claims\.[A-Za-z0-9_]+)")
_RECORD = "{id}"  # the segment a read:<Collection> rule binds to a record id
_READ = re.compile(r"read:([A-Za-z_][A-Za-z0-9_]*)")


class ChannelAction(str, enum.Enum):
    SUBSCRIBE = "subscribe"
    PUBLISH = "publish"
    PRESENCE = "presence"


@dataclasses.dataclass(frozen=True, slots=True)
class Channel:
    """A channel namespace declared beside the collections.

    ``None`` rules mean ``authenticated`` when tokens are required and ``public`` in
    demo mode. ``scope="global"`` makes the namespace one channel for every account
    (default ``"account"``: ``room:42`` of account A is not ``room:42`` of account B).
    ``history`` events (kept at most ``history_seconds``) let ``after:`` resume.
    """

    pattern: str
    subscribe: str | None = None
    publish: str | None = None
    presence: str | None = None
    scope: str = "account"
    history: int = 0
    history_seconds: float = 300.0

    def __post_init__(self) -> None:
        if not self.pattern or any(not s for s in self.pattern.split(":")):
            raise ConfigurationError(f"Channel pattern {self.pattern!r} has an empty segment")
        if self.scope not in ("account", "global"):
            raise ConfigurationError(
                f"Channel {self.pattern!r}: scope must be 'account' or 'global', got {self.scope!r}"
            )
        if self.history < 0 or self.history_seconds <= 0:
            raise ConfigurationError(f"Channel {self.pattern!r}: history must be >= 0 and history_seconds > 0")
        segments = self.pattern.split(":")
        for segment in segments:
            if segment.startswith("{") and segment != _RECORD:
                raise ConfigurationError(
                    f"Channel {self.pattern!r}: unknown placeholder {segment!r}; the record segment is {_RECORD}"
                )
        for action in ChannelAction:
            rule = getattr(self, action.value)
            if rule is not None:
                _check_rule(rule, self.pattern)
        if segments.count(_RECORD) > 1:
            raise ConfigurationError(
                f"Channel {self.pattern!r}: {_RECORD} may appear once, got {segments.count(_RECORD)}"
            )
        reads = self.record_collections
        if reads and _RECORD not in segments:
            first, collection = next(iter(reads.items()))
            raise ConfigurationError(
                f"Channel {self.pattern!r}: {first} rule 'read:{collection}' needs a {_RECORD} segment naming "
                f"the record (e.g. {self.pattern.split(':')[0]}:{_RECORD})"
            )

    @property
    def record_collections(self) -> dict[str, str]:
        """Action -> the collection its ``read:<Collection>`` rule names (the others absent)."""
        found = {}
        for action in ChannelAction:
            rule = getattr(self, action.value)
            match = _READ.fullmatch(rule) if rule is not None else None
            if match is not None:
                found[action.value] = match.group(1)
        return found

    @classmethod
    def from_mapping(cls, pattern: str, data: Mapping[str, Any]) -> Channel:
        allowed = {"subscribe", "publish", "presence", "scope", "history", "history_seconds"}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigurationError(f"channel {pattern!r}: unknown keys {sorted(unknown)}; expected {sorted(allowed)}")
        return cls(pattern, **dict(data))


def _check_rule(rule: str, pattern: str) -> None:
    kind, _, arg = rule.partition(":")
    if rule in ("public", "authenticated", "none") or (kind == "role" and arg.strip(", ")) or _READ.fullmatch(rule):
        return
    raise ConfigurationError(
        f"Channel {pattern!r}: rule {rule!r} is not public, authenticated, role:<a,b>, read:<Collection> or none"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class RecordRule:
    """What a ``read:<Collection>`` rule asks: that the caller may read this record."""

    collection: str
    record_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class Resolved:
    """A channel name as one caller may use it: its namespace and its broker key."""

    channel: str
    key: str
    namespace: Channel
    record: RecordRule | None = None  # the record the caller must be able to read (read:<Collection>)


@dataclasses.dataclass(frozen=True, slots=True)
class _Compiled:
    namespace: Channel
    regex: re.Pattern[str]
    claims: tuple[str, ...]  # one per claim or record segment, in order ({id} for the record)


def _compile(namespace: Channel) -> _Compiled:
    parts: list[str] = []
    claims: list[str] = []
    for segment in namespace.pattern.split(":"):
        claim = _CLAIM.fullmatch(segment)
        if segment == "*":
            parts.append(".+")
        elif segment == _RECORD:
            parts.append("([^:]+)")
            claims.append(_RECORD)
        elif claim is not None:
            parts.append("([^:]+)")
            claims.append(claim.group(1))
        elif segment.startswith("$"):
            raise ConfigurationError(f"Channel {namespace.pattern!r}: unknown claim {segment!r}")
        else:
            parts.append(re.escape(segment))
    return _Compiled(namespace, re.compile(":".join(parts)), tuple(claims))


def _claim(principal: Principal, name: str) -> Any:
    if name.startswith("claims."):
        return principal.claim(name.removeprefix("claims."))
    return getattr(principal, name)


def broker_key(channel: str, account: str | None) -> str:
    """The key a channel travels under: the account and the name, unambiguous."""
    return orjson.dumps([account, channel]).decode()


class ChannelRules:
    """Resolves a channel name for a caller and an action, or refuses it.

    The first declared namespace whose pattern matches decides. With tokens
    required (``auth_enabled``), an undeclared channel is refused; in demo mode
    it is public and keyed without an account.
    """

    def __init__(
        self, channels: Iterable[Channel] = (), *, auth_enabled: bool = False, admin_role: str | None = None
    ) -> None:
        self.auth_enabled = auth_enabled
        self.admin_role = admin_role
        self.namespaces: list[_Compiled] = [_compile(c) for c in channels]
        self._open = Channel("*", "public", "public", "public", scope="global")

    def namespace(self, channel: str) -> tuple[Channel, tuple[tuple[str, str], ...]] | None:
        """The namespace ``channel`` falls in, and its claim (and ``{id}``) segments' values."""
        for compiled in self.namespaces:
            match = compiled.regex.fullmatch(channel)
            if match is not None:
                return compiled.namespace, tuple(zip(compiled.claims, match.groups(), strict=True))
        return None

    def record_rules(self) -> list[tuple[Channel, str, str]]:
        """(namespace, action, collection) of every ``read:<Collection>`` rule, to check at startup."""
        return [
            (c.namespace, action, name)
            for c in self.namespaces
            for action, name in c.namespace.record_collections.items()
        ]

    def resolve(self, channel: str, principal: Principal, action: ChannelAction) -> Resolved:
        """Check ``action`` on ``channel`` for ``principal``; raise BadUserInput, Unauthenticated or Forbidden."""
        check_name(channel)
        found = self.namespace(channel)
        if found is None:
            if self.auth_enabled:
                raise Forbidden(f"Channel {channel!r} is in no declared namespace")
            return Resolved(channel, broker_key(channel, None), self._open)
        namespace, claims = found
        admin = self.admin_role is not None and principal.role == self.admin_role
        record = None
        if not admin:
            rule = getattr(namespace, action.value) or ("authenticated" if self.auth_enabled else "public")
            read = _READ.fullmatch(rule)
            if read is None:
                _check(rule, principal, channel, action)
            for name, value in claims:
                if name == _RECORD:
                    if read is not None:
                        record = RecordRule(read.group(1), value)
                    continue
                if principal.sub is None:
                    raise Unauthenticated(f"Channel {channel!r}: {action.value} needs a bearer token")
                if str(_claim(principal, name)) != value:
                    raise Forbidden(f"Channel {channel!r}: {action.value} is only for the {name} it names")
        account = None if namespace.scope == "global" or not self.auth_enabled else principal.account
        return Resolved(channel, broker_key(channel, account), namespace, record)

    def server_key(self, channel: str, account: str | None) -> Resolved:
        """For server code: the channel of ``account`` (no rule is checked)."""
        check_name(channel)
        found = self.namespace(channel)
        namespace = found[0] if found is not None else self._open
        scoped = None if namespace.scope == "global" or not self.auth_enabled else account
        return Resolved(channel, broker_key(channel, scoped), namespace)


def _check(rule: str, principal: Principal, channel: str, action: ChannelAction) -> None:
    if rule == "public":
        return
    if rule == "none":
        raise Forbidden(f"Channel {channel!r}: {action.value} is not allowed")
    if not principal.is_authenticated:
        raise Unauthenticated(f"Channel {channel!r}: {action.value} needs a bearer token")
    kind, _, arg = rule.partition(":")
    if kind == "role":
        roles = {r.strip() for r in arg.split(",") if r.strip()}
        if principal.role not in roles:
            raise Forbidden(f"Channel {channel!r}: {action.value} needs role {' or '.join(sorted(roles))}")


def check_name(channel: str) -> None:
    if not _NAME.fullmatch(channel):
        raise BadUserInput(
            f"A channel name is 1 to {MAX_CHANNEL_LENGTH} printable ASCII characters without spaces, "
            f"got {channel[:40]!r}",
            field="channel",
        )


def channels_from(items: Sequence[Any]) -> tuple[list[Any], list[Channel]]:
    """Split what an app was given into collections and channel namespaces."""
    return [i for i in items if not isinstance(i, Channel)], [i for i in items if isinstance(i, Channel)]
