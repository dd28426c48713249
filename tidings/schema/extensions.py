"""Schema extensions: stable error codes and the event-log position of reads."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from tidings.errors import ErrorCode, TidingsError
from tidings.schema.validation import strip_suggestions

logger = logging.getLogger("tidings")

_INPUT_HINTS = ("of required type", "got invalid value", "Expected value of type", "Variable '$", "Expected type")


def classify(error: GraphQLError, *, suggestions: bool = True) -> GraphQLError:
    """Give every error an ``extensions.code``; mask unexpected ones; without ``suggestions``, no "Did you mean"."""
    if not suggestions:
        error.message = strip_suggestions(error.message)
    original = error.original_error
    if isinstance(original, TidingsError):
        return error
    if original is not None and not isinstance(original, GraphQLError):
        return GraphQLError(
            "Internal server error",
            nodes=error.nodes,
            path=error.path,
            extensions={"code": ErrorCode.INTERNAL_SERVER_ERROR.value},
        )
    if error.extensions and "code" in error.extensions:
        return error
    if error.message.startswith("Syntax Error"):
        code = ErrorCode.GRAPHQL_PARSE_FAILED
    elif any(hint in error.message for hint in _INPUT_HINTS):
        code = ErrorCode.BAD_USER_INPUT
    else:
        code = ErrorCode.GRAPHQL_VALIDATION_FAILED
    error.extensions = {**(error.extensions or {}), "code": code.value}
    return error


def classify_all(errors: list[GraphQLError], *, suggestions: bool = True) -> list[GraphQLError]:
    return [classify(e, suggestions=suggestions) for e in errors]


def log_unexpected(errors: list[GraphQLError]) -> None:
    for error in errors:
        original = error.original_error
        if original is not None and not isinstance(original, (TidingsError, GraphQLError)):
            logger.error("Unexpected error in a resolver", exc_info=original)


def finish_errors(
    errors: list[GraphQLError], context: Any, *, suggestions: bool = True, data: Any = None
) -> list[GraphQLError]:
    """An operation's errors as answered: classified (see ``classify``), and over HTTP a
    401 when one of them is UNAUTHENTICATED (GraphQL over HTTP: a missing or bad token), a
    503 with Retry-After when all are UNAVAILABLE and no root field has ``data`` (nothing was
    done: the whole request may be sent again)."""
    errors = classify_all(errors, suggestions=suggestions)
    response = getattr(context, "response", None)
    if response is None or not errors:
        return errors
    codes = [(e.extensions or {}).get("code") for e in errors]
    if ErrorCode.UNAUTHENTICATED.value in codes:
        response.status_code = 401
    elif all(code == ErrorCode.UNAVAILABLE.value for code in codes) and all(
        value is None for value in (data or {}).values()
    ):
        wait = max(float((e.extensions or {}).get("retryAfter", 1)) for e in errors)
        response.status_code = 503
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return errors


def snapshot_extensions(context: Any) -> dict[str, Any]:
    """``extensions.seq`` and ``extensions.cursor``: the event-log position a closed read snapshot reflected;
    ``extensions.truncated``: the lists (by response path) cut at ``--max-limit``, each with that limit."""
    seq = getattr(context, "seq", None)
    if seq is None:
        return {}
    out: dict[str, Any] = {"seq": str(seq), "cursor": f"{context.services.store.epoch}:{seq}"}
    truncated = getattr(context, "truncated", None)
    if truncated:
        # Lists without a limit that --max-limit cut: more rows exist than the answer holds.
        out["truncated"] = truncated
    return out


class ErrorCodes(SchemaExtension):
    """Stable ``extensions.code`` on every error; unexpected errors masked."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is not None and result.errors:
            suggestions = getattr(self.execution_context.schema, "suggestions", True)
            result.errors = finish_errors(
                list(result.errors), self.execution_context.context, suggestions=suggestions, data=result.data
            )


class ReadSnapshot(SchemaExtension):
    """Closes the request's read snapshot and reports its event-log position.

    The response's ``extensions.seq`` is the sequence the data reflects: a
    client may subscribe with ``after: seq`` and neither miss nor double-apply.
    ``extensions.cursor`` is the same position with the event log's identity
    (``<epoch>:<seq>``), which a resume checks against the log it reaches.
    """

    async def on_execute(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            # Also when a resolver raised or the request was cancelled: the connection goes back.
            ctx = self.execution_context.context
            if hasattr(ctx, "close"):
                await ctx.close()

    def get_results(self) -> dict[str, Any]:
        return snapshot_extensions(self.execution_context.context)
