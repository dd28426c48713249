"""Permission rules per collection and action, turned into filters.

A rule never runs as ad-hoc code: it becomes a ``Filter`` over the record
(account scope AND the rule), so the same guard is compiled to SQL for
queries and writes, and to a predicate for every delivered event.

Rule forms (Python or TOML strings): ``"public"``, ``"authenticated"``,
``"owner:<field>"`` (the field equals the token's ``sub``), ``"role:a,b"``, or a
``where`` mapping in the filter language whose values may name claims:
``{"status": {"ne": "secret"}, "assignedTo": {"eq": "$sub"}}`` (``$sub``,
``$account``, ``$role``, ``$claims.<name>``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tidings.auth.principal import ANY_ACCOUNT, Principal
from tidings.errors import BadUserInput, ConfigurationError, Forbidden, Unauthenticated
from tidings.filters import (
    MATCH_ALL,
    MATCH_NONE,
    And,
    Compare,
    FieldKind,
    Filter,
    Op,
    compile_predicate,
    parse_filter,
    relations_in,
)

__all__ = ["Action", "Authorizer", "Rules", "check_rules"]

ACCOUNT_COLUMN = "account"


class Action(str, enum.Enum):
    READ = "read"
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    RESTORE = "restore"  # collections with soft_delete only


RuleSpec = str | Mapping[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Rules:
    """Who may do what to a collection's records (default: anyone, within their account)."""

    read: RuleSpec = "public"
    create: RuleSpec = "public"
    update: RuleSpec = "public"
    delete: RuleSpec = "public"
    restore: RuleSpec | None = None
    """Who may bring a soft-deleted record back; None: whoever may delete it."""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Rules:
        unknown = set(data) - {a.value for a in Action}
        if unknown:
            raise ConfigurationError(
                f"rules: expected the actions read, create, update, delete, restore, got {sorted(unknown)}"
            )
        return cls(**{k: v for k, v in data.items()})

    def spec(self, action: Action) -> RuleSpec:
        if action is Action.RESTORE and self.restore is None:
            return self.delete
        return getattr(self, action.value)  # type: ignore[no-any-return]


@dataclasses.dataclass(frozen=True, slots=True)
class _Compiled:
    kind: str  # public | authenticated | owner | role | where
    column: str | None = None
    roles: frozenset[str] = frozenset()
    where: Mapping[str, Any] | None = None


_RULE_FORMS = "public, authenticated, owner:<field>, role:<a,b> or a where mapping"


def check_rules(collection: Any) -> None:
    """Compile each of ``collection``'s rules once: a wrong one is refused where it is declared."""
    rules = collection.rules
    if rules is None:
        return
    if not isinstance(rules, Rules):
        raise ConfigurationError(f"{collection.name}: rules: expected tidings.Rules(...), got {type(rules).__name__}")
    for action in Action:
        _compile_rule(rules.spec(action), collection, action)


def _compile_rule(spec: RuleSpec, collection: Any, action: Action) -> _Compiled:
    what = f"{collection.name}: {action.value} rule"
    if isinstance(spec, Mapping):
        where = spec.get("where", spec)
        try:
            parse_filter(_substitute(where, Principal(sub="x", account="x", role="x")), collection.filter_fields)
        except BadUserInput as exc:
            raise ConfigurationError(f"{what}: {exc.message}") from None
        return _Compiled("where", where=where)
    if spec in ("public", "authenticated"):
        return _Compiled(spec)
    kind, _, arg = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if kind == "owner" and arg:
        fields = collection.filter_fields
        column = fields[arg].column if arg in fields else arg if arg in collection.field_map else None
        if column is None:
            known = ", ".join(f.name for f in collection.fields)
            raise ConfigurationError(f"{what} {spec!r}: expected owner:<one of {known}>, got unknown field {arg!r}")
        return _Compiled("owner", column=column)
    if kind == "role" and (roles := frozenset(r.strip() for r in arg.split(",") if r.strip())):
        return _Compiled("role", roles=roles)
    raise ConfigurationError(f"{what}: expected {_RULE_FORMS}, got {spec!r}")


