"""JSON log lines (``--log-format json``): one object per line, the same keys on every line.
Pure.

Keys: ``time`` (UTC, milliseconds), ``level`` (debug, info, warning, error), ``msg``, then
``runId``, ``commit``, ``namespace``, ``vm``, ``volume``, ``step``, ``migrationId`` (null when
a line is not about one), and ``logger`` for records of the standard logging module. The
values come from the structured fields of progress lines (``model.progress.Line``) and of log
records (``extra=``), so a log pipeline filters on ``vm`` or ``step`` without parsing ``msg``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

from reconciler.model.progress import FIELDS

KEYS = ("runId", *FIELDS)
_LEVELS = {"error:": "error", "warning:": "warning", "debug:": "debug", "note:": "info"}


def level_of(message: str) -> tuple[str, str] | None:
    """(level, message without its prefix) for a line opening with ``error:``, ``warning:``,
    ``debug:`` or ``note:``; None for any other line."""
    for prefix, level in _LEVELS.items():
        if message.startswith(prefix):
            rest = message[len(prefix) :].lstrip()
            return level, (rest if prefix != "note:" else message)
    return None


def log_line(
    *,
    time: datetime,
    level: str,
    message: str,
    fields: Mapping[str, str | None],
    logger: str | None = None,
) -> str:
    """One compact JSON object (no newline)."""
    doc: dict[str, object] = {
        "time": time.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level,
        "msg": message,
    }
    for key in KEYS:
        doc[key] = fields.get(key) or None
    if logger:
        doc["logger"] = logger
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
