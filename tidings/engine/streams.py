"""Your own subscriptions (Strawberry async generators), served by tidings' transports.

graphql-core's ``subscribe`` runs the field's generator; one task per operation pumps each
result, rendered and classified as every other payload, into the connection's sink, under the
same subscribe limits (checked before) and event rate (``rate``, set by the engine) as the
generated subscriptions. The generator runs as the connection's principal (``info.context``);
its snapshot, if it reads, is released after each result so none is held for the stream's life.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from inspect import isawaitable
from typing import Any

import orjson
from graphql import DocumentNode, ExecutionResult, GraphQLError, subscribe

from tidings.errors import ErrorCode
from tidings.limits import TokenBucket, retry_after
from tidings.realtime.group import Sink
from tidings.resolvers.context import Context
from tidings.schema.executor import Executor as FieldExecutor
from tidings.schema.extensions import classify_all, log_unexpected

logger = logging.getLogger("tidings.engine")

__all__ = ["StreamSubscriber", "start_stream"]


class StreamSubscriber:
    """One of your subscriptions on one connection: its pump task, cancelled by ``stop``."""

    __slots__ = ("context", "delivered", "op_id", "rate", "sink", "stream", "task")

    def __init__(self, sink: Sink, op_id: str, context: Context, stream: AsyncIterator[ExecutionResult]) -> None:
        self.sink = sink
        self.op_id = op_id
        self.context = context
        self.stream = stream
        self.rate: TokenBucket | None = None  # the engine sets the connection's event bucket
        self.delivered = 0
        # Created now, first run on a later turn of the loop: the transport registers the
        # operation before anything is pushed or finished.
        self.task = asyncio.get_running_loop().create_task(self._pump(), name="tidings-stream")

    def stop(self) -> None:
        if self.task is not asyncio.current_task():
            self.task.cancel()

    async def _pump(self) -> None:
        errors: list[dict[str, Any]] | None = None
        try:
            async for result in self.stream:
                rate = self.rate
                if rate is not None and rate.take():
                    errors = [_over_rate(rate)]
                    self.rate = None
                    break
                self.delivered += 1
                self.sink.push(self.op_id, 0, _payload(result))
                await self.context.release()  # a read of this result's resolvers: not kept for the next
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("A subscription of your code failed", exc_info=True)
            errors = [
                {"message": "Internal server error", "extensions": {"code": ErrorCode.INTERNAL_SERVER_ERROR.value}}
            ]
        finally:
            await _close(self.stream)
            await self.context.close()
        self.sink.finish(self.op_id, errors)


async def start_stream(
    schema: Any,
    document: DocumentNode,
    variables: dict[str, Any] | None,
    operation_name: str | None,
    context: Context,
    sink: Sink,
    op_id: str,
) -> StreamSubscriber | list[dict[str, Any]]:
    """Start the generator of ``document``'s subscription; its errors if it did not start."""
    started: Any = subscribe(
        schema,
        document,
        context_value=context,
        variable_values=variables,
        operation_name=operation_name,
        executor_class=FieldExecutor,
    )
    if isawaitable(started):
        started = await started
    if isinstance(started, ExecutionResult):
        await context.close()
        errors: list[GraphQLError] = list(started.errors or [])
        log_unexpected(errors)
        return [dict(e.formatted) for e in classify_all(errors)]
    return StreamSubscriber(sink, op_id, context, started)


def _over_rate(rate: TokenBucket) -> dict[str, Any]:
    seconds = retry_after(max(rate.until_full(), 1.0 / rate.rate))
    return {
        "message": f"More than {rate.rate:g} events per second (burst {rate.burst:g}) for this subscription: it ended",
        "extensions": {"code": ErrorCode.RATE_LIMITED.value, "retryAfter": seconds},
    }


def _payload(result: ExecutionResult) -> str:
    payload: dict[str, Any] = {"data": result.data}
    if result.errors:
        log_unexpected(result.errors)
        payload["errors"] = [e.formatted for e in classify_all(list(result.errors))]
    return orjson.dumps(payload).decode()


async def _close(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:
            logger.debug("Closing a subscription's generator failed", exc_info=sys.exc_info())
