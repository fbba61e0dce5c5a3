"""diff: plans x snapshot -> desired volumes -> per-VM verdicts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.diff.context import vm_context
from reconciler.diff.desired import matches, resolve_desired
from reconciler.diff.judge import diff
from reconciler.diff.rules_vm import running_field_deprecated
from reconciler.model.live import KubeVirtInfo, Snapshot
from reconciler.model.names import CONTENT_TYPE_ANNOTATION, JOURNAL_ANNOTATION
from reconciler.model.plan import DEFAULT_CLASS, LabelSelector, Mode, Plan, VolumeMode
from reconciler.model.verdict import Action, Effect, Finding, VMVerdict
from reconciler.report.text import finding_line
from tests.support.factories import (
    RWX,
    GiB,
    cond,
    dv,
    healthy,
    kubevirt,
    labels,
    override,
    plan,
    pvc,
    reason_lines,
    select,
    snapshot,
    src,
    storage_class,
    vm,
    vmi,
    volume,
    with_vm,
)


def only_vm(result_plans: list[Plan] | Plan, snap: Snapshot) -> VMVerdict:
    plans = result_plans if isinstance(result_plans, list) else [result_plans]
    result = diff(plans, snap)
    assert result.problems == ()
    assert len(result.vms) == 1
    return result.vms[0]


def rules_of(verdict: VMVerdict) -> list[str]:
    return [v.rule for v in verdict.volumes]


# --------------------------------------------------------------------------------------------
# resolve_desired
# --------------------------------------------------------------------------------------------

MIXED = (
    volume("rootdisk"),
    volume("data", "data-pvc", kind="persistentVolumeClaim"),
    volume("cd", kind="containerDisk"),
    volume("ci", kind="cloudInitNoCloud", disk_type="disk"),
)


def test_every_claim_volume_of_an_explicit_vm_gets_the_plan_class() -> None:
    desired, problems = resolve_desired([plan()], healthy(vm(volumes=MIXED)))
    assert problems == ()
    assert [(d.vm, d.volume, d.storage_class) for d in desired] == [
        ("vm1", "data", "new"),
        ("vm1", "rootdisk", "new"),
    ]
    assert all(d.volume_mode is VolumeMode.AUTO and d.target_name is None for d in desired)


def test_selector_picks_live_vms_by_label_in_the_plan_namespace_only() -> None:
    snap = healthy(
        vm("gold-1", labels={"tier": "gold"}),
        vm("gold-2", labels={"tier": "gold", "os": "fedora"}),
        vm("silver", labels={"tier": "silver"}),
        vm("elsewhere", namespace="other", labels={"tier": "gold"}),
    )
    desired, _ = resolve_desired([plan(vms=(), selector=labels(tier="gold"))], snap)
    assert sorted({(d.namespace, d.vm) for d in desired}) == [("ns", "gold-1"), ("ns", "gold-2")]


@pytest.mark.parametrize(
    ("expression", "vm_labels", "expected"),
    [
        (("tier", "In", ("gold", "silver")), {"tier": "gold"}, True),
        (("tier", "In", ("gold",)), {"tier": "bronze"}, False),
        (("tier", "In", ("gold",)), {}, False),
        (("tier", "NotIn", ("gold",)), {"tier": "bronze"}, True),
        (("tier", "NotIn", ("gold",)), {}, True),
        (("tier", "NotIn", ("gold",)), {"tier": "gold"}, False),
        (("tier", "Exists", ()), {"tier": ""}, True),
        (("tier", "Exists", ()), {}, False),
        (("tier", "DoesNotExist", ()), {}, True),
        (("tier", "DoesNotExist", ()), {"tier": "x"}, False),
        (("tier", "Matches", ("gold",)), {"tier": "gold"}, False),  # unknown operator
    ],
)
def test_match_expressions(
    expression: tuple[str, str, tuple[str, ...]], vm_labels: dict[str, str], expected: bool
) -> None:
    assert matches(LabelSelector(match_expressions=(expression,)), vm_labels) is expected


def test_selector_needs_all_labels_and_expressions() -> None:
    selector = LabelSelector(
        match_labels=(("tier", "gold"),), match_expressions=(("os", "In", ("fedora",)),)
    )
    assert matches(selector, {"tier": "gold", "os": "fedora"})
    assert not matches(selector, {"tier": "gold", "os": "rhel"})
    assert not matches(selector, {"os": "fedora"})
    assert matches(LabelSelector(), {})  # empty selector: everything (Kubernetes semantics)


def test_explicit_vms_and_selector_are_united_each_vm_once() -> None:
    snap = healthy(
        vm("vm1", labels={"tier": "gold"}), vm("vm2", labels={"tier": "gold"}), vm("vm3")
    )
    the_plan = plan(
        vms=("vm3", select("vm1", override("rootdisk", "fast"))),
        selector=labels(tier="gold"),
    )
    desired, problems = resolve_desired([the_plan], snap)
    assert problems == ()
    # vm1 is explicit (its override applies) and selected: once, with the override.
    assert [(d.vm, d.storage_class) for d in desired] == [
        ("vm1", "fast"),
        ("vm2", "new"),
        ("vm3", "new"),
    ]


def test_overrides_set_class_mode_access_and_target_name() -> None:
    two = vm(volumes=(volume("rootdisk"), volume("data")))
    the_plan = plan(
        vms=(
            select(
                "vm1",
                override(
                    "data",
                    "fast",
                    volume_mode=VolumeMode.BLOCK,
                    access_modes=RWX,
                    target_name="data-fast",
                ),
            ),
        ),
        volume_mode=VolumeMode.FILESYSTEM,
    )
    desired, _ = resolve_desired([the_plan], healthy(two))
    by_volume = {d.volume: d for d in desired}
    assert by_volume["rootdisk"].storage_class == "new"
    assert by_volume["rootdisk"].volume_mode is VolumeMode.FILESYSTEM  # the plan's default
    data = by_volume["data"]
    assert (data.storage_class, data.volume_mode, data.access_modes, data.target_name) == (
        "fast",
        VolumeMode.BLOCK,
        RWX,
        "data-fast",
    )


def test_plan_without_class_moves_only_volumes_with_an_explicit_class() -> None:
    two = vm(volumes=(volume("rootdisk"), volume("data")))
    the_plan = plan(storage_class=None, vms=(select("vm1", override("data", "fast")),))
    desired, _ = resolve_desired([the_plan], healthy(two))
    assert [(d.volume, d.storage_class) for d in desired] == [("data", "fast")]


def test_default_class_sentinel_resolves_to_the_cluster_default() -> None:
    desired, _ = resolve_desired([plan(storage_class=DEFAULT_CLASS)], healthy())
    assert [d.storage_class for d in desired] == ["old"]  # healthy() marks "old" default


def test_default_class_sentinel_prefers_the_default_virt_class_like_cdi() -> None:
    snap = healthy(storage_class("new", default_virt=True))
    desired, _ = resolve_desired([plan(storage_class=DEFAULT_CLASS)], snap)
    assert [d.storage_class for d in desired] == ["new"]
    assert only_vm(plan(storage_class=DEFAULT_CLASS), snap).action is Action.MOVE_LIVE


def test_default_class_without_a_default_is_blocked_with_the_reason() -> None:
    snap = healthy(storage_class("old"))  # no default any more
    verdict = only_vm(plan(storage_class=DEFAULT_CLASS), snap)
    assert verdict.action is Action.BLOCKED
    assert rules_of(verdict) == ["storage-class-not-found"]
    assert "cluster's default StorageClass" in verdict.volumes[0].reason


def test_selector_conflict_is_a_problem_naming_both_plans() -> None:
    snap = healthy(vm(labels={"tier": "gold"}))
    a = plan("a", vms=(), selector=labels(tier="gold"), storage_class="new")
    b = plan("b", vms=(select("vm1", override("rootdisk", "fast")),), storage_class=None)
    result = diff([a, b], snap)
    assert len(result.problems) == 1
    problem = result.problems[0]
    assert "plans a (plans/a.yaml:1) and b (plans/p.yaml:7:" in problem.message
    assert "a -> new, b -> fast" in problem.message
    assert "[conflicting-targets]" in problem.message
    assert problem.source == src("spec.virtualMachines[0].volumes[0]", line=7)
    assert result.vms == ()  # the conflicting volume is left out: nothing moves


def test_two_plans_wanting_the_same_target_agree() -> None:
    snap = healthy(vm(labels={"tier": "gold"}))
    a = plan("a", vms=(), selector=labels(tier="gold"))
    b = plan("b")
    desired, problems = resolve_desired([a, b], snap)
    assert problems == ()
    assert [(d.volume, d.plan.name) for d in desired] == [("rootdisk", "a")]


def test_plans_sharing_a_vm_must_agree_on_its_settings() -> None:
    two = vm(volumes=(volume("rootdisk"), volume("data")), labels={"tier": "gold"})
    a = plan("a", storage_class=None, vms=(select("vm1", override("rootdisk", "new")),))
    b = plan("b", storage_class=None, vms=(), selector=labels(tier="gold"), allow_stop=True)
    b = replace(b, virtual_machines=(select("vm1", override("data", "new")),))
    desired, problems = resolve_desired([a, b], healthy(two))
    assert desired == ()
    assert len(problems) == 1
    assert "[conflicting-plan-settings]" in problems[0].message
    assert "plans a" in problems[0].message and "and b" in problems[0].message


def test_desired_volumes_are_sorted() -> None:
    snap = healthy(vm("b"), vm("a"), vm("c", namespace="x"))
    desired, _ = resolve_desired([plan(vms=("b", "a")), plan("q", namespace="x", vms=("c",))], snap)
    assert [(d.namespace, d.vm) for d in desired] == [("ns", "a"), ("ns", "b"), ("x", "c")]


def test_missing_explicit_vm_is_a_blocked_verdict_not_a_problem() -> None:
    result = diff([plan(vms=("vm1", "ghost"))], healthy())
    assert result.problems == ()
    ghost = next(v for v in result.vms if v.name == "ghost")
    assert ghost.action is Action.BLOCKED
    assert ghost.volumes == ()
    assert ghost.plan == "p"
    assert reason_lines(ghost)[0].endswith("[vm-not-found]")
    assert "plan p names VM ns/ghost, which does not exist" in reason_lines(ghost)[0]


def test_override_naming_a_missing_volume_blocks_the_vm() -> None:
    verdict = only_vm(plan(vms=(select("vm1", override("datadisk", "new")),)), healthy())
    assert verdict.action is Action.BLOCKED
    by_volume = {v.volume: v for v in verdict.volumes}
    assert by_volume["datadisk"].rule == "volume-not-found"
    assert by_volume["rootdisk"].rule == "vm-blocked"  # withheld: the VM moves as a whole
    assert by_volume["rootdisk"].action is Action.BLOCKED


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------


def test_in_sync() -> None:
    verdict = only_vm(plan(storage_class="old"), healthy())
    assert verdict.action is Action.IN_SYNC
    assert reason_lines(verdict) == ()
    assert [(v.action, v.from_class, v.to_class) for v in verdict.volumes] == [
        (Action.IN_SYNC, "old", "old")
    ]


def test_in_sync_whatever_else_is_true_of_the_vm_but_manual_recovery() -> None:
    """A VM already on its target needs nothing, even if GitOps manages it; only a pending
    manual recovery (whose spec may name a half-copied disk) keeps it from counting as done."""
    snap = with_vm(healthy(), annotations={"argocd.argoproj.io/tracking-id": "a:x"})
    assert only_vm(plan(storage_class="old"), snap).action is Action.IN_SYNC


def test_running_vm_moves_live_with_the_target_spelled_out() -> None:
    verdict = only_vm(plan(), healthy())
    assert verdict.action is Action.MOVE_LIVE
    assert (verdict.running, verdict.stop_required, reason_lines(verdict)) == (True, False, ())
    (vol,) = verdict.volumes
    assert vol == replace(
        vol,
        volume="rootdisk",
        claim="rootdisk-dv",
        from_class="old",
        to_class="new",
        action=Action.MOVE_LIVE,
        reason="",
        rule="",
        target_name="",
        size_bytes=10 * GiB,
        volume_mode="Filesystem",
        access_modes=("ReadWriteOnce",),
    )


def test_block_source_is_sized_by_capacity() -> None:
    snap = healthy(pvc(volume_mode="Block", size=10 * GiB, capacity=10 * GiB + 512 * 2**20))
    (vol,) = only_vm(plan(), snap).volumes
    assert (vol.size_bytes, vol.volume_mode) == (10 * GiB + 512 * 2**20, "Block")


def test_plan_target_name_is_kept() -> None:
    the_plan = plan(vms=(select("vm1", override("rootdisk", target_name="root-on-new")),))
    assert only_vm(the_plan, healthy()).volumes[0].target_name == "root-on-new"


def test_stopped_vm_moves_offline_without_stopping() -> None:
    verdict = only_vm(plan(), healthy(running=False))
    assert verdict.action is Action.MOVE_OFFLINE
    assert (verdict.running, verdict.stop_required) == (False, False)
    assert rules_of(verdict) == ["vm-not-running"]
    # Only the reason that matters: no KubeVirt-configuration noise for a stopped VM.
    assert len(reason_lines(verdict)) == 1 and "stopped" in reason_lines(verdict)[0]


def test_stopped_vm_moves_offline_even_without_kubevirt_live_support() -> None:
    snap = replace(healthy(running=False), kubevirt=None)
    assert only_vm(plan(), snap).action is Action.MOVE_OFFLINE


def test_running_vm_that_cannot_move_live_is_blocked_without_allow_stop() -> None:
    snap = with_vm(healthy(), volumes=(volume(shareable=True),))
    verdict = only_vm(plan(), snap)
    assert verdict.action is Action.BLOCKED
    assert rules_of(verdict) == ["stop-not-allowed"]
    assert "set allowStop: true" in verdict.volumes[0].reason
    assert reason_lines(verdict)[0].endswith("[stop-not-allowed]")
    assert "volume rootdisk: disk rootdisk is shareable" in reason_lines(verdict)[1]
    # ... and as data: the rule, its effect and the volume it concerns, no text to parse
    stop, shareable = verdict.findings
    assert (stop.rule, stop.effect, stop.volume) == ("stop-not-allowed", Effect.BLOCK, None)
    assert (shareable.rule, shareable.effect, shareable.volume) == (
        "shareable-disk",
        Effect.NO_LIVE,
        "rootdisk",
    )


def test_running_vm_that_cannot_move_live_moves_offline_with_allow_stop() -> None:
    snap = with_vm(healthy(), volumes=(volume(shareable=True),))
    verdict = only_vm(plan(allow_stop=True), snap)
    assert verdict.action is Action.MOVE_OFFLINE
    assert (verdict.running, verdict.stop_required) == (True, True)
    assert rules_of(verdict) == ["shareable-disk"]
    assert reason_lines(verdict) == (
        "volume rootdisk: " + finding_line(verdict_finding(verdict, "shareable-disk")),
    )


def verdict_finding(verdict: VMVerdict, rule: str) -> Finding:
    vol = next(v for v in verdict.volumes if v.rule == rule)
    return Finding(rule, Effect.NO_LIVE, None, vol.reason)


@pytest.mark.parametrize(
    ("kv", "rule"),
    [
        (None, "kubevirt-not-found"),
        (kubevirt("v1.4.0", rollout="LiveUpdate"), "feature-gates-missing"),
        (kubevirt("v1.5.0"), "rollout-strategy-not-live-update"),
        (kubevirt("v1.9.0", methods=()), "workload-update-no-live-migrate"),
    ],
)
def test_kubevirt_configuration_decides_live_for_running_vms(
    kv: KubeVirtInfo | None, rule: str
) -> None:
    snap = replace(healthy(), kubevirt=kv)
    blocked = only_vm(plan(), snap)
    assert blocked.action is Action.BLOCKED
    assert any(r.endswith(f"[{rule}]") for r in reason_lines(blocked))
    offline = only_vm(plan(allow_stop=True), snap)
    assert (offline.action, offline.stop_required) == (Action.MOVE_OFFLINE, True)
    assert rules_of(offline) == [rule]


def test_storage_not_live_migratable_names_kubevirts_reason() -> None:
    snap = healthy(
        vmi(
            conditions=(
                cond(
                    "StorageLiveMigratable",
                    "False",
                    reason="HostDevice",
                    message="VMI uses a PCI host device",
                ),
            )
        )
    )
    verdict = only_vm(plan(allow_stop=True), snap)
    assert verdict.action is Action.MOVE_OFFLINE
    assert "(HostDevice: VMI uses a PCI host device)" in reason_lines(verdict)[0]


def test_rwo_volume_left_behind_prevents_a_live_move() -> None:
    two = vm(volumes=(volume("rootdisk"), volume("data")))
    snap = healthy(two, pvc("data-dv", storage_class="new"))  # data already on "new"
    verdict = only_vm(plan(), snap)
    assert verdict.action is Action.BLOCKED
    assert [(v.volume, v.action) for v in verdict.volumes] == [
        ("rootdisk", Action.BLOCKED),
        ("data", Action.IN_SYNC),
    ]
    assert any(
        "data (already on its target class) is ReadWriteOnce" in r for r in reason_lines(verdict)
    )


def test_rwx_volume_left_behind_does_not_prevent_a_live_move() -> None:
    two = vm(volumes=(volume("rootdisk"), volume("data")))
    snap = healthy(two, pvc("data-dv", storage_class="new", access_modes=RWX))
    verdict = only_vm(plan(), snap)
    assert verdict.action is Action.MOVE_LIVE
    assert [v.action for v in verdict.volumes] == [Action.MOVE_LIVE, Action.IN_SYNC]


def test_a_blocked_volume_blocks_the_whole_vm() -> None:
    two = vm(volumes=(volume("rootdisk"), volume("data")))
    snap = healthy(two, pvc("data-dv", phase="Pending"))
    verdict = only_vm(plan(), snap)
    assert verdict.action is Action.BLOCKED
    assert rules_of(verdict) == ["vm-blocked", "claim-not-bound"]
    assert reason_lines(verdict) == (
        "volume data: " + verdict.volumes[1].reason + " [claim-not-bound]",
    )


def test_blocked_vm_lists_every_reason() -> None:
    three = vm(
        volumes=(volume("rootdisk"), volume("data"), volume("logs")),
        labels={"kustomize.toolkit.fluxcd.io/name": "apps"},
    )
    snap = healthy(three, dv("rootdisk-dv", phase="ImportInProgress"), pvc("logs-dv"))
    verdict = only_vm(plan(), snap)  # data has no PVC at all
    assert verdict.action is Action.BLOCKED
    assert [r.rsplit("[", 1)[1] for r in reason_lines(verdict)] == [
        "claim-not-found]",
        "datavolume-not-succeeded]",
        "gitops-managed]",
    ]
    # In catalog.FIX_ORDER: the sources first, the edit outside the plans (GitOps) last; a
    # volume that could move carries the VM's block.
    assert rules_of(verdict) == ["datavolume-not-succeeded", "claim-not-found", "gitops-managed"]


def test_gitops_managed_vm_moves_when_the_plan_allows_it() -> None:
    snap = with_vm(healthy(), annotations={"argocd.argoproj.io/tracking-id": "shop:x"})
    assert only_vm(plan(), snap).action is Action.BLOCKED
    assert only_vm(plan(allow_gitops_managed=True), snap).action is Action.MOVE_LIVE


def test_manual_recovery_required_blocks_even_a_vm_whose_claims_are_on_the_target() -> None:
    """Stopped mid-migration: the spec already names the (half-copied) destination."""
    snap = with_vm(healthy(running=False), conditions=(cond("ManualRecoveryRequired"),))
    on_target = only_vm(plan(storage_class="old"), snap)  # "old" is where the claim is
    assert on_target.action is Action.BLOCKED
    assert rules_of(on_target) == ["manual-recovery-required"]


def test_manual_recovery_required_blocks_with_the_recovery_hint() -> None:
    snap = with_vm(healthy(running=False), conditions=(cond("ManualRecoveryRequired"),))
    verdict = only_vm(plan(), snap)
    assert verdict.action is Action.BLOCKED
    assert rules_of(verdict) == ["manual-recovery-required"]
    assert "restore the original claim names" in reason_lines(verdict)[0]


@pytest.mark.parametrize(
    "scene",
    [
        with_vm(healthy(), annotations={JOURNAL_ANNOTATION: '{"step": "swap"}'}),
        with_vm(
            healthy(vmi(conditions=(cond("VolumesChange"),))), update_volumes_strategy="Migration"
        ),
    ],
    ids=["journal", "volumes-change"],
)
def test_in_progress_wins_over_moves(scene: Snapshot) -> None:
    verdict = only_vm(plan(), scene)
    assert verdict.action is Action.IN_PROGRESS
    assert all(v.action is Action.IN_PROGRESS for v in verdict.volumes)


def test_in_progress_is_not_second_guessed_by_other_rules() -> None:
    # Mid offline move: stopped, the VM already points at a DataVolume still cloning.
    snap = with_vm(
        healthy(dv(phase="CloneInProgress"), running=False),
        annotations={JOURNAL_ANNOTATION: "{}"},
        labels={"kustomize.toolkit.fluxcd.io/name": "apps"},
    )
    verdict = only_vm(plan(), snap)
    assert verdict.action is Action.IN_PROGRESS
    assert rules_of(verdict) == ["journal-present"]


@pytest.mark.parametrize(
    ("the_plan", "running", "action", "rule"),
    [
        (plan(mode=Mode.LIVE), True, Action.MOVE_LIVE, ""),
        (plan(mode=Mode.LIVE), False, Action.BLOCKED, "live-required"),
        (plan(mode=Mode.OFFLINE), True, Action.BLOCKED, "offline-needs-stop"),
        (plan(mode=Mode.OFFLINE, allow_stop=True), True, Action.MOVE_OFFLINE, ""),
        (plan(mode=Mode.OFFLINE), False, Action.MOVE_OFFLINE, "vm-not-running"),
    ],
)
def test_plan_mode(the_plan: Plan, running: bool, action: Action, rule: str) -> None:
    verdict = only_vm(the_plan, healthy(running=running))
    assert verdict.action is action
    assert rules_of(verdict) == [rule]
    assert verdict.stop_required is (action is Action.MOVE_OFFLINE and running)


def test_content_type_blocks_block_to_filesystem_offline_but_not_live() -> None:
    block = pvc(volume_mode="Block", annotations={CONTENT_TYPE_ANNOTATION: "archive"})
    the_plan = plan(volume_mode=VolumeMode.FILESYSTEM)
    live = only_vm(the_plan, healthy(block))
    assert live.action is Action.MOVE_LIVE
    offline = only_vm(the_plan, healthy(block, running=False))
    assert offline.action is Action.BLOCKED
    assert rules_of(offline) == ["offline-impossible"]
    assert any("[content-type-not-kubevirt]" in r for r in reason_lines(offline))


def test_deprecated_running_field_is_noted_on_a_move() -> None:
    snap = with_vm(healthy(), uses_running_field=True)
    verdict = only_vm(plan(), snap)
    assert verdict.action is Action.MOVE_LIVE
    assert verdict.findings == (
        Finding(
            "running-field-deprecated",
            Effect.NOTE,
            None,
            running_field_deprecated(vm_context(snap.vms[("ns", "vm1")], snap)) or "",
        ),
    )


# --------------------------------------------------------------------------------------------
# The Diff as a whole
# --------------------------------------------------------------------------------------------


def test_namespace_allow_list_refuses_plans_outside_it() -> None:
    snap = healthy(vm("vm9", namespace="prod"), pvc("rootdisk-dv", namespace="prod"))
    plans = [plan(), plan("prod", namespace="prod", vms=("vm9",))]
    result = diff(plans, snap, allowed_namespaces=frozenset({"ns"}))
    assert [(v.namespace, v.name) for v in result.vms] == [("ns", "vm1")]
    (problem,) = result.problems
    assert problem.source == plans[1].source
    assert "plan prod targets namespace prod" in problem.message
    assert "(allowed: ns) [namespace-not-allowed]" in problem.message
    assert diff(plans, snap).problems == ()  # None: every namespace


def test_verdicts_are_ordered_and_counted() -> None:
    snap = snapshot(
        *healthy().vms.values(),
        *healthy().vmis.values(),
        vm("b"),
        vm("a"),
        vm("z", namespace="aa"),
        pvc(),
        pvc(namespace="aa"),
        storage_class("old", default=True),
        storage_class("new"),
        kubevirt(),
    )
    plans = [plan(vms=("vm1", "b", "a", "gone")), plan("q", namespace="aa", vms=("z",))]
    result = diff(plans, snap)
    assert [(v.namespace, v.name) for v in result.vms] == [
        ("aa", "z"),
        ("ns", "a"),
        ("ns", "b"),
        ("ns", "gone"),
        ("ns", "vm1"),
    ]
    assert dict(result.summary) == {
        Action.IN_SYNC: 0,
        Action.MOVE_LIVE: 1,  # vm1 (running)
        Action.MOVE_OFFLINE: 3,  # z, a, b are stopped
        Action.BLOCKED: 1,  # gone
        Action.IN_PROGRESS: 0,
    }
    assert result.pending
    assert len(result.desired) == 4


def test_nothing_pending_when_in_sync() -> None:
    result = diff([plan(storage_class="old")], healthy())
    assert not result.pending
    assert result.summary[Action.IN_SYNC] == 1


def test_diff_is_deterministic() -> None:
    snap = healthy(vm("a", labels={"t": "x"}), vm("b", labels={"t": "x"}))
    plans = [plan(vms=(), selector=labels(t="x"))]
    assert diff(plans, snap) == diff(plans, snap)


# --------------------------------------------------------------------------------------------
# Every rule runs for every VM (issue 18 item 1), and a VM being deleted is never moved
# --------------------------------------------------------------------------------------------

ARGO_TRACKED = {"argocd.argoproj.io/tracking-id": "vms:kubevirt.io/VirtualMachine:ns/vm1"}


def test_a_blocked_vm_lists_every_reason_at_once_in_fix_order() -> None:
    """The issue's case: an Argo CD tracking id and a shareable disk on a running VM showed
    only [gitops-managed]; stop-not-allowed and shareable-disk surfaced only after the Argo CD
    edit. Every rule runs now, and the GitOps edit (outside the plans) comes last."""
    snap = with_vm(healthy(), annotations=ARGO_TRACKED, volumes=(volume(shareable=True),))
    verdict = only_vm(plan(), snap)
    assert verdict.action is Action.BLOCKED
    assert [f.rule for f in verdict.findings] == [
        "stop-not-allowed",
        "shareable-disk",  # the cause stop-not-allowed cites, right after it
        "gitops-managed",
    ]
    assert rules_of(verdict) == ["stop-not-allowed"]  # the withheld volume: the first block


def test_volume_blocks_and_run_state_blocks_are_listed_together() -> None:
    """A blocked volume no longer hides the run-state rules (they used to run only when no
    Block was found)."""
    two = vm(volumes=(volume("rootdisk", shareable=True), volume("data")))
    snap = healthy(two, pvc("data-dv", phase="Pending"))
    verdict = only_vm(plan(), snap)
    assert [f.rule for f in verdict.findings] == [
        "claim-not-bound",
        "stop-not-allowed",
        "shareable-disk",
    ]
    assert rules_of(verdict) == ["stop-not-allowed", "claim-not-bound"]


def test_a_vm_being_deleted_is_blocked_first_whatever_else_holds() -> None:
    deleting = {"metadata": {"deletionTimestamp": "2026-05-01T10:00:00Z", "finalizers": ["x"]}}
    snap = with_vm(healthy(), raw=deleting, annotations=ARGO_TRACKED)
    verdict = only_vm(plan(), snap)
    assert verdict.action is Action.BLOCKED
    assert [f.rule for f in verdict.findings] == ["vm-deleting", "gitops-managed"]
    assert rules_of(verdict) == ["vm-deleting"]
    assert "never moved" in reason_lines(verdict)[0]
    stopped = with_vm(healthy(running=False), raw=deleting)
    assert only_vm(plan(), stopped).action is Action.BLOCKED, "offline moves too"


def test_a_vm_being_deleted_that_is_in_sync_stays_in_sync() -> None:
    deleting = {"metadata": {"deletionTimestamp": "2026-05-01T10:00:00Z"}}
    snap = with_vm(healthy(), raw=deleting)
    assert only_vm(plan(storage_class="old"), snap).action is Action.IN_SYNC


# --------------------------------------------------------------------------------------------
# Plans that select nothing (issue 18 item 2) and VMs that do not exist (item 3)
# --------------------------------------------------------------------------------------------


def empty_of(plans: list[Plan], snap: Snapshot, **kwargs: frozenset[str]) -> list[tuple[str, str]]:
    """(rule, message) of each plan that selected nothing."""
    return [(e.finding.rule, e.finding.message) for e in diff(plans, snap, **kwargs).empty_plans]


def test_a_plan_that_selects_something_is_not_reported() -> None:
    assert empty_of([plan(), plan("q", vms=(), selector=labels())], healthy()) == []


def test_a_plan_for_a_namespace_that_does_not_exist_says_so_with_the_closest_one() -> None:
    (found,) = empty_of(
        [plan(namespace="nss")], healthy(), namespaces=frozenset({"ns", "default", "kube-system"})
    )
    assert found == (
        "namespace-not-found",
        "plan p selects no VM: namespace nss does not exist (did you mean ns?); fix the "
        "plan's namespace",
    )
    result = diff([plan(namespace="nss")], healthy())
    (empty,) = result.empty_plans
    assert (empty.namespace, empty.plan, empty.finding.effect) == (
        "nss",
        "p",
        Effect.NOTHING_SELECTED,
    )


def test_a_namespace_without_vms_when_namespaces_are_unknown_says_both() -> None:
    ((rule, message),) = empty_of([plan(namespace="empty", vms=(), selector=labels())], healthy())
    assert rule == "namespace-empty"
    assert "namespace empty has no VirtualMachine (or the namespace does not exist)" in message
    ((rule, message),) = empty_of(
        [plan(namespace="empty")], healthy(), namespaces=frozenset({"ns", "empty"})
    )
    assert rule == "namespace-empty" and "(or the namespace" not in message


def test_a_plan_whose_named_vms_are_all_missing_suggests_names() -> None:
    ((rule, message),) = empty_of([plan(vms=("vm2", "wm1"))], healthy())
    assert rule == "named-vms-not-found"
    assert "the VMs it names (vm2 (did you mean vm1?), wm1 (did you mean vm1?)) do not" in message
    # ... and each missing VM is its own blocked verdict, "missing" rather than "stopped"
    ghost = diff([plan(vms=("wm1",))], healthy()).vms[0]
    assert (ghost.action, ghost.exists) == (Action.BLOCKED, False)
    assert "which does not exist (did you mean vm1?)" in reason_lines(ghost)[0]


def test_a_missing_vm_in_a_misspelled_namespace_suggests_the_same_vm_elsewhere() -> None:
    plans = [plan(), plan("typo", namespace="nss")]
    ghost = next(v for v in diff(plans, healthy()).vms if not v.exists)
    assert "VM nss/vm1, which does not exist (did you mean ns/vm1?)" in reason_lines(ghost)[0]


def test_a_selector_that_matches_no_vm_says_what_labels_are_there() -> None:
    snap = healthy(vm("a", labels={"tier": "archive"}), vm("b", labels={"tier": "gold"}))
    ((rule, message),) = empty_of([plan(vms=(), selector=labels(tier="archve"))], snap)
    assert rule == "selector-matched-none"
    assert message == (
        "plan p selects no VM: no VM of the 3 in namespace ns matches its selector (none has "
        "tier=archve; did you mean tier=archive?); fix the selector, or label the VMs"
    )
    ((_, message),) = empty_of([plan(vms=(), selector=labels(teir="gold"))], snap)
    assert "no VM here has label teir; did you mean tier?" in message


def test_a_selector_whose_every_match_is_excluded_names_the_expression() -> None:
    snap = healthy(
        vm("a", labels={"tier": "gold", "vmstorage.dev/exclude": "yes"}),
        vm("b", labels={"tier": "gold", "os": "windows"}),
    )
    selector = LabelSelector(
        match_labels=(("tier", "gold"),),
        match_expressions=(
            ("vmstorage.dev/exclude", "DoesNotExist", ()),
            ("os", "NotIn", ("windows",)),
        ),
    )
    ((rule, message),) = empty_of([plan(vms=(), selector=selector)], snap)
    assert rule == "every-match-excluded"
    assert (
        "VMs a, b match its selector's labels, but its matchExpressions exclude each "
        "(a: vmstorage.dev/exclude=yes, b: os=windows)"
    ) in message


def test_selected_vms_without_a_disk_to_move_select_nothing() -> None:
    snap = healthy(vm("cd-only", volumes=(volume("cd", kind="containerDisk"),)))
    ((rule, message),) = empty_of([plan(vms=("cd-only",))], snap)
    assert rule == "no-disk-to-move"
    assert "it matches VM cd-only, but none has a PVC or DataVolume disk" in message


def test_only_the_plan_that_selects_nothing_is_reported() -> None:
    plans = [plan(), plan("typo", namespace="nss")]
    result = diff(plans, healthy())
    assert [e.plan for e in result.empty_plans] == ["typo"]
    assert [(v.namespace, v.name, v.exists) for v in result.vms] == [
        ("ns", "vm1", True),
        ("nss", "vm1", False),  # the typo plan's VM: blocked, vm-not-found
    ]
    assert result.pending, "the other plans still act"
