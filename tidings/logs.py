"""Log setup for ``tidings serve``: text lines, or one JSON object per line (``--log-format json``).

A JSON line holds the time, level, logger, message and every ``extra`` field the call
gave (a connection's id, transport, sub, duration...). The whole line goes through
``tidings.redaction.redact`` last: no token reaches the output, whichever field held it.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import orjson

from tidings.config import Settings
from tidings.errors import ConfigurationError
from tidings.redaction import redact

__all__ = ["TEXT_FORMAT", "JsonFormatter", "configure_logging", "uvicorn_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord carries: the rest of its attributes came from ``extra``.
# uvicorn's color_message is its message again, with terminal colour codes.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, the extras, ``exception``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        line = orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        return redact(line)


def configure_logging(settings: Settings) -> None:
    """The root handler for ``settings.log_format`` at ``settings.log_level`` (replaces any before).

    With JSON, uvicorn is given no logging config of its own (``serving.uvicorn_options``):
    its loggers propagate here and its lines come out as JSON too.
    """
    fmt = settings.log_format.strip().lower()
    if fmt not in ("text", "json"):
        raise ConfigurationError(f"--log-format must be text or json, got {settings.log_format!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # Alembic (tidings migrate) says at INFO what it sets up for each comparison: tidings logs what changed.
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))


def uvicorn_logging(settings: Settings) -> dict[str, Any]:
    """Options for ``uvicorn.Config``: with JSON, no logging config of uvicorn's own, so its
    loggers propagate to the handler ``configure_logging`` installed; with text, uvicorn's."""
    return {"log_config": None} if settings.log_format.strip().lower() == "json" else {}
