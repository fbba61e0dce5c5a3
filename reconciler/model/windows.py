"""Durations and maintenance windows: parsing and pure time arithmetic.

Grammar (the plan format reference, docs/plans.md, documents the same):

- duration: one or more ``<integer><unit>`` parts, units ``d`` (24h), ``h``, ``m``, ``s``,
  summed: ``90m``, ``4h``, ``1h30m``, ``2d``. Always longer than zero.
- window start: ``[DAYS ]HH:MM`` in 24-hour local time, where DAYS is a comma-separated list
  of day names or ranges: ``01:00`` (every day), ``Sat 01:00``, ``Mon-Fri 22:00``,
  ``Sat,Sun 01:00``, ``Fri-Mon 23:30`` (a range may wrap over Sunday). Day names are English,
  three letters or full, any case.
- time zone: an IANA name known to ``zoneinfo`` (``UTC``, ``Europe/Berlin``).

A window is a set of occurrences: each listed day (every day when none is listed), the window
opens at ``start`` local time and stays open for ``duration`` of *elapsed* time, so a window
that crosses midnight or a DST change is exactly as long as written. A start time that does
not exist on a spring-forward day opens when that wall-clock time would have been (02:30 in a
02:00->03:00 gap opens at 03:30); an ambiguous time on a fall-back day opens at its first
occurrence.

Every function here is pure. Parsers raise ``SpecError`` (a ``ValueError``) whose ``hint``
says how to write the value correctly.
"""

from __future__ import annotations

import difflib
import re
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache

from reconciler.model.plan import Window
from reconciler.model.text import shown

__all__ = [
    "DURATION_HINT",
    "MAX_WINDOW",
    "SpecError",
    "format_duration",
    "format_window",
    "next_window_start",
    "parse_duration",
    "parse_time_zone",
    "parse_window",
    "parse_window_start",
    "window_closes_at",
    "window_open",
]

DURATION_HINT = "write a whole number and a unit, e.g. 90m, 4h, 1h30m, 2d (units: d, h, m, s)"
WINDOW_START_HINT = (
    "write '[DAYS ]HH:MM' in 24-hour time, e.g. '01:00', 'Sat 01:00', 'Mon-Fri 22:00', "
    "'Sat,Sun 01:00'"
)
# A window of a week or more is open all the time: that is "no window", so say it plainly.
MAX_WINDOW = timedelta(days=7)
MAX_DURATION = timedelta(days=3650)
"""The longest duration accepted: ten years; anything longer (``99999999999d``) would
overflow the clock when added to now."""

# [0-9], not \d: "٤h" (an Arabic-Indic four) is not a duration, whatever int() makes of it.
_DURATION = re.compile(r"(?:[0-9]+[dhms])+")
_DURATION_PART = re.compile(r"([0-9]+)([dhms])")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_CLOCK = re.compile(r"([0-9]{1,2}):([0-9]{2})")
_DAYS = {
    name: number
    for number, names in enumerate(
        (
            ("mon", "monday"),
            ("tue", "tuesday"),
            ("wed", "wednesday"),
            ("thu", "thursday"),
            ("fri", "friday"),
            ("sat", "saturday"),
            ("sun", "sunday"),
        ),
        start=1,
    )
    for name in names
}
_DAY_ABBREV = {1: "Mon", 2: "Tue", 3: "Wed", 4: "Thu", 5: "Fri", 6: "Sat", 7: "Sun"}


