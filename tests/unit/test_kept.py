"""Issue 18 item 6, the pure part (``model.kept``): the mark on a kept source, what counts as
a kept source, what proves it ours, and prune's journal."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jsonpatch

from reconciler.model.kept import (
    DATA_VOLUME,
    PVC,
    KeptRecord,
    PruneMark,
    age_text,
    candidates,
    decode_record,
    encode_record,
    kept_sources,
    mark_ops,
    prune_ops,
)
from reconciler.model.names import (
    FIELD_MANAGER,
    IN_FLIGHT_ANNOTATION,
    KEPT_SOURCE_ANNOTATION,
    KEPT_SOURCE_LABEL,
    MIGRATION_LABEL,
    PRUNING_ANNOTATION,
    SOURCE_CLAIM_ANNOTATION,
)

RECORD = KeptRecord(
    vm="vm1",
    move="a1b2c3d4e5f6",
    plan="apps/p",
    kept="2026-12-01T10:00:00+00:00",
    why="retention Keep",
    volume="root",
    target="root-mig-abcde",
    from_class="local-hostpath",
    size_bytes=2 << 30,
)
NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def obj(kind: str, name: str, **meta: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": kind,
        "metadata": {"name": name, "namespace": "apps", "uid": f"uid-{name}", **meta},
    }
    if kind == PVC:
        body["spec"] = {"storageClassName": "local-hostpath"}
        body["status"] = {"capacity": {"storage": "2Gi"}}
    return body


def marked(
    kind: str, name: str, record: KeptRecord = RECORD, manager: str = FIELD_MANAGER
) -> dict[str, Any]:
    """A kept source marked by ``manager`` (the API server's managedFields say who wrote it)."""
    fields: dict[str, Any] = {
        "f:metadata": {
            "f:labels": {f"f:{KEPT_SOURCE_LABEL}": {}},
            "f:annotations": {f"f:{KEPT_SOURCE_ANNOTATION}": {}},
        }
    }
    return obj(
        kind,
        name,
        labels={KEPT_SOURCE_LABEL: record.move},
        annotations={KEPT_SOURCE_ANNOTATION: encode_record(record)},
        managedFields=[
            {"manager": "kubectl-create", "operation": "Update", "fieldsV1": {}},
            {"manager": manager, "operation": "Update", "fieldsV1": fields},
        ],
    )


def destination(name: str, source: str, move: str = RECORD.move, **notes: str) -> dict[str, Any]:
    return obj(
        DATA_VOLUME,
        name,
        labels={MIGRATION_LABEL: move, "vmstorage.dev/vm": "vm1"},
        annotations={SOURCE_CLAIM_ANNOTATION: source, **notes},
        creationTimestamp="2026-11-30T10:00:00Z",
    )


def test_the_record_round_trips_and_garbage_is_no_record() -> None:
    assert decode_record(encode_record(RECORD)) == RECORD
    for text in ("", "{", "[]", '{"vm": 1}', None):
        assert decode_record(text) is None


def test_mark_ops_test_the_uid_add_the_mark_and_are_idempotent() -> None:
    for before in (obj(PVC, "root"), obj(PVC, "root", labels={"a": "b"}, annotations={})):
        ops = mark_ops(before, RECORD)
        assert ops[0] == {"op": "test", "path": "/metadata/uid", "value": "uid-root"}
        after = jsonpatch.apply_patch(before, ops)
        assert after["metadata"]["labels"][KEPT_SOURCE_LABEL] == RECORD.move
        assert decode_record(after["metadata"]["annotations"][KEPT_SOURCE_ANNOTATION]) == RECORD
        assert after["metadata"].get("labels", {}).get("a") == before["metadata"].get(
            "labels", {}
        ).get("a")
        later = KeptRecord(**{**RECORD.__dict__, "kept": "2027-01-01T00:00:00+00:00"})
        assert mark_ops(after, later) == [], "a resumed step keeps the first mark"


def test_prune_ops_write_and_remove_the_journal_guarded_by_uid_and_mark() -> None:
    source = marked(PVC, "root")
    mark = PruneMark("run1", "2026-12-03T10:00:00+00:00", "host-1-prune")
    journaled = jsonpatch.apply_patch(source, prune_ops(source, mark))
    assert PRUNING_ANNOTATION in journaled["metadata"]["annotations"]
    ops = prune_ops(journaled, None)
    assert ops[:2] == [
        {"op": "test", "path": "/metadata/uid", "value": "uid-root"},
        {"op": "test", "path": "/metadata/labels/vmstorage.dev~1kept-source", "value": RECORD.move},
    ]
    assert (
        PRUNING_ANNOTATION not in jsonpatch.apply_patch(journaled, ops)["metadata"]["annotations"]
    )
    assert prune_ops(source, None) == []


def test_kept_sources_marked_legacy_and_forged() -> None:
    dvs = [
        marked(DATA_VOLUME, "root"),  # kept by the move, and marked
        destination("root-mig-abcde", "root"),  # ... which its destination corroborates
        destination("data-mig-fghij", "data", move="0f0f0f0f0f0f"),  # an unmarked kept source
        destination("busy-mig-xxxxx", "busy", move="0e0e0e0e0e0e"),
        destination("open-mig-yyyyy", "open", **{IN_FLIGHT_ANNOTATION: "x"}),  # in flight
    ]
    pvcs = [
        marked(PVC, "root"),  # CDI copied the DataVolume's labels: the DataVolume is the source
        obj(PVC, "data"),
        obj(PVC, "busy"),
        obj(PVC, "open"),  # the source of a move still open: not kept (yet)
        marked(
            PVC,
            "forged",
            KeptRecord("vm1", "0d0d0d0d0d0d", "apps/p", RECORD.kept, "x"),
            manager="kubectl-edit",  # a mark written (or copied in a manifest) by someone else
        ),
    ]
    assert candidates(dvs, pvcs) == [
        ("apps", "busy", PVC),
        ("apps", "data", PVC),
        ("apps", "forged", PVC),
        ("apps", "root", DATA_VOLUME),
    ]
    found = {s.name: s for s in kept_sources(dvs, pvcs, {("apps", "busy"): "mounted by pod x"})}

    root = found["root"]
    assert (root.vm, root.move, root.record, root.refused) == ("vm1", RECORD.move, RECORD, "")
    assert root.recorded_by == "its mark, written by vm-storage-reconciler"
    assert root.age(NOW) == 2 * 86400 and age_text(root.age(NOW)) == "2d"
    assert (root.storage_class, root.size_bytes) == ("local-hostpath", 2 << 30)

    data = found["data"]
    assert (data.record, data.move, data.vm, data.refused) == (None, "0f0f0f0f0f0f", "vm1", "")
    assert data.since == datetime(2026, 11, 30, 10, 0, tzinfo=UTC), "the destination's time"

    assert found["busy"].refused == "in use: mounted by pod x"
    assert found["forged"].refused == (
        "not recorded as a source by us: its vmstorage.dev/kept-source mark was not written by "
        "vm-storage-reconciler (metadata.managedFields), and no destination DataVolume of move "
        "0d0d0d0d0d0d records copying it (label vmstorage.dev/migration, annotation "
        "vmstorage.dev/source-claim)"
    )
    assert data.recorded_by == "DataVolume apps/data-mig-fghij"


def test_a_mark_of_ours_stays_proof_once_its_destination_is_gone() -> None:
    """Moved A -> B -> C, both kept: pruning B deletes the destination that recorded A, and A
    is still ours by its own mark (the API server says who wrote it)."""
    (a,) = kept_sources([marked(DATA_VOLUME, "a")], [obj(PVC, "a")], {})
    assert (a.recorded_by, a.refused) == ("its mark, written by vm-storage-reconciler", "")
    relabelled = marked(DATA_VOLUME, "a", manager="kubectl-label")  # someone rewrote the mark
    (a,) = kept_sources([relabelled], [obj(PVC, "a")], {})
    assert a.refused.startswith("not recorded as a source by us")


def test_a_claim_a_dataVolume_still_clones_from_is_in_use() -> None:
    clone = obj(DATA_VOLUME, "copy")
    clone["spec"] = {"source": {"pvc": {"name": "root", "namespace": "apps"}}}
    clone["status"] = {"phase": "CloneInProgress"}
    dvs = [marked(DATA_VOLUME, "root"), destination("root-mig-abcde", "root"), clone]
    (root,) = kept_sources(dvs, [obj(PVC, "root")], {})
    assert root.refused == "in use: cloned by DataVolume apps/copy"
    clone["status"] = {"phase": "Succeeded"}
    (root,) = kept_sources(dvs, [obj(PVC, "root")], {})
    assert root.refused == ""


def test_a_deleting_claim_names_the_completed_pods_that_hold_it() -> None:
    """pvc-protection counts a completed pod that still lists a claim (the virt-launcher a
    live migration leaves Succeeded): `sources` says which one keeps it from going."""
    claim = marked(PVC, "a")
    claim["metadata"]["deletionTimestamp"] = "2026-12-03T09:00:00Z"
    (a,) = kept_sources([], [claim], {})
    assert a.refused == "being deleted already"
    (a,) = kept_sources([], [claim], {}, {("apps", "a"): "virt-launcher-vm1-x2x9z"})
    assert a.refused == (
        "being deleted already, held by completed pod virt-launcher-vm1-x2x9z until it is "
        "removed (a virt-launcher pod: when its VM stops)"
    )


def test_age_reads_like_kubectl() -> None:
    assert [age_text(s) for s in (None, 5, 59, 60, 3599, 7200, 86400, 3 * 86400)] == [
        "-",
        "5s",
        "59s",
        "1m",
        "59m",
        "2h",
        "24h",
        "3d",
    ]
