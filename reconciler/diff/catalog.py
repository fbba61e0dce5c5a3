"""Every rule, in one list, and the rules decided directly by ``judge``/``desired`` (missing VM,
conflicting plans, ...) and ``selection`` (a plan that selects nothing), listed here so the
catalog is complete; ``FIX_ORDER``, the order a blocked VM's reasons are listed in. Pure."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from reconciler.diff.rule import RuleInfo
from reconciler.diff.rules_cluster import CLUSTER_RULES
from reconciler.diff.rules_run import RUN_RULES
from reconciler.diff.rules_vm import IN_PROGRESS_RULES, RECOVERY_RULES, VM_RULES
from reconciler.diff.rules_volume import VOLUME_RULES
from reconciler.model.plan import PLAN_SETTINGS
from reconciler.model.verdict import Effect, Finding

VM_NOT_FOUND = RuleInfo("vm-not-found", Effect.BLOCK, "A VM the plan names does not exist.")
VM_BLOCKED = RuleInfo(
    "vm-blocked",
    Effect.BLOCK,
    "The volume could move, but another volume or the VM is blocked: a VM moves as a whole.",
)
NAMESPACE_NOT_ALLOWED = RuleInfo(
    "namespace-not-allowed", Effect.PROBLEM, "The plan's namespace is not in the allow-list."
)
CONFLICTING_TARGETS = RuleInfo(
    "conflicting-targets",
    Effect.PROBLEM,
    "Two plans want different targets for the same VM volume (with live labels).",
)
CONFLICTING_PLAN_SETTINGS = RuleInfo(
    "conflicting-plan-settings",
    Effect.PROBLEM,
    f"Two plans move volumes of the same VM with different {'/'.join(PLAN_SETTINGS.values())}.",
)
STANDALONE_RULES: tuple[RuleInfo, ...] = (
    VM_NOT_FOUND,
    VM_BLOCKED,
    NAMESPACE_NOT_ALLOWED,
    CONFLICTING_TARGETS,
    CONFLICTING_PLAN_SETTINGS,
)


def closest(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The candidates ``word`` is probably a typo of, closest first (difflib's ratio >= 0.6)."""
    return difflib.get_close_matches(word, sorted(set(candidates)), n=n, cutoff=0.6)


def did_you_mean(suggestions: Iterable[str]) -> str:
    """``" (did you mean a or b?)"``, or "" when there is nothing to suggest."""
    shown = list(suggestions)
    return f" (did you mean {' or '.join(shown)}?)" if shown else ""


def closest_vms(namespace: str, name: str, vms: Iterable[tuple[str, str]]) -> list[str]:
    """The VMs ``namespace/name`` probably meant, of ``vms`` ((namespace, name) that exist):
    close names in the same namespace (shown by name), else the same name in namespaces with
    a close name, closest first (shown as namespace/name)."""
    known = sorted(set(vms))
    here = closest(name, (vm for ns, vm in known if ns == namespace))
    if here:
        return here
    others = closest(namespace, (ns for ns, vm in known if vm == name and ns != namespace))
    return [f"{ns}/{name}" for ns in others]


def vm_not_found(
    namespace: str, name: str, plan: str, vms: Iterable[tuple[str, str]] = ()
) -> Finding:
    """``vms``: (namespace, name) of the VMs that exist, for a "did you mean" (``closest_vms``)."""
    return Finding(
        VM_NOT_FOUND.id,
        VM_NOT_FOUND.effect,
        None,
        f"plan {plan} names VM {namespace}/{name}, which does not exist"
        f"{did_you_mean(closest_vms(namespace, name, vms))}: fix the name in the plan's "
        "virtualMachines, or remove it",
    )


# A plan that selects no VM (``selection.empty_plans``), one reason per plan: the first that
# holds, in this order.
NAMESPACE_NOT_FOUND = RuleInfo(
    "namespace-not-found",
    Effect.NOTHING_SELECTED,
    "The plan's namespace does not exist (checked only when a plan selects nothing).",
)
NAMESPACE_EMPTY = RuleInfo(
    "namespace-empty", Effect.NOTHING_SELECTED, "The plan's namespace has no VirtualMachine."
)
NAMED_VMS_NOT_FOUND = RuleInfo(
    "named-vms-not-found",
    Effect.NOTHING_SELECTED,
    "None of the VMs the plan names exists, and it has no selector.",
)
SELECTOR_MATCHED_NONE = RuleInfo(
    "selector-matched-none",
    Effect.NOTHING_SELECTED,
    "No VM of the namespace matches the selector's matchLabels/In/Exists (and no named VM exists).",
)
EVERY_MATCH_EXCLUDED = RuleInfo(
    "every-match-excluded",
    Effect.NOTHING_SELECTED,
    "VMs match the selector's matchLabels/In/Exists, but its NotIn/DoesNotExist exclude each.",
)
NO_DISK_TO_MOVE = RuleInfo(
    "no-disk-to-move",
    Effect.NOTHING_SELECTED,
    "The plan selects VMs, but none has a PVC or DataVolume disk it moves.",
)
SELECTION_RULES: tuple[RuleInfo, ...] = (
    NAMESPACE_NOT_FOUND,
    NAMESPACE_EMPTY,
    NAMED_VMS_NOT_FOUND,
    SELECTOR_MATCHED_NONE,
    EVERY_MATCH_EXCLUDED,
    NO_DISK_TO_MOVE,
)


CATALOG: tuple[RuleInfo, ...] = (
    *CLUSTER_RULES,
    *RECOVERY_RULES,
    *IN_PROGRESS_RULES,
    *VM_RULES,
    *VOLUME_RULES,
    *RUN_RULES,
    *STANDALONE_RULES,
    *SELECTION_RULES,
)

FIX_ORDER: tuple[str, ...] = (
    # Nothing else matters for a VM on its way out.
    "vm-deleting",
    "vm-not-found",
    # The plan names something wrong: fix the plan.
    "volume-not-found",
    "volume-not-a-claim",
    "storage-class-not-found",
    "storage-profile-mismatch",
    # The source is not ready or not usable: wait, or fix the VM's disk.
    "claim-not-found",
    "claim-not-bound",
    "datavolume-not-succeeded",
    "source-size-unknown",
    "datavolume-template-unsized",
    # How it may move: the plan's mode/allowStop against what the VM can do (each followed, in
    # a verdict, by the NoLive/NoOffline findings it cites).
    "live-required",
    "offline-needs-stop",
    "stop-not-allowed",
    "offline-impossible",
    # Last, because it is an edit outside the plans (the GitOps tool's ignore rule, then the
    # opt-in) worth making only once the rest is settled.
    "gitops-managed",
    "vm-blocked",
)
"""The order a blocked VM's reasons are listed in: what to fix first. Every Block rule is
here (tests/unit/test_rules.py checks); ``manual-recovery-required`` is not, because a VM that
needs recovery is judged by that rule alone (its spec may name a half-copied disk)."""


def fix_rank(rule: str) -> int:
    """``rule``'s place in ``FIX_ORDER`` (an unknown id goes last)."""
    return FIX_ORDER.index(rule) if rule in FIX_ORDER else len(FIX_ORDER)
