"""Structured job events (``job_run``, ``shard_done``, ``shard_retry``, ...) through ``logging``.

Each event is a log record carrying a name and fields; ``JsonFormatter`` writes one JSON object
per line (for log collectors), ``TextFormatter`` a readable ``event key=value`` line. The CLI
picks one. Never put credentials in an event: stores are named by their redacted URL, and both
formatters redact every URL in a message or field once more (an error text may quote one).

Why our own JSON formatter and not ``python-json-logger``: it is a dozen lines, and what matters
in it (redacting every field, the event name as a key, UTC timestamps) would be a subclass of the
library's formatter all the same; a dependency would add nothing to it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from pipeline.storage import redact

logger = logging.getLogger("callic.events")


def emit(event: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, event, extra={"event": event, "fields": fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: redact(v) if isinstance(v, str) else v for k, v in getattr(record, "fields", {}).items()}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or "log",
            **_fields(record),
        }
        if not hasattr(record, "event"):
            out["message"] = redact(record.getMessage())
            out["logger"] = record.name
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "fields", None) is None:
            return f"{record.levelname.lower()}: {redact(record.getMessage())}"
        return " ".join([redact(record.getMessage()), *(f"{k}={v}" for k, v in _fields(record).items())])


def configure(json_lines: bool, verbose: bool) -> None:
    """Send pipeline logs to stderr: JSON lines, or text; INFO with ``verbose`` or JSON, else WARNING.
    With JSON lines, Python warnings become JSON lines too (stderr must hold nothing else)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    names = ["callic.events", "pipeline"]
    if json_lines:
        logging.captureWarnings(True)
        names.append("py.warnings")
    for name in names:
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(logging.INFO if json_lines or verbose else logging.WARNING)
        lg.propagate = False
