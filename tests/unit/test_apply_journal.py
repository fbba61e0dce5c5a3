"""The journal codec (``model.journal``): what `apply` writes on a VM before every step and reads
back after a crash. Every field survives a round trip, on the wire as compact JSON with sorted
keys; anything this version does not understand (another version, a hand edit) is refused
with ``JournalError``, never guessed at. The property test draws journals of every shape."""

from __future__ import annotations

import json
import tempfile
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from reconciler.model import journal as journals
from reconciler.model.journal import (
    FORWARD,
    JOURNAL_VERSION,
    ROLLBACK,
    Flow,
    Journal,
    JournalError,
    LastMigration,
    Step,
    VolumeMove,
    decode,
    encode,
    read_journal,
    read_last,
)
from reconciler.model.names import JOURNAL_ANNOTATION, LAST_MIGRATION_ANNOTATION

# Hypothesis keeps what it learns in ./.hypothesis; outside the work tree, nothing to ignore.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "vm-storage-reconciler-hypothesis")


def full_journal() -> Journal:
    """A journal with every field set to something other than its default."""
    return Journal(
        id="abc123def456",
        plan="tenant-a/move",
        flow=Flow.LIVE,
        step=Step.WAIT_REVERTED,
        volumes=(
            VolumeMove("root", "root-old", "root-new", True, "slow", "fast", 10 << 30),
            VolumeMove("data", "data-old", "data-new", False, None, "fast", 1 << 20),
        ),
        run_strategy="running:true",
        was_running=True,
        started="2026-01-02T03:04:05+00:00",
        deadline="2026-01-02T03:34:05+00:00",
        retention="Delete",
        vmi_uid="uid-1",
        attempts=3,
        commit="0123456789abcdef",
        data_volumes=({"kind": "DataVolume", "metadata": {"name": "root-new"}},),
        forward_ops=({"op": "replace", "path": "/spec/x", "value": 1},),
        revert_ops=({"op": "replace", "path": "/spec/x", "value": 0},),
        cleanup_ops=({"op": "remove", "path": "/spec/updateVolumesStrategy"},),
        rollback_reason="KubeVirt refused the volume update",
        rollback_rule="restart-required",
        swapped=True,
        live_migratable="True",
        sources_kept={"root-old": "retention Keep"},
        fence="runner-a#4",
        source_generation=7,
    )


def test_every_field_survives_a_round_trip() -> None:
    journal = full_journal()
    defaults = Journal(
        id="",
        plan="",
        flow=Flow.OFFLINE,
        step=Step.STOP,
        volumes=(),
        run_strategy="",
        was_running=False,
        started="",
        deadline="",
        retention="",
    )
    # the fixture is worth something only if no field is left at its default
    same = [
        f.name for f in fields(Journal) if getattr(journal, f.name) == getattr(defaults, f.name)
    ]
    assert same == [], same
    assert decode(encode(journal)) == journal


def test_the_wire_form_is_compact_json_with_sorted_keys_and_the_version() -> None:
    text = encode(full_journal())
    doc = json.loads(text)
    assert doc["v"] == JOURNAL_VERSION
    assert text == json.dumps(doc, sort_keys=True, separators=(",", ":"))
    # enums travel as their text
    assert (doc["flow"], doc["step"]) == ("live", "wait-reverted")
    assert doc["rollback"] == {"rule": "restart-required", "reason": doc["rollback"]["reason"]}


def test_a_journal_that_is_not_rolling_back_has_no_rollback_member() -> None:
    journal = replace(full_journal(), step=Step.SWAP, rollback_reason="", rollback_rule="")
    assert "rollback" not in json.loads(encode(journal))
    assert decode(encode(journal)) == journal


@pytest.mark.parametrize("version", [None, 0, 2, "1", 1.5])
def test_another_version_is_refused(version: object) -> None:
    doc = json.loads(encode(full_journal()))
    doc["v"] = version
    with pytest.raises(JournalError, match="journal version"):
        decode(json.dumps(doc))


def edited(change: dict[str, Any], drop: tuple[str, ...] = ()) -> str:
    doc = json.loads(encode(full_journal()))
    doc.update(change)
    for key in drop:
        del doc[key]
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (edited({"flow": "sideways"}), "invalid"),
        (edited({"step": "teleport"}), "invalid"),
        (edited({"step": "stop"}), "does not belong"),  # an offline step in a live rollback
        (edited({"rollback": None}), "does not belong"),  # a rollback step going forward
        (edited({"id": 12}), "id is not a string"),
        (edited({"volumes": {"root": "x"}}), "volumes is not a list"),
        (edited({"volumes": ["root"]}), "a volume is not an object"),
        (edited({"volumes": [{"volume": "root"}]}), "invalid"),
        (edited({"dataVolumes": ["x"]}), "not an object"),
        (edited({}, drop=("runStrategy",)), "invalid"),
        (edited({}, drop=("wasRunning",)), "invalid"),
    ],
)
def test_hand_edits_are_refused_saying_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(JournalError, match=says):
        decode(text)