class SpecError(ValueError):
    """A duration, window or time zone that cannot be parsed. ``hint`` says how to fix it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def parse_duration(text: str) -> timedelta:
    """Parse ``"1h30m"``-style text into a positive ``timedelta``.

    Surrounding whitespace is ignored. Raises ``SpecError`` for anything else, including zero.
    """
    compact = text.strip()
    if len(compact) > 64 or not _DURATION.fullmatch(compact):
        digits = compact.isascii() and compact.isdigit()
        reason = "a number needs a unit" if digits else "not a duration"
        raise SpecError(f"invalid duration '{shown(text, 80)}': {reason}", DURATION_HINT)
    seconds = sum(
        int(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(compact)
    )
    if seconds == 0:
        raise SpecError(f"invalid duration '{text}': must be longer than zero", DURATION_HINT)
    if seconds > MAX_DURATION.total_seconds():
        raise SpecError(
            f"invalid duration '{text}': longer than ten years ({format_duration(MAX_DURATION)})",
            DURATION_HINT,
        )
    return timedelta(seconds=seconds)


def parse_window_start(text: str) -> tuple[frozenset[int], time]:
    """Parse ``"[DAYS ]HH:MM"`` into (ISO weekdays, local time); no days means every day."""
    normalised = re.sub(r"\s*([,-])\s*", r"\1", text.strip())
    parts = normalised.split()
    if len(parts) not in (1, 2):
        raise SpecError(f"invalid window start '{text}'", WINDOW_START_HINT)
    days = _parse_days(parts[0], text) if len(parts) == 2 else frozenset[int]()
    return days, _parse_clock(parts[-1], text)


def parse_time_zone(name: str) -> zoneinfo.ZoneInfo:
    """Return the IANA time zone ``name``; ``SpecError`` with a suggestion when unknown."""
    if not name.strip():
        raise SpecError(
            f"unknown time zone '{name}'",
            "the time zone is empty: leave timeZone out for UTC, or name an IANA time zone "
            "such as Europe/Berlin",
        )
    try:
        if name.strip() != name or not name:
            raise ValueError(name)
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        close = difflib.get_close_matches(name, _known_zones(), n=1, cutoff=0.6)
        suggestion = f"did you mean '{close[0]}'? " if close else ""
        raise SpecError(
            f"unknown time zone '{name}'",
            f"{suggestion}use an IANA time zone name such as UTC or Europe/Berlin",
        ) from None


def parse_window(start: str, duration: str | timedelta, time_zone: str = "UTC") -> Window:
    """Build a validated ``Window`` from its three written parts.

    ``duration`` may be text (``"4h"``) or a ``timedelta``; it must be longer than zero and
    shorter than ``MAX_WINDOW``. Raises ``SpecError`` naming the first bad part.
    """
    days, clock = parse_window_start(start)
    length = parse_duration(duration) if isinstance(duration, str) else duration
    if length <= timedelta(0):
        raise SpecError(f"invalid window duration '{duration}': must be longer than zero")
    if length >= MAX_WINDOW:
        raise SpecError(
            f"window duration {format_duration(length)} is a week or longer",
            "such a window is always open: remove the window instead",
        )
    parse_time_zone(time_zone)
    return Window(start=clock, duration=length, time_zone=time_zone, days=days)


def _parse_days(text: str, original: str) -> frozenset[int]:
    days: set[int] = set()
    for item in text.split(","):
        first, _, last = item.partition("-")
        lo = _day_number(first, original)
        hi = _day_number(last, original) if last else lo
        # A range runs forward and may wrap over Sunday: Fri-Mon = Fri, Sat, Sun, Mon.
        span = (hi - lo) % 7
        days.update((lo - 1 + step) % 7 + 1 for step in range(span + 1))
    return frozenset(days)


def _day_number(name: str, original: str) -> int:
    number = _DAYS.get(name.lower())
    if number is None:
        close = difflib.get_close_matches(name.lower(), list(_DAYS), n=1)
        suggestion = f"did you mean '{close[0].capitalize()}'? " if close else ""
        raise SpecError(
            f"invalid window start '{original}': unknown day '{name}'",
            f"{suggestion}days are Mon Tue Wed Thu Fri Sat Sun (or full names)",
        )
    return number


def _parse_clock(text: str, original: str) -> time:
    match = _CLOCK.fullmatch(text)
    if not match:
        raise SpecError(f"invalid window start '{original}'", WINDOW_START_HINT)
    hour, minute = int(match.group(1)), int(match.group(2))
    if hour > 23 or minute > 59:
        raise SpecError(
            f"invalid window start '{original}': {text} is not a time of day",
            "hours are 00-23 and minutes 00-59",
        )
    return time(hour, minute)


@lru_cache(maxsize=1)
def _known_zones() -> list[str]:
    return sorted(zoneinfo.available_timezones())


# --------------------------------------------------------------------------------------------
# Time arithmetic
# --------------------------------------------------------------------------------------------


def window_open(window: Window, now: datetime) -> bool:
    """Whether ``now`` (timezone-aware) falls inside an occurrence of ``window``.

    An occurrence is the half-open interval [start, start + duration).
    """
    return bool(_open_occurrences(window, now))


def window_closes_at(window: Window, now: datetime) -> datetime | None:
    """When the occurrence open at ``now`` ends (in the window's zone); None when closed.

    If occurrences overlap (a duration longer than the gap between starts), the latest end of
    the open ones is returned.
    """
    ends = [end for _, end in _open_occurrences(window, now)]
    return max(ends).astimezone(_zone(window)) if ends else None


def next_window_start(window: Window, now: datetime) -> datetime:
    """The earliest occurrence start at or after ``now``, as an aware datetime in the window's
    zone. (An occurrence already open at ``now`` started before it and is not returned.)"""
    now_utc = _as_utc(now)
    tz = _zone(window)
    today = now_utc.astimezone(tz).date()
    # Eight days always contain the next listed weekday; the extra day absorbs DST shifts.
    for offset in range(-1, 9):
        start = _start_on(window, today + timedelta(days=offset))
        if start is not None and start >= now_utc:
            return start.astimezone(tz)
    raise AssertionError("a window always has a listed day within a week")  # pragma: no cover


def format_duration(value: timedelta) -> str:
    """Inverse of ``parse_duration``: ``timedelta(hours=1, minutes=30)`` -> ``"1h30m"``."""
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in _UNIT_SECONDS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def format_window(window: Window) -> str:
    """A one-line description, e.g. ``"Sat,Sun 01:00 for 4h (Europe/Berlin)"``."""
    days = ",".join(_DAY_ABBREV[d] for d in sorted(window.days))
    start = f"{days} {window.start:%H:%M}" if days else f"daily {window.start:%H:%M}"
    return f"{start} for {format_duration(window.duration)} ({window.time_zone})"


def _open_occurrences(window: Window, now: datetime) -> list[tuple[datetime, datetime]]:
    now_utc = _as_utc(now)
    today = now_utc.astimezone(_zone(window)).date()
    # An occurrence open now started at most `duration` ago, plus a day for DST and midnight.
    lookback = window.duration.days + 2
    found = []
    for offset in range(-lookback, 2):
        start = _start_on(window, today + timedelta(days=offset))
        if start is not None and start <= now_utc < start + window.duration:
            found.append((start, start + window.duration))
    return found


def _start_on(window: Window, day: date) -> datetime | None:
    """The UTC instant the window opens on local ``day``, or None if ``day`` is not listed."""
    if window.days and day.isoweekday() not in window.days:
        return None
    # fold=0: a gap time maps forward by the gap, an ambiguous time to its first occurrence.
    local = datetime.combine(day, window.start, tzinfo=_zone(window))
    return local.astimezone(UTC)


def _zone(window: Window) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(window.time_zone)


def _as_utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    return now.astimezone(UTC)
