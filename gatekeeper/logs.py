"""Structured (JSON lines) logging on stderr. Never log secrets: callers pass masked values."""

from __future__ import annotations

import json
import logging
import sys
import time

from gatekeeper import environment
from gatekeeper.errors import UserError

#: The levels a user may set (the sidecar's log_level setting accepts the same).
LEVELS = ("debug", "info", "warning", "error")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, event, and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False, default=str)


def configure_logging(level: str | None = None) -> None:
    """Send gatekeeper's logs to stderr as JSON lines (level from ``$GATEKEEPER_LOG_LEVEL``, default info).

    Raises :class:`UserError` for a level that is not one of :data:`LEVELS`.
    """
    name = (level or environment.read(environment.LOG_LEVEL, "info")).lower()
    if name not in LEVELS:
        raise UserError(f"log level {name!r} (GATEKEEPER_LOG_LEVEL or log_level) is not a level; "
                        f"use one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("gatekeeper")
    root.handlers[:] = [handler]
    root.setLevel(name.upper())
    root.propagate = False
