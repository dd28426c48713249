"""Secrets out of log lines: credential query parameters, bearer tokens and JWTs are masked.

An EventSource cannot set headers, so its JWT travels as ``?token=``; uvicorn's access
log writes the whole path. A ``logging.Filter`` on uvicorn's and tidings' loggers (and
on the root handlers, for what propagates) rewrites each record's message and arguments.
"""

from __future__ import annotations

import logging
import re
from typing import Any

__all__ = ["REDACTED", "SecretsFilter", "install_redaction", "redact"]

REDACTED = "[REDACTED]"

# A query parameter whose name says it holds a credential: token, access_token, auth,
# authorization, password, secret, api_key, key, jwt, session, ... (name case ignored).
_PARAM = re.compile(
    r"(?P<name>(?:^|(?<=[?&;\s\"']))[\w.\-\[\]%]*?"
    r"(?:token|auth|password|passwd|pwd|secret|key|jwt|session|credential|signature)[\w.\-\[\]%]*=)"
    r"[^&;\s\"']+",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<name>\bbearer\s+)[^\s\"',;]+", re.IGNORECASE)
# Three base64url segments, the first a JSON header ("eyJ" is '{"' encoded): a JWT anywhere.
_JWT = re.compile(r"\beyJ[\w-]*\.[\w-]+\.[\w-]*")


def redact(text: str) -> str:
    """``text`` with every credential it carries replaced by ``[REDACTED]``."""
    if "=" in text:
        text = _PARAM.sub(lambda m: m["name"] + REDACTED, text)
    text = _BEARER.sub(lambda m: m["name"] + REDACTED, text)
    return _JWT.sub(REDACTED, text)


def _redact_arg(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class SecretsFilter(logging.Filter):
    """Rewrites a record's message and string arguments; never drops a record.

    The arguments keep their shape: uvicorn's access formatter unpacks them by position.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        return True


_FILTER = SecretsFilter()
_LOGGERS = ("uvicorn", "uvicorn.access", "uvicorn.error", "tidings")


def install_redaction() -> None:
    """Put the filter on uvicorn's and tidings' loggers and on the root handlers (idempotent).

    A logger's filters see only what is logged to that logger, not what its children
    propagate; hence every ``tidings.*`` logger, and the handlers those records reach.
    Call it after uvicorn configured logging (``uvicorn.Config`` does, when built).
    """
    names = [*_LOGGERS, *(n for n in logging.Logger.manager.loggerDict if n.startswith("tidings."))]
    targets: list[logging.Filterer] = [logging.getLogger(n) for n in names]
    for logger in (logging.getLogger(), logging.getLogger("uvicorn"), logging.getLogger("uvicorn.access")):
        targets.extend(logger.handlers)
    for target in targets:
        if _FILTER not in target.filters:
            target.addFilter(_FILTER)
