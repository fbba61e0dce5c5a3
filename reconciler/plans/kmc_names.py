"""The names kubevirt-migration-controller (KMC) gives and accepts, as upstream defines them.

From kubevirt-migration-controller main (8a45c9e, 2026-04-30): the CRD pattern of VM and
destination PVC names, and ``GetNamespacedPlanName`` (the per-namespace plans a
multi-namespace plan creates), which since 6eae519 (2026-02) shortens long names with a hash
instead of failing.
"""

from __future__ import annotations

from reconciler.plans.fields import NameRule

__all__ = ["CRD_NAME_RULE", "KUBEVIRT_DISK_RULE", "child_plan_name"]

# Who refuses which name, for the hints (the rule named, so the user knows it is not ours).
CRD_NAME_RULE = (
    "kubevirt-migration-controller's CRD pattern ^[a-z]([-a-z0-9]*[a-z0-9])?$: the API server "
    "refuses the plan"
)
KUBEVIRT_DISK_RULE = (
    "KubeVirt admits only DNS-1123 label disk names and each volume needs the disk of its "
    "name, so no VM has such a volume"
)


def child_plan_name(plan: str, namespace: str) -> str:
    """The name KMC gives the plan it creates in ``namespace`` for a multi-namespace plan:
    ``GetNamespacedPlanName``, i.e. openshift/library-go ``naming.GetName(plan, namespace,
    253)``: ``<plan>-<namespace>``; if longer, the plan name cut to fit, the FNV-1a hash
    of the whole plan name and the namespace: ``<prefix>-<hash>-<namespace>``."""
    limit = NameRule.SUBDOMAIN.max_length
    name = f"{plan}-{namespace}"
    if len(name) <= limit:
        return name
    base_length = limit - 10 - len(namespace)  # 10: the length of "-<8 hex>-"
    if base_length <= 0:  # a namespace is at most 63 characters: cannot happen; as upstream
        prefix = plan[: max(0, limit - 9)]
        return f"{prefix}-{_fnv1a(name)}"[:limit]
    return f"{plan[:base_length]}-{_fnv1a(plan)}-{namespace}"


def _fnv1a(text: str) -> str:
    """32-bit FNV-1a of ``text`` as 8 hex digits (Go's hash/fnv New32a)."""
    value = 0x811C9DC5
    for byte in text.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return f"{value:08x}"
