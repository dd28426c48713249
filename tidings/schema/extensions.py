"""Schema extensions: stable error codes and the event-log position of reads."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension

from tidings.errors import ErrorCode, TidingsError

logger = logging.getLogger("tidings")

_INPUT_HINTS = ("of required type", "got invalid value", "Expected value of type", "Variable '$", "Expected type")


def classify(error: GraphQLError) -> GraphQLError:
    """Give every error an ``extensions.code``; mask unexpected ones."""
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


def classify_all(errors: list[GraphQLError]) -> list[GraphQLError]:
    return [classify(e) for e in errors]


def log_unexpected(errors: list[GraphQLError]) -> None:
    for error in errors:
        original = error.original_error
        if original is not None and not isinstance(original, (TidingsError, GraphQLError)):
            logger.error("Unexpected error in a resolver", exc_info=original)


class ErrorCodes(SchemaExtension):
    """Stable ``extensions.code`` on every error; unexpected errors masked."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is not None and result.errors:
            result.errors = classify_all(list(result.errors))
            response = getattr(self.execution_context.context, "response", None)
            if response is not None and any(
                (e.extensions or {}).get("code") == ErrorCode.UNAUTHENTICATED.value for e in result.errors
            ):
                # GraphQL-over-HTTP: a missing or bad token is a 401 with the error as body.
                response.status_code = 401


class ReadSnapshot(SchemaExtension):
    """Closes the request's read snapshot and reports its event-log position.

    The response's ``extensions.seq`` is the sequence the data reflects: a
    client may subscribe with ``after: seq`` and neither miss nor double-apply.
    """

    async def on_execute(self) -> AsyncIterator[None]:
        yield
        ctx = self.execution_context.context
        if hasattr(ctx, "close"):
            await ctx.close()

    def get_results(self) -> dict[str, Any]:
        seq = getattr(self.execution_context.context, "seq", None)
        return {"seq": str(seq)} if seq is not None else {}
