"""Text echoed back to a terminal: escaped and cut to a sane length. Pure.

Values in error messages come from plan files, templates and the cluster: a plan value with
``\\x1b]0;...`` would retitle the user's terminal (or hide the rest of the line), a template
that renders 100 MB would echo 100 MB. ``shown`` makes any value safe to print: control
characters (C0, DEL, C1), bidirectional overrides and line/paragraph separators become
visible escapes (``\\x1b``, ``\\n``, ``\\u202e``), and long text is cut, saying how much was.
"""

from __future__ import annotations

import re

MAX_SHOWN = 300
"""Characters of one echoed value."""
MAX_MESSAGE = 2000
"""Characters of one whole message (``Problem``, ``ClusterError``)."""

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """``value`` as printable text: escaped, and cut to ``limit`` characters (plus a note)."""
    if isinstance(value, bytes | bytearray):
        text = bytes(value[: limit * 4 + 4]).decode("utf-8", "replace")
        total = len(value)
    else:
        text = str(value)
        total = len(text)
    cut = text[:limit]
    escaped = _UNSAFE.sub(_escape, cut)
    if total > limit:
        more = total - limit
        unit = "bytes" if isinstance(value, bytes | bytearray) else "characters"
        escaped += f"... ({more:,} more {unit})"
    return escaped


def clean(message: str, limit: int = MAX_MESSAGE) -> str:
    """A whole message made safe to print (``shown`` with the message-sized limit)."""
    if len(message) <= limit and not _UNSAFE.search(message):
        return message
    return shown(message, limit)
