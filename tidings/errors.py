"""The tidings exception tree, and its stable error codes.

TidingsError
 ├── BadUserInput        BAD_USER_INPUT
 ├── NotFound            NOT_FOUND
 ├── Conflict            CONFLICT
 ├── Unauthenticated     UNAUTHENTICATED
 ├── Forbidden           FORBIDDEN
 ├── RateLimited         RATE_LIMITED
 ├── CursorExpired       CURSOR_EXPIRED
 ├── CursorInvalid       CURSOR_INVALID
 ├── PermissionsChanged  PERMISSIONS_CHANGED (a subscription ended by a rules reload)
 ├── Unavailable         UNAVAILABLE (the database cannot serve it now: retry after ``retryAfter``)
 └── ConfigurationError  CONFIGURATION_ERROR (raised at start-up, never to clients)

graphql-core copies a raised exception's ``extensions`` into the GraphQL error,
so every resolver may simply raise one of these.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(str, enum.Enum):
    BAD_USER_INPUT = "BAD_USER_INPUT"
    NOT_FOUND = "NOT_FOUND"
    CONFLICT = "CONFLICT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    RATE_LIMITED = "RATE_LIMITED"
    CURSOR_EXPIRED = "CURSOR_EXPIRED"
    CURSOR_INVALID = "CURSOR_INVALID"
    PERMISSIONS_CHANGED = "PERMISSIONS_CHANGED"
    UNAVAILABLE = "UNAVAILABLE"
    CONFIGURATION_ERROR = "CONFIGURATION_ERROR"
    GRAPHQL_PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
    GRAPHQL_VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"


class TidingsError(Exception):
    """Base of every error tidings raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL_SERVER_ERROR

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def extensions(self) -> dict[str, Any]:
        return {"code": self.code.value, **self.details}


class BadUserInput(TidingsError):
    code = ErrorCode.BAD_USER_INPUT


class NotFound(TidingsError):
    code = ErrorCode.NOT_FOUND


class Conflict(TidingsError):
    code = ErrorCode.CONFLICT


class Unauthenticated(TidingsError):
    code = ErrorCode.UNAUTHENTICATED


class Forbidden(TidingsError):
    code = ErrorCode.FORBIDDEN


class RateLimited(TidingsError):
    code = ErrorCode.RATE_LIMITED


class CursorExpired(TidingsError):
    code = ErrorCode.CURSOR_EXPIRED


class CursorInvalid(TidingsError):
    """A resume cursor this event log never issued: another database's, or ahead of the head."""

    code = ErrorCode.CURSOR_INVALID


class PermissionsChanged(TidingsError):
    """The caller's rules were reloaded and its subscription's scope changed: subscribe again."""

    code = ErrorCode.PERMISSIONS_CHANGED


class Unavailable(TidingsError):
    """The database cannot serve the request now (its disk is full, it is unreachable past
    ``--db-outage-wait``): send it again after ``retryAfter`` seconds. Nothing was written,
    unless ``outcome`` says ``unknown`` (a COMMIT whose answer was lost and could not be read)."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, message: str, *, retry_after: float, **details: Any) -> None:
        super().__init__(message, retryAfter=retry_after, **details)


class ConfigurationError(TidingsError):
    code = ErrorCode.CONFIGURATION_ERROR
