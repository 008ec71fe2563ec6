"""Logging for antifragile processes: plain text for people, JSON lines for machines.

``ANTIFRAGILE_LOG_FORMAT=json`` turns on one JSON object per line. Records that come from
workflow or activity code carry the Temporal SDK's context (``temporal_workflow`` /
``temporal_activity`` extras); they are flattened into ``workflow_id``, ``run_id``,
``workflow_type`` and ``activity_type`` fields so a log search by workflow id works.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from antifragile.settings import Settings

_CONTEXT_FIELDS = {
    "temporal_workflow": {
        "workflow_id": "workflow_id",
        "run_id": "run_id",
        "workflow_type": "workflow_type",
        "task_queue": "task_queue",
    },
    "temporal_activity": {
        "workflow_id": "workflow_id",
        "workflow_run_id": "run_id",
        "activity_type": "activity_type",
        "activity_id": "activity_id",
        "attempt": "attempt",
    },
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the Temporal context flattened in."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as a JSON line."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for extra, fields in _CONTEXT_FIELDS.items():
            context = getattr(record, extra, None)
            if isinstance(context, dict):
                for source, target in fields.items():
                    if source in context:
                        doc[target] = context[source]
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def configure_logging(
    level: str | None = None, fmt: str | None = None, settings: Settings | None = None
) -> None:
    """Configure the root logger.

    Args:
        level: Log level; default ``settings.log_level`` (``ANTIFRAGILE_LOG_LEVEL``).
        fmt: ``text`` or ``json``; default ``settings.log_format``
            (``ANTIFRAGILE_LOG_FORMAT``).
        settings: Where the defaults come from; default read from ``ANTIFRAGILE_*``.
    """
    if level is None or fmt is None:
        settings = settings or Settings()
    level = (level or (settings.log_level if settings else "INFO")).upper()
    fmt = (fmt or (settings.log_format if settings else "text")).lower()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
