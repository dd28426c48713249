"""Permission rules replaced while the server runs: the new authorizer swapped into the one
holder, and every open operation whose scope changed ended."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tidings.auth.permissions import Permissions
from tidings.auth.principal import Principal
from tidings.auth.rules import Action, Authorizer, Rules
from tidings.engine.runner import Streaming
from tidings.errors import ConfigurationError, PermissionsChanged, TidingsError
from tidings.events import SystemEventKind
from tidings.realtime.group import Subscriber
from tidings.realtime.live import LiveMember
from tidings.realtime.system import SystemEvents

logger = logging.getLogger("tidings")


class RulesReload:
    """Replaces collections' rules in ``permissions`` and tells the open ``connections``."""

    def __init__(self, permissions: Permissions, connections: Iterable[Any], system: SystemEvents) -> None:
        self.permissions = permissions
        self.connections = connections
        self.system = system

    async def __call__(self, rules: Mapping[str, Rules | Mapping[str, Any]]) -> int:
        """Replace collections' permission rules (by collection name; the others keep theirs).

        Every request from now on is checked against the new rules. Each open connection whose
        permissions changed gets PERMISSIONS_CHANGED on its ``systemEvents``, and each of its
        subscriptions and live queries whose read scope changed ends with ``PERMISSIONS_CHANGED``
        (or the new rules' FORBIDDEN/UNAUTHENTICATED): none keeps delivering under the old
        rules. Returns how many operations ended. This process only: call it on each.
        """
        old = self.permissions.current
        unknown = set(rules) - set(old.collections)
        if unknown:
            raise ConfigurationError(f"reload_rules names unknown collections {sorted(unknown)}")
        collections = [
            dataclasses.replace(c, rules=_rules(rules[c.name])) if c.name in rules else c
            for c in old.collections.values()
        ]
        new = Authorizer(collections, multi_tenant=old.multi_tenant, admin_role=old.admin_role, anonymous=old.anonymous)
        # No await from here to the end: no event is delivered between the swap and the
        # scope checks, so none reaches a subscriber under rules it no longer has.
        self.permissions.current = new
        ended = 0
        for conn in list(self.connections):
            principal: Principal | None = getattr(conn, "principal", None)
            if principal is None or not _permissions_differ(old, new, principal, rules):
                continue
            stale = [
                (op_id, error)
                for op_id, outcome in list(conn.streams.items())
                if (error := _stale_scope(old, new, principal, outcome)) is not None
            ]
            self.system.emit(
                conn,
                SystemEventKind.PERMISSIONS_CHANGED,
                "Your permissions changed: operations whose scope changed ended; subscribe again to continue",
                {"ended": [op_id for op_id, _ in stale]},
            )
            for op_id, error in stale:
                conn.finish(op_id, [error])
            ended += len(stale)
        logger.info("Rules reloaded for %s: %d operations ended", ", ".join(sorted(rules)) or "nothing", ended)
        return ended


def _rules(value: Rules | Mapping[str, Any]) -> Rules:
    return value if isinstance(value, Rules) else Rules.from_mapping(value)


def _decision(authorizer: Authorizer, collection: str, principal: Principal, action: Action) -> str:
    """What ``authorizer`` lets ``principal`` do: its guard, or the error refusing it."""
    try:
        return repr(authorizer.guard(collection, principal, action))
    except TidingsError as exc:
        return exc.code.value  # refused before and after: the same, whatever the message says


def _permissions_differ(old: Authorizer, new: Authorizer, principal: Principal, names: Mapping[str, Any]) -> bool:
    return any(_decision(old, n, principal, a) != _decision(new, n, principal, a) for n in names for a in Action)


def _stale_scope(old: Authorizer, new: Authorizer, principal: Principal, outcome: Streaming) -> dict[str, Any] | None:
    """The error ending ``outcome`` if its read scope changed, else None (channels and system events keep)."""
    subscriber = outcome.subscriber
    if isinstance(subscriber, Subscriber):
        names: Sequence[str] = (subscriber.group.selection.collection.name,)
    elif isinstance(subscriber, LiveMember):
        names = sorted(subscriber.group.collections)
    else:
        return None
    for name in names:
        if _decision(old, name, principal, Action.READ) == _decision(new, name, principal, Action.READ):
            continue
        try:
            new.guard(name, principal, Action.READ)
        except TidingsError as exc:
            return {"message": exc.message, "extensions": exc.extensions}
        error = PermissionsChanged(f"{name}: your read permission changed; subscribe again to continue")
        return {"message": error.message, "extensions": error.extensions}
    return None
