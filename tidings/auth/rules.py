"""Permission rules per collection and action, turned into filters.

A rule never runs as ad-hoc code: it becomes a ``Filter`` over the record
(account scope AND the rule), so the same guard is compiled to SQL for queries
and writes, and to a predicate for every delivered event.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from tidings.auth.principal import ANY_ACCOUNT, Principal
from tidings.filters import MATCH_ALL, And, Compare, FieldKind, Filter, Op

__all__ = ["Action", "Authorizer", "Rules"]


class Action(str, enum.Enum):
    READ = "read"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


@dataclasses.dataclass(frozen=True, slots=True)
class Rules:
    """Placeholder until the auth issue fills in rule kinds."""

    read: object = "public"
    create: object = "public"
    update: object = "public"
    delete: object = "public"


ACCOUNT_COLUMN = "account"


class Authorizer:
    """Decides, per principal, collection and action, which records are in reach."""

    def __init__(self, *, multi_tenant: bool = False, rules: Mapping[str, Rules] | None = None) -> None:
        self.multi_tenant = multi_tenant
        self.rules = dict(rules or {})

    @classmethod
    def from_settings(cls, collections: object, settings: object, *, auth_enabled: bool) -> Authorizer:
        return cls(multi_tenant=auth_enabled)

    def guard(self, collection: str, principal: Principal, action: Action) -> Filter:
        """The filter a record must match for ``principal`` to ``action`` it."""
        if not self.multi_tenant:
            return MATCH_ALL
        return And((Compare(ACCOUNT_COLUMN, FieldKind.STRING, Op.EQ, principal.account),))

    def check_connect(self, principal: Principal) -> None:
        """Raise if ``principal`` may not open a realtime connection at all."""

    def account_for_new(self, principal: Principal) -> str | None:
        return principal.account if self.multi_tenant else None

    def check_create(self, collection: object, principal: Principal, values: Mapping[str, object]) -> None:
        """Raise if ``principal`` may not create a record with ``values``."""

    def check_update_result(self, collection: object, principal: Principal, record: Mapping[str, object]) -> None:
        """Raise if an update would move a record out of what ``principal`` may write."""

    def scope_key(self, collection: str, principal: Principal) -> object:
        """What of the principal decides what a subscriber may see (the group key part)."""
        return (principal.account, principal.role, principal.sub) if self.multi_tenant else None

    def index_account(self, principal: Principal) -> object:
        return principal.account if self.multi_tenant else ANY_ACCOUNT
