"""JWT verification with pyjwt, and where tokens are found on each transport.

One algorithm family is configured and only it is accepted: the header never
chooses the algorithm, so ``alg: none`` and HS/RS key confusion are refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jwt
from jwt.algorithms import get_default_algorithms

from tidings.auth.principal import ANONYMOUS, Principal
from tidings.errors import ConfigurationError, Unauthenticated

logger = logging.getLogger("tidings.auth")

_HMAC = {"HS256": 32, "HS384": 48, "HS512": 64}  # the least key length, bytes: the hash output's
_ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA")


class Authenticator:
    """Turns a bearer token into a ``Principal``; without a key, everyone is anonymous."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | None = None,
        algorithm: str | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 5.0,
        claim_sub: str = "sub",
        claim_account: str = "account",
        claim_role: str = "role",
    ) -> None:
        if secret and public_key:
            raise ConfigurationError("--jwt-secret and --jwt-public-key: give one, not both")
        self.key: str | None = None
        if secret:
            self.algorithm = algorithm or "HS256"
            if self.algorithm not in _HMAC:
                raise ConfigurationError(f"--jwt-algorithm {self.algorithm!r}: a secret needs HS256, HS384 or HS512")
            size, needed = len(secret.encode()), _HMAC[self.algorithm]
            if size < needed:
                # RFC 7518 section 3.2: a key at least as long as the hash output MUST be used.
                # A shorter one falls to an offline guess from any one token its holder has.
                raise ConfigurationError(
                    f"--jwt-secret: {size} bytes is too short for {self.algorithm}, which needs at least {needed} "
                    "(RFC 7518 section 3.2); make one with: "
                    "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )
            self.key = secret
        elif public_key:
            self.algorithm = algorithm or "RS256"
            if self.algorithm not in _ASYMMETRIC:
                raise ConfigurationError(
                    f"--jwt-algorithm {self.algorithm!r}: a JWT public key needs an asymmetric algorithm "
                    f"({', '.join(_ASYMMETRIC)})"
                )
            try:
                self.key = Path(public_key).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not a text (PEM) file"
                raise ConfigurationError(f"--jwt-public-key {public_key}: cannot read it: {reason}") from exc
            try:
                # Parsed now, not at the first token: pyjwt would only then find it is garbage.
                get_default_algorithms()[self.algorithm].prepare_key(self.key)
            except (jwt.InvalidKeyError, ValueError, TypeError) as exc:
                raise ConfigurationError(
                    f"--jwt-public-key {public_key}: not a PEM public key for {self.algorithm}"
                ) from exc
        else:
            self.algorithm = algorithm or "HS256"
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.claim_sub = claim_sub
        self.claim_account = claim_account
        self.claim_role = claim_role

    @property
    def enabled(self) -> bool:
        return self.key is not None

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; ``Unauthenticated`` otherwise."""
        if self.key is None:
            return ANONYMOUS
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={"require": ["exp", self.claim_sub], "strict_aud": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("Token expired") from exc
        except jwt.PyJWTError as exc:
            # pyjwt's text helps whoever forges tokens more than whoever holds one: it goes to the log.
            logger.info("Refused a token: %s: %s", type(exc).__name__, exc)
            raise Unauthenticated("Invalid token") from exc
        sub = claims.get(self.claim_sub)
        account = claims.get(self.claim_account)
        role = claims.get(self.claim_role)
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated(f"Token claim {self.claim_sub!r} must be a non-empty string")
        return Principal(
            sub=sub,
            account=str(account) if account is not None else None,
            role=str(role) if role is not None else None,
            exp=float(claims["exp"]),
            claims=claims,
        )

    def optional(self, token: str | None) -> Principal:
        return ANONYMOUS if not token else self.verify(token)

    def expires_in(self, principal: Principal, *, leeway: bool = True) -> float | None:
        """Seconds until the principal's token stops being accepted (its ``exp`` plus the
        leeway: when a connection on it closes), or with ``leeway=False`` until its own ``exp``."""
        if principal.exp is None:
            return None
        return principal.exp + (self.leeway if leeway else 0.0) - time.time()

    def mint(self, claims: Mapping[str, Any], *, ttl: float = 3600.0) -> str:
        """A development token (HS* only): ``tidings token``."""
        if self.key is None or self.algorithm not in _HMAC:
            raise ConfigurationError("Minting tokens needs a JWT secret (TIDINGS_JWT_SECRET or --jwt-secret)")
        now = int(time.time())
        payload = {"iat": now, "exp": now + int(ttl), **claims}
        if self.issuer:
            payload.setdefault("iss", self.issuer)
        if self.audience:
            payload.setdefault("aud", self.audience)
        return jwt.encode(payload, self.key, algorithm=self.algorithm)


def bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("Authorization must be 'Bearer <token>'")
    return token.strip()


def token_from_init(payload: Mapping[str, Any] | None) -> str | None:
    """The token in a ``connection_init`` payload, in the shapes real clients send."""
    if not payload:
        return None
    for key in ("authorization", "Authorization"):
        value = payload.get(key)
        if isinstance(value, str):
            return bearer(value) if " " in value.strip() else value.strip() or None
    headers = payload.get("headers")
    if isinstance(headers, Mapping):
        for key in ("authorization", "Authorization"):
            value = headers.get(key)
            if isinstance(value, str):
                return bearer(value) if " " in value.strip() else value.strip() or None
    for key in ("token", "authToken", "accessToken"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    return None
