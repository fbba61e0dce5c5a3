"""The first journal of a move (``apply.begin.first_journal``): made from the engine's
judgement of the VM (``model.judged.JudgedVM``) and the VMI as it runs, with nothing read
from the cluster. Pure: what each field of the journal comes from, and what is refused."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from reconciler.apply.begin import default_timeout, first_journal
from reconciler.apply.read import vmi_state
from reconciler.model.journal import FORWARD, Flow, decode, encode
from reconciler.model.judged import JudgedVM, Rendering, SourceClaim
from reconciler.model.live import VMInfo
from reconciler.model.manifests import DataVolumeManifest, PatchOp
from reconciler.model.names import IN_FLIGHT_ANNOTATION, MIGRATION_LABEL
from reconciler.model.plan import Plan, Retention, Source
from reconciler.model.verdict import Action, VMVerdict, VolumeVerdict

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GIB = 1 << 30


def dv(name: str) -> DataVolumeManifest:
    return {
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"source": {"blank": {}}, "storage": {"storageClassName": "fast"}},
    }


VERSION_TEST: PatchOp = {"op": "test", "path": "/metadata/resourceVersion", "value": "41"}
SWAP: PatchOp = {"op": "replace", "path": "/spec/template/spec/volumes/0/dataVolume/name"}


def judged(
    action: Action = Action.MOVE_LIVE,
    *,
    spec: dict[str, Any] | None = None,
    plan: Plan | None = None,
    sources: dict[str, SourceClaim] | None = None,
) -> JudgedVM:
    volumes = (
        VolumeVerdict("root", "root-old", "slow", "fast", action),
        VolumeVerdict("data", "data-old", "slow", "fast", action),
        VolumeVerdict("cloud-init", "ci", "fast", "fast", Action.IN_SYNC),
    )
    vm = VMInfo(
        namespace="ns",
        name="vm1",
        uid="u",
        resource_version="41",
        run_strategy="Always",
        volumes=(),
        raw={"spec": spec if spec is not None else {"runStrategy": "Always"}},
    )
    rendering = Rendering(
        target_names={"root": "root-new", "data": "data-new"},
        data_volumes=(dv("root-new"), dv("data-new")),
        vm_patch=(VERSION_TEST, {**SWAP, "value": "root-new"}),
        revert_patch=({**SWAP, "value": "root-old"},),
        strategy_cleanup_patch=({"op": "remove", "path": "/spec/updateVolumesStrategy"},),
    )
    return JudgedVM(
        verdict=VMVerdict("ns", "vm1", "move", action, volumes),
        vm=vm,
        plan=plan or Plan("move", "ns", Source("plans/move.yaml", 1), retention=Retention.DELETE),
        rendering=rendering,
        sources=sources
        if sources is not None
        else {
            "root-old": SourceClaim(size_bytes=10 * GIB, is_data_volume=True),
            "data-old": SourceClaim(size_bytes=GIB // 2, is_data_volume=False),
        },
    )


def running_vmi(migratable: str = "True") -> Any:
    return vmi_state(
        {
            "metadata": {"name": "vm1", "uid": "vmi-uid"},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "LiveMigratable", "status": migratable}],
            },
        }
    )


def test_a_live_move_s_first_journal_records_everything_later_steps_need() -> None:
    journal = first_journal(
        judged=judged(), vmi=running_vmi(), migration_id="m1", now=NOW, commit="c0ffee"
    )
    assert (journal.id, journal.plan, journal.flow) == ("m1", "ns/move", Flow.LIVE)
    assert journal.step is FORWARD[Flow.LIVE][0]
    assert [(v.volume, v.source, v.target) for v in journal.volumes] == [
        ("root", "root-old", "root-new"),
        ("data", "data-old", "data-new"),
    ], "only the moved volumes, in the verdict's order"
    root, data = journal.volumes
    assert (root.source_is_data_volume, root.size_bytes) == (True, 10 * GIB)
    assert (data.source_is_data_volume, data.size_bytes) == (False, GIB // 2)
    assert (root.from_class, root.to_class) == ("slow", "fast")
    assert journal.run_strategy == "Always"
    assert journal.was_running and journal.vmi_uid == "vmi-uid"
    assert journal.live_migratable == "True"
    assert journal.retention == "Delete" and journal.commit == "c0ffee"
    assert journal.started == "2026-03-01T12:00:00+00:00"
    # no plan timeout: 15 minutes plus a minute per GiB started (10.5 GiB -> 11 minutes)
    assert journal.deadline == (NOW + timedelta(minutes=26)).isoformat(timespec="seconds")
    assert journal.forward_ops == ({**SWAP, "value": "root-new"},), "without the version test"
    assert journal.revert_ops == ({**SWAP, "value": "root-old"},)
    assert journal.cleanup_ops == ({"op": "remove", "path": "/spec/updateVolumesStrategy"},)
    assert journal.fence == "" and not journal.rolling_back
    assert decode(encode(journal)) == journal


def test_every_destination_is_labelled_with_the_move_and_in_flight() -> None:
    journal = first_journal(judged=judged(), vmi=running_vmi(), migration_id="m1", now=NOW)
    for manifest in journal.data_volumes:
        meta = manifest["metadata"]
        assert meta["labels"][MIGRATION_LABEL] == "m1"
        assert meta["annotations"][IN_FLIGHT_ANNOTATION] == "m1"
    rendering = judged().rendering
    assert rendering is not None
    assert "labels" not in rendering.data_volumes[0]["metadata"], "the rendering is not changed"


def test_an_offline_move_of_a_stopped_vm_on_spec_running() -> None:
    journal = first_journal(
        judged=judged(Action.MOVE_OFFLINE, spec={"running": False}),
        vmi=None,
        migration_id="m2",
        now=NOW,
    )
    assert journal.flow is Flow.OFFLINE and journal.step is FORWARD[Flow.OFFLINE][0]
    assert journal.run_strategy == "running:false", "the field the VM uses is kept"
    assert not journal.was_running and journal.vmi_uid == ""
    assert journal.live_migratable == "", "LiveMigratable is recorded for live moves only"


def test_the_plan_s_timeout_and_retention_win() -> None:
    plan = Plan("move", "ns", Source("p.yaml", 1), timeout=timedelta(hours=2))
    journal = first_journal(judged=judged(plan=plan), vmi=running_vmi(), migration_id="m3", now=NOW)
    assert journal.deadline == (NOW + timedelta(hours=2)).isoformat(timespec="seconds")
    assert journal.retention == "Keep"


def test_a_claim_the_observation_did_not_see_counts_as_an_empty_pvc() -> None:
    journal = first_journal(
        judged=judged(sources={}), vmi=running_vmi(), migration_id="m4", now=NOW
    )
    assert all(not v.source_is_data_volume and v.size_bytes == 0 for v in journal.volumes)
    assert journal.deadline == (NOW + default_timeout(0)).isoformat(timespec="seconds")


def test_what_is_not_a_move_or_does_not_match_its_rendering_is_refused() -> None:
    with pytest.raises(ValueError, match="not a move"):
        first_journal(judged=judged(Action.IN_SYNC), vmi=None, migration_id="m", now=NOW)
    with pytest.raises(ValueError, match="not of a move"):
        first_journal(judged=JudgedVM(None), vmi=None, migration_id="m", now=NOW)
    base = judged()
    assert base.rendering is not None
    missing = replace(base, rendering=replace(base.rendering, target_names={"root": "x"}))
    with pytest.raises(ValueError, match="no destination for data"):
        first_journal(judged=missing, vmi=None, migration_id="m", now=NOW)
    unguarded = replace(base, rendering=replace(base.rendering, vm_patch=(SWAP,)))
    with pytest.raises(ValueError, match="resourceVersion test"):
        first_journal(judged=unguarded, vmi=None, migration_id="m", now=NOW)


@pytest.mark.parametrize(
    ("total", "minutes"), [(0, 15), (1, 16), (GIB, 16), (GIB + 1, 17), (50 * GIB, 65)]
)
def test_the_default_timeout_is_15_minutes_and_one_per_gib_started(
    total: int, minutes: int
) -> None:
    assert default_timeout(total) == timedelta(minutes=minutes)
