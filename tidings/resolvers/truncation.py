"""A list read without a ``limit`` is cut at ``--max-limit``, and says so: the response's
``extensions.truncated`` names it (its response path) with the limit that cut it."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from tidings.resolvers.context import Context
from tidings.types import Record


def response_path(info: Any) -> list[str | int]:
    """The field's path in the response (aliases as written), root first."""
    keys: list[str | int] = []
    path = info.path
    while path is not None:
        keys.append(path.key)
        path = path.prev
    return keys[::-1]


async def read_capped(ctx: Context, info: Any, read: Awaitable[list[Record]]) -> list[Record]:
    """``read`` asked for ``--max-limit`` + 1 rows: keep ``--max-limit``, and note the cut when there were more."""
    rows = await read
    cap = ctx.services.max_limit
    if len(rows) > cap:
        del rows[cap:]
        ctx.truncated.append({"path": response_path(info), "limit": cap})
    return rows