def _substitute(value: Any, principal: Principal) -> Any:
    if isinstance(value, Mapping):
        return {k: _substitute(v, principal) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, principal) for v in value]
    if isinstance(value, str) and value.startswith("$"):
        name = value[1:]
        if name in ("sub", "account", "role"):
            return getattr(principal, name)
        if name.startswith("claims."):
            return principal.claim(name.removeprefix("claims."))
    return value


def _field_name(collection: Any, column: str) -> str:
    f = collection.field_map.get(column)
    return str(f.graphql_name) if f is not None else column


class Authorizer:
    """Decides, per principal, collection and action, which records are in reach."""

    def __init__(
        self,
        collections: Sequence[Any] = (),
        *,
        multi_tenant: bool = False,
        admin_role: str | None = None,
        anonymous: frozenset[str] | None = None,
    ) -> None:
        """``anonymous``: collections open to callers without a token (None = all)."""
        self.multi_tenant = multi_tenant
        self.admin_role = admin_role
        self.anonymous = anonymous
        self.collections = {c.name: c for c in collections}
        self._rules: dict[tuple[str, Action], _Compiled] = {}
        # Columns an owner rule binds to the caller's sub: written only as the caller's own.
        self._owner_columns: dict[str, tuple[str, ...]] = {}
        for c in collections:
            rules = c.rules or Rules()
            for action in Action:
                self._rules[(c.name, action)] = _compile_rule(rules.spec(action), c, action)
            owners = (self._rules[(c.name, a)].column for a in Action if self._rules[(c.name, a)].kind == "owner")
            self._owner_columns[c.name] = tuple(dict.fromkeys(col for col in owners if col is not None))

    @classmethod
    def from_settings(cls, collections: Sequence[Any], settings: Any, *, auth_enabled: bool) -> Authorizer:
        mode = settings.anonymous.strip()
        names = {c.name for c in collections}
        anonymous: frozenset[str] | None
        if mode == "auto":
            anonymous = frozenset() if auth_enabled else None
        elif mode == "on":
            anonymous = None
        elif mode == "off":
            anonymous = frozenset()
        else:
            anonymous = frozenset(n.strip() for n in mode.split(",") if n.strip())
            unknown = anonymous - names
            if unknown:
                raise ConfigurationError(f"--anonymous names unknown collections {sorted(unknown)}")
        return cls(collections, multi_tenant=auth_enabled, admin_role=settings.admin_role, anonymous=anonymous)

    def is_admin(self, principal: Principal) -> bool:
        return self.admin_role is not None and principal.role == self.admin_role

    def _allows_anonymous(self, collection: str) -> bool:
        return self.anonymous is None or collection in self.anonymous

    def check_connect(self, principal: Principal) -> None:
        """Raise if ``principal`` may not use the API at all."""
        if not principal.is_authenticated and self.anonymous is not None and not self.anonymous:
            raise Unauthenticated("A bearer token is required")

    def guard(self, collection: str, principal: Principal, action: Action) -> Filter:
        """The filter a record must match for ``principal`` to ``action`` it.

        Raises ``Unauthenticated`` or ``Forbidden`` when no record could match.
        """
        if not principal.is_authenticated and not self._allows_anonymous(collection):
            raise Unauthenticated(f"{collection}: a bearer token is required")
        if self.is_admin(principal):
            return MATCH_ALL
        parts: list[Filter] = []
        if self.multi_tenant:
            account = principal.account
            parts.append(
                Compare(ACCOUNT_COLUMN, FieldKind.STRING, Op.EQ, account)
                if account is not None
                else Compare(ACCOUNT_COLUMN, FieldKind.STRING, Op.IS_NULL, True)
            )
        rule = self._rules.get((collection, action))
        if rule is not None and rule.kind != "public":
            if not principal.is_authenticated:
                raise Unauthenticated(f"{collection}: {action.value} needs a bearer token")
            if rule.kind == "owner":
                assert rule.column is not None
                parts.append(Compare(rule.column, FieldKind.STRING, Op.EQ, principal.sub))
            elif rule.kind == "role":
                if principal.role not in rule.roles:
                    raise Forbidden(f"{collection}: {action.value} needs role {' or '.join(sorted(rule.roles))}")
            elif rule.kind == "where":
                coll = self.collections[collection]
                parts.append(parse_filter(_substitute(rule.where, principal), coll.filter_fields))
        return And(tuple(parts)) if parts else MATCH_ALL

    def read_guards(self, principal: Principal) -> Callable[[str], Filter]:
        """Collection name -> what ``principal`` may read of it; nothing (not an error) where a
        rule refuses them outright: what relations and relation filters reach through."""
        cache: dict[str, Filter] = {}

        def guard_for(name: str) -> Filter:
            found = cache.get(name)
            if found is None:
                try:
                    found = self.guard(name, principal, Action.READ)
                except (Forbidden, Unauthenticated):
                    found = MATCH_NONE
                cache[name] = found
            return found

        return guard_for

    def account_for_new(self, principal: Principal) -> str | None:
        return principal.account if self.multi_tenant else None

    def prepare_create(self, collection: Any, principal: Principal, values: dict[str, Any]) -> Filter | None:
        """Fill the owner fields, then raise ``Forbidden`` unless the new record passes the create rule.

        A create rule that follows relations (only a room's members may write in it) cannot be
        decided from the values alone: it is returned, for the store to check in SQL in the
        write's own transaction (tidings.store.WriteChecks); otherwise None.

        An owner field (one an ``owner:<field>`` rule names, for any action) is always the
        creator's ``sub``: naming another owner is refused, except for the admin role.
        """
        for column in self._owner_columns.get(collection.name, ()):
            given = values.get(column)
            if given is None:
                if principal.sub is not None:
                    values[column] = principal.sub
            elif given != principal.sub and not self.is_admin(principal):
                raise Forbidden(f"{collection.name}: {_field_name(collection, column)} must be your own id")
        guard = self.guard(collection.name, principal, Action.CREATE)
        if relations_in(guard):
            return guard
        record = {
            **{f.name: f.default for f in collection.fields},
            **values,
            "account": self.account_for_new(principal),
        }
        if not compile_predicate(guard)(record):
            raise Forbidden(f"{collection.name}: not allowed to create this record")
        return None

    def guard_in_sql(self, collection: str, principal: Principal) -> Filter | None:
        """The update rule, when it follows relations: checked in SQL after the write (else None)."""
        guard = self.guard(collection, principal, Action.UPDATE)
        return guard if relations_in(guard) else None

    def check_write_result(
        self, collection: Any, principal: Principal, record: Mapping[str, Any], previous: Mapping[str, Any]
    ) -> None:
        """Raise ``Forbidden`` if an update would move a record out of what ``principal`` may write.

        ``previous`` holds the changed fields' old values: an owner field may change only to
        the caller's own ``sub`` (the admin role may hand records to anyone).
        """
        if not self.is_admin(principal):
            for column in self._owner_columns.get(collection.name, ()):
                if column in previous and record.get(column) != principal.sub:
                    raise Forbidden(f"{collection.name}: only you can be the new {_field_name(collection, column)}")
        guard = self.guard(collection.name, principal, Action.UPDATE)
        if not relations_in(guard) and not compile_predicate(guard)(record):  # else in SQL: guard_in_sql
            raise Forbidden(f"{collection.name}: the change would put the record out of your reach")

    def index_account(self, principal: Principal) -> object:
        if not self.multi_tenant or self.is_admin(principal):
            return ANY_ACCOUNT
        return principal.account
