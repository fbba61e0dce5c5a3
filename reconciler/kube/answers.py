"""The API server's answers read as data: a JSON object or a LIST page checked, a watch-list
stream's lines split and decoded. Whatever comes instead (a proxy's HTML page, a list where an
object belongs, JSON nested beyond reason, an event over ``MAX_EVENT_BYTES``, a stream whose
event is not ADDED) is a ``ClusterError`` saying, in short, what came. Pure but for reading a
``requests`` response; ``kube.client.Cluster`` sends the requests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from requests import Response

from reconciler.model.errors import ClusterError
from reconciler.model.text import shown

MAX_EVENT_BYTES = 16 << 20
"""The longest watch event read: one object (etcd's own limit is 1.5 MiB)."""


class StreamEnded(Exception):
    """A watch-list stream that ended before its initial-events-end bookmark: streamed again,
    or (``fallback``) read paginated."""

    def __init__(self, message: str, *, fallback: bool = False) -> None:
        super().__init__(message)
        self.fallback = fallback


ADDED = b'{"type":"ADDED",'
"""How the API server's encoder opens an ADDED event (``metav1.WatchEvent``: type first)."""


class EventTooLarge(ValueError):
    """A watch stream's line past ``MAX_EVENT_BYTES``: not an event any API server sends."""


def event_lines(chunks: Iterable[bytes], limit: int = MAX_EVENT_BYTES) -> Iterator[bytes]:
    """The complete, non-blank lines of a watch stream read as ``chunks`` (each event is one
    line of JSON), each yielded as soon as its newline arrives. A last line without its
    newline is a stream cut short and is not yielded; a line that grows past ``limit`` bytes
    is ``EventTooLarge``. A line arriving in many chunks is held in pieces and joined once
    its end comes (no quadratic concatenation)."""
    parts: list[bytes] = []
    held = 0
    for chunk in chunks:
        parts.append(chunk)
        held += len(chunk)
        if b"\n" in chunk:
            *complete, rest = b"".join(parts).split(b"\n")
            parts, held = [rest], len(rest)
            yield from (line for line in complete if line.strip())
        if held > limit:
            raise EventTooLarge(f"a watch event over {limit} bytes")


def complete_lines(response: Response, scope: str) -> Iterator[bytes]:
    """``event_lines`` of a watch-list stream, read in blocks of up to 64 KiB (its initial
    events come at once: throughput, not latency); a line over ``MAX_EVENT_BYTES`` is a
    ``ClusterError``."""
    try:
        yield from event_lines(response.iter_content(chunk_size=1 << 16))
    except EventTooLarge:
        raise ClusterError(
            scope,
            f"the API server's watch-list stream is malformed: an event over {MAX_EVENT_BYTES} "
            "bytes",
        ) from None


def watch_event(line: bytes, scope: str) -> tuple[Any, dict[str, Any]]:
    """(type, object) of one watch event; ``ClusterError`` when it is not one."""
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        raise ClusterError(
            scope,
            "the API server's watch-list stream is malformed: an event is not JSON: "
            + shown(line, 120),
        ) from None
    obj = event.get("object") if isinstance(event, dict) else None
    if not isinstance(obj, dict):
        raise ClusterError(
            scope,
            "the API server's watch-list stream is malformed: an event without an object "
            f"({shown(line, 120)})",
        )
    return event.get("type"), obj


def added_objects(lines: list[bytes], scope: str) -> list[dict[str, Any]]:
    """The objects of ``lines``, each the line of an ADDED event, decoded as one JSON array
    (``watch_event``'s errors, naming the line at fault, when that fails or one is not ADDED)."""
    try:
        events = json.loads(b"[" + b",".join(lines) + b"]")
    except (ValueError, RecursionError):
        events = None
    if not isinstance(events, list) or len(events) != len(lines):
        events = [
            {"type": kind, "object": obj} for kind, obj in (watch_event(x, scope) for x in lines)
        ]
    objects = []
    for line, event in zip(lines, events, strict=True):
        obj = event.get("object") if isinstance(event, dict) else None
        if not isinstance(obj, dict) or event.get("type") != "ADDED":
            kind, obj = watch_event(line, scope)
            raise ClusterError(
                scope,
                f"the API server's watch-list stream is malformed: a {shown(kind, 40)} event "
                "written as an ADDED one",
            )
        objects.append(obj)
    return checked_items({"items": objects}, scope)


def decode_object(response: Response, what: str) -> dict[str, Any]:
    """The JSON object of a good answer; anything else (a proxy's HTML login page, a list, a
    body nested beyond reason) is a ``ClusterError`` saying, in short, what came instead."""
    kind = response.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
    try:
        body = json.loads(response.content)
    except RecursionError:
        raise ClusterError(
            what, f"the API server's answer is JSON nested too deeply to read ({kind})"
        ) from None
    except ValueError:
        raise ClusterError(
            what,
            f"the API server's answer is not JSON ({kind}): {shown(response.content, 120)}; "
            "is a proxy or login page in front of the API server?",
        ) from None
    if not isinstance(body, dict):
        raise ClusterError(
            what,
            "the API server's answer is not an object: expected a JSON object, got "
            + json_kind(body),
        )
    return body


def checked_items(body: dict[str, Any], what: str) -> list[dict[str, Any]]:
    """A LIST answer's ``items``: a list of objects, or a ``ClusterError``."""
    items = body.get("items")
    if items is None:
        return []
    if not isinstance(items, list):
        raise ClusterError(
            what,
            f"the API server's answer is not a list: items is not a list, got {json_kind(items)}",
        )
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("metadata") or {}, dict):
            raise ClusterError(
                what,
                f"the API server's answer is malformed: items[{index}] is not an object "
                f"({json_kind(item)})",
            )
    return items


def continue_of(body: dict[str, Any], what: str) -> str:
    """The continue token of a LIST page ("" on the last page)."""
    meta = body.get("metadata")
    token = meta.get("continue") if isinstance(meta, dict) else None
    if token is None or token == "":
        return ""
    if not isinstance(token, str):
        raise ClusterError(
            what,
            "the API server's answer is malformed: metadata.continue is not a string, got "
            + json_kind(token),
        )
    return token


def expired_continue(response: Response) -> str:
    """The continue token a 410 for an expired token carries (``metadata.continue`` of its
    Status: the rest of the list at the latest revision), "" when it has none."""
    try:
        status = response.json()
    except (ValueError, RecursionError):
        return ""
    meta = status.get("metadata") if isinstance(status, dict) else None
    token = meta.get("continue") if isinstance(meta, dict) else None
    return token if isinstance(token, str) else ""


def json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object without metadata"
    return {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
