"""JSON-lines logging to stdout, the format every service writes (one object per line).

Each line has ``time`` (ISO 8601, UTC), ``level``, ``service``, ``logger`` and ``message``, plus any
fields passed with ``extra=`` (``method``, ``code``, ``duration_ms`` ...) and, when an exception is
logged, ``exc`` with its traceback. Log collectors parse this without per-service rules.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object; values JSON cannot encode are written with ``str``."""

    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((k, v) for k, v in record.__dict__.items() if k not in _RECORD_ATTRS)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class _JsonHandler(logging.StreamHandler):
    """Marks the handler this module installed, so a second call replaces it instead of adding one."""


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send all logging (root logger) to stdout as JSON lines tagged with ``service``.

    Idempotent: calling again replaces this module's handler (the last ``service`` and ``level`` win)
    and never duplicates lines. Handlers installed by others are left alone.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _JsonHandler)]:
        root.removeHandler(handler)
    handler = _JsonHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(level.upper())
