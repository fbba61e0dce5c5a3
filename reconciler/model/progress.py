"""Progress lines that carry structured fields. Values only.

Progress goes to a plain ``Callable[[str], None]`` everywhere (the CLI writes it to stderr, the
demo prints it, tests collect it). A ``Line`` *is* that string, so every such sink keeps
working unchanged, and it also carries the fields a machine wants (namespace, VM, volume,
step, move id, commit): ``--log-format json`` writes them as keys instead of parsing text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

FIELDS = ("namespace", "vm", "volume", "step", "migrationId", "commit")
"""The structured fields a line may carry (JSON log keys)."""


class Line(str):
    """A progress line (its text) with ``fields`` (None values are left out)."""

    fields: Mapping[str, str]

    def __new__(cls, text: str, /, **fields: str | None) -> Line:
        line = super().__new__(cls, text)
        line.fields = {k: v for k, v in fields.items() if v is not None and v != ""}
        return line


def fields_of(message: str) -> Mapping[str, str]:
    """The structured fields of ``message`` ({} for a plain string)."""
    return message.fields if isinstance(message, Line) else {}


def tagged(sink: Callable[[str], None], **fields: str | None) -> Callable[[str], None]:
    """``sink`` with ``fields`` added to every line (a line's own fields win)."""
    extra = {k: v for k, v in fields.items() if v}

    def say(message: str) -> None:
        sink(Line(str(message), **{**extra, **fields_of(message)}))

    return say
