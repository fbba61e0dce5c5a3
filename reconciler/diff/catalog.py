"""Every rule, in one list, and the rules decided directly by ``judge``/``desired`` (missing VM,
conflicting plans, ...), listed here so the catalog is complete. Pure."""

from __future__ import annotations

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


def vm_not_found(namespace: str, name: str, plan: str) -> Finding:
    return Finding(
        VM_NOT_FOUND.id,
        VM_NOT_FOUND.effect,
        None,
        f"plan {plan} names VM {namespace}/{name}, which does not exist: fix the name in the "
        "plan's virtualMachines, or remove it",
    )


CATALOG: tuple[RuleInfo, ...] = (
    *CLUSTER_RULES,
    *RECOVERY_RULES,
    *IN_PROGRESS_RULES,
    *VM_RULES,
    *VOLUME_RULES,
    *RUN_RULES,
    *STANDALONE_RULES,
)