def test_a_journal_too_large_for_an_annotation_is_refused_when_written() -> None:
    huge = replace(full_journal(), rollback_reason="x" * (journals.MAX_JOURNAL_BYTES + 1))
    with pytest.raises(JournalError, match="bytes"):
        encode(huge)


def test_read_journal_reads_the_annotation_and_only_it() -> None:
    journal = full_journal()
    assert read_journal({}) is None
    assert read_journal({LAST_MIGRATION_ANNOTATION: "{}"}) is None
    assert read_journal({JOURNAL_ANNOTATION: encode(journal)}) == journal
    with pytest.raises(JournalError):
        read_journal({JOURNAL_ANNOTATION: "{}"})


def test_read_last_reads_the_record_and_never_fails() -> None:
    last = LastMigration(
        id="m1",
        plan="ns/p",
        flow=Flow.OFFLINE,
        result="RolledBack",
        finished="2026-01-02T03:04:05+00:00",
        started="2026-01-02T03:00:00+00:00",
        volumes={"root": "root-old"},
        rule="copy-failed",
        reason="clone failed",
        commit="abc",
        sources_deleted=("a",),
        sources_kept={"b": "retention Keep"},
        failures=2,
    )
    assert read_last({LAST_MIGRATION_ANNOTATION: journals.encode_last(last)}) == last
    assert read_last({}) is None
    assert read_last({LAST_MIGRATION_ANNOTATION: "garbage"}) is None


# -- the property ---------------------------------------------------------------------------

text = st.text(max_size=20)
json_scalar = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | text
json_object = st.dictionaries(
    text, st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=3), max_leaves=5)
)
volume = st.builds(
    VolumeMove,
    volume=text,
    source=text,
    target=text,
    source_is_data_volume=st.booleans(),
    from_class=st.none() | text,
    to_class=text,
    size_bytes=st.integers(0, 2**62),
)


@st.composite
def journals_of_every_shape(draw: st.DrawFn) -> Journal:
    flow = draw(st.sampled_from(Flow))
    rolling_back = draw(st.booleans())
    steps = (ROLLBACK if rolling_back else FORWARD)[flow]
    return Journal(
        id=draw(text),
        plan=draw(text),
        flow=flow,
        step=draw(st.sampled_from(steps)),
        volumes=tuple(draw(st.lists(volume, max_size=3))),
        run_strategy=draw(text),
        was_running=draw(st.booleans()),
        started=draw(text),
        deadline=draw(text),
        retention=draw(text),
        vmi_uid=draw(text),
        attempts=draw(st.integers(1, 100)),
        commit=draw(st.none() | text),
        data_volumes=tuple(draw(st.lists(json_object, max_size=2))),
        forward_ops=tuple(draw(st.lists(json_object, max_size=2))),
        revert_ops=tuple(draw(st.lists(json_object, max_size=2))),
        cleanup_ops=tuple(draw(st.lists(json_object, max_size=2))),
        rollback_reason=draw(text.filter(bool)) if rolling_back else "",
        rollback_rule=draw(text) if rolling_back else "",
        swapped=draw(st.booleans()),
        live_migratable=draw(text),
        sources_kept=draw(st.dictionaries(text, text, max_size=3)),
        fence=draw(text),
        source_generation=draw(st.integers(0, 2**62)),
    )


@settings(max_examples=150, deadline=None, database=None)
@given(journals_of_every_shape())
def test_any_journal_decodes_to_itself(journal: Journal) -> None:
    assert decode(encode(journal)) == journal


@settings(max_examples=100, deadline=None, database=None)
@given(journals_of_every_shape(), st.sampled_from(["v", "id", "flow", "step", "volumes"]))
def test_a_journal_missing_a_required_member_is_refused(journal: Journal, key: str) -> None:
    doc = json.loads(encode(journal))
    del doc[key]
    if key == "volumes":  # an absent list reads as empty; the journal then moves nothing
        assert decode(json.dumps(doc)).volumes == ()
        return
    with pytest.raises(JournalError):
        decode(json.dumps(doc))
