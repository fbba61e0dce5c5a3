"""Progress during a wait: changes, not repeats, and a heartbeat while nothing changes. Pure.

A wait (``MoveRun.wait``) ticks every ``Settings.tick`` seconds, and each tick describes what
it sees (the migration's phase, a copy's progress, the pods still holding a disk). Printing
that every tick repeats the same line dozens of times (issue 18: 32 identical
``migration ... Running`` lines in the demo). ``Narration`` lets a line through only when its
``key`` differs from the last one let through, and otherwise at most one heartbeat every
``heartbeat`` seconds (30 s): the line with how long its key has been the same, so no two
consecutive lines are the same and a quiet wait still shows it is alive. The key is the line
itself, with every percentage in steps of 10 (a copy's ``CloneInProgress 18.06%`` shows when
it passes 20%, 30%, ...), unless the caller gives one.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

HEARTBEAT = 30.0  # seconds between two lines of a wait in which nothing changed
HEARTBEAT_MARK = "still waiting after"
"""What a heartbeat line ends with (``(still waiting after 1m02s)``)."""


def elapsed(seconds: float) -> str:
    """``0.4s``, ``12s``, ``2m05s``, ``1h02m07s``."""
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m{whole % 60:02d}s"


_PERCENT = re.compile(r"(\d+(?:\.\d+)?)%")


def coarse(text: str) -> str:
    """``text`` with each percentage rounded down to a step of 10 (``18.06%`` -> ``10%``)."""
    return _PERCENT.sub(lambda m: f"{int(float(m.group(1)) // 10 * 10)}%", text)


class Narration:
    """The lines of one wait: each ``offer`` returns the line to print, or None."""

    def __init__(
        self, heartbeat: float = HEARTBEAT, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.heartbeat = heartbeat
        self.clock = clock
        self._key: str | None = None
        self._since = 0.0  # when the current key first appeared
        self._printed = 0.0  # when the last line was let through

    def offer(self, text: str, key: str | None = None) -> str | None:
        """``text`` when its key is new; a heartbeat (``text`` and how long it has been so)
        when the key has not changed for ``heartbeat`` seconds since the last line; else
        None."""
        key = coarse(text) if key is None else key
        now = self.clock()
        if key != self._key:
            self._key, self._since, self._printed = key, now, now
            return text
        if now - self._printed >= self.heartbeat:
            self._printed = now
            return f"{text} ({HEARTBEAT_MARK} {elapsed(now - self._since)})"
        return None
