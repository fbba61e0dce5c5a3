"""A watch-list stream's lines into objects (``reconciler.kube.answers``), pure parts: a page of
ADDED events is decoded as one JSON array, in order; a line that is not a watch event, or an
event of another type written as an ADDED one, is a ``ClusterError`` naming the list and what
came instead. The lines themselves (``event_lines``, read by every watch): each as soon as its
newline arrives, a line cut short never, a line past the limit refused before its end. The
stream itself (cuts, refusals, the end bookmark) is tested against the real API server in
tests/apiserver/test_streamed_observe.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from reconciler.kube.answers import ADDED, EventTooLarge, added_objects, event_lines, watch_event
from reconciler.model.errors import ClusterError

SCOPE = "virtualmachines in namespace fleet"


def line(kind: str, name: str) -> bytes:
    """One event as the API server's encoder writes it: compact, type first."""
    event: dict[str, Any] = {"type": kind, "object": {"metadata": {"name": name}, "spec": {}}}
    return json.dumps(event, separators=(",", ":")).encode()


def test_the_server_writes_an_added_event_as_the_prefix_says() -> None:
    assert line("ADDED", "a").startswith(ADDED)
    assert not line("BOOKMARK", "a").startswith(ADDED)


def test_a_page_of_added_events_gives_its_objects_in_order() -> None:
    names = [f"vm-{i}" for i in range(5)]
    objects = added_objects([line("ADDED", n) for n in names], SCOPE)
    assert [o["metadata"]["name"] for o in objects] == names


def test_a_line_that_is_not_json_is_named() -> None:
    lines = [line("ADDED", "a"), b'{"type":"ADDED","object":{"metadata":', line("ADDED", "c")]
    with pytest.raises(ClusterError) as caught:
        added_objects(lines, SCOPE)
    assert SCOPE in str(caught.value)
    assert "an event is not JSON" in str(caught.value)
    assert '{"type":"ADDED","object":{"metadata":' in str(caught.value)


def test_an_event_of_another_type_in_a_page_is_malformed() -> None:
    with pytest.raises(ClusterError) as caught:
        added_objects([line("ADDED", "a"), line("DELETED", "b")], SCOPE)
    assert "a DELETED event written as an ADDED one" in str(caught.value)


@pytest.mark.parametrize(
    "text", [b'{"type":"ADDED","object":"vm"}', b'{"type":"ADDED"}', b"[1, 2]", b'"ADDED"']
)
def test_an_event_without_an_object_is_malformed(text: bytes) -> None:
    with pytest.raises(ClusterError) as caught:
        watch_event(text, SCOPE)
    assert "an event without an object" in str(caught.value)


def test_an_object_without_metadata_of_its_own_kind_is_malformed() -> None:
    bad = b'{"type":"ADDED","object":{"metadata":"vm-1"}}'
    with pytest.raises(ClusterError) as caught:
        added_objects([line("ADDED", "a"), bad], SCOPE)
    assert "items[1] is not an object" in str(caught.value)


# The stream's lines (``event_lines``): what both watches and the watch-list read


def test_lines_are_yielded_as_each_newline_arrives_whatever_the_chunks() -> None:
    stream = line("ADDED", "a") + b"\n\n" + line("MODIFIED", "b") + b"\n" + line("DELETED", "c")
    cut = len(line("ADDED", "a")) + 3  # the second chunk ends just past the first newline
    read: list[bytes] = []

    def chunks() -> Iterator[bytes]:
        for chunk in (stream[:7], stream[7:cut], stream[cut:]):
            read.append(chunk)
            yield chunk

    lines = event_lines(chunks())
    assert next(lines) == line("ADDED", "a")
    assert len(read) == 2, "the first line came before the third chunk was read"
    assert list(lines) == [line("MODIFIED", "b")]


def test_blank_lines_are_skipped_and_a_line_without_its_newline_is_a_stream_cut_short() -> None:
    stream = b"\n" + line("ADDED", "a") + b"\n \n" + line("ADDED", "b") + b"\n" + b'{"type":"AD'
    for size in (1, 5, 64, len(stream)):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert list(event_lines(chunks)) == [line("ADDED", "a"), line("ADDED", "b")], size


def test_a_line_past_the_limit_is_refused_before_its_end_arrives() -> None:
    def endless() -> Iterator[bytes]:
        yield line("ADDED", "a") + b"\n"
        while True:
            yield b"x" * 100

    lines = event_lines(endless(), limit=1000)
    assert next(lines) == line("ADDED", "a")
    with pytest.raises(EventTooLarge, match="over 1000 bytes"):
        next(lines)


def test_the_limit_counts_the_line_held_not_the_stream() -> None:
    events = [line("ADDED", f"vm-{i}") for i in range(50)]
    longest = max(len(e) for e in events)
    stream = b"\n".join(events) + b"\n"
    chunks = [stream[i : i + 37] for i in range(0, len(stream), 37)]
    assert list(event_lines(chunks, limit=longest + 37)) == events
