"""Structured logs: one line per event, as text (``key=value``) or JSON lines (``kvd --log-format json``).

Fields ride on a record as ``extra={"fields": {...}}`` (see ``event``). Multi-line text such as a traceback
is escaped, so a line is always one event. Tensor contents are never passed to a logger.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from kvserve.proto.echo import escape

FORMATS = ("text", "json")
QUOTE_CHARS = ' ="\n'


def event(logger: logging.Logger, level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with structured ``fields``."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields})


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _one_line(text: str) -> str:
    """Backslashes doubled, then every control or line-separator character (\\n, \\r, U+2028, ...) escaped."""
    return escape(text.replace("\\", "\\\\"))


class TextFormatter(logging.Formatter):
    """``2026-01-01T00:00:00.000Z INFO logger: message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, f"{record.name}:", _one_line(record.getMessage())]
        for key, value in getattr(record, "fields", {}).items():
            text = str(value)
            quoted = not text or any(c in text for c in QUOTE_CHARS)
            parts.append(f"{key}={json.dumps(text) if quoted else _one_line(text)}")
        if record.exc_info:
            parts.append("exc=" + json.dumps(self.formatException(record.exc_info)))
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the event's fields, and exc for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"ts": _timestamp(record), "level": record.levelname, "logger": record.name,
                                "msg": record.getMessage(), **getattr(record, "fields", {})}
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        # ensure_ascii (the default) escapes U+2028/U+2029 and every control character: one event per line
        return json.dumps(data, default=str)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
