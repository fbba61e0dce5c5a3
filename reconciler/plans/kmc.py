"""Read kubevirt-migration-controller (KMC) plans into the same ``Plan`` model.

``migrations.kubevirt.io/v1alpha1`` ``VirtualMachineStorageMigrationPlan`` and
``MultiNamespaceVirtualMachineStorageMigrationPlan`` are accepted as KMC defines them, so a
team that uses KMC can commit its plans to Git unchanged. The mapping:

- ``metadata.namespace`` is the plan's namespace, by kubectl's rule for namespaced objects:
  without one the plan lands in the namespace given with ``-n/--namespace``; one that differs
  from ``-n`` is an error (as ``kubectl apply -n`` refuses it); with neither, the plan is
  refused with a hint. A multi-namespace plan's own namespace is checked against ``-n`` too,
  but its VMs are in the ``spec.namespaces[]`` entries.
- Only the listed volumes move (``Plan.storage_class`` is None). Each
  ``targetMigrationPVCs[]`` entry is a ``VolumeTarget``: ``volumeName`` is the VM's volume,
  ``destinationPVC.name`` the target claim name, ``storageClassName`` the class
  (``DEFAULT_CLASS`` when left out: KMC then uses the default StorageClass),
  ``volumeMode`` Filesystem/Block/Auto, ``accessModes`` without ``Auto`` entries (Auto, or
  no mode at all, leaves the choice to the target's StorageProfile, like our Auto).
- ``retentionPolicy`` keepSource/deleteSource is retention Keep/Delete.
- KMC has no modes, windows or stops: mode Auto, allowStop false (KMC moves a stopped VM
  offline and never stops a running one), no window, the default timeout.
- A multi-namespace plan is one ``Plan`` per ``spec.namespaces[]`` entry, named as KMC names
  the per-namespace plans it creates (``child_plan_name``: ``<plan>-<namespace>``, shortened
  with a hash beyond 253 characters). A top-level ``retentionPolicy: deleteSource`` applies to
  every namespace (KMC semantics).
- Names follow the CRDs of kubevirt-migration-controller main (2026-04-30, 8a45c9e):
  ``virtualMachines[].name`` and ``destinationPVC.name`` match ``^[a-z]([-a-z0-9]*[a-z0-9])?$``
  with at most 63 characters (a DNS-1035 label: the API server refuses the plan otherwise);
  ``virtualMachines`` and ``namespaces`` are list-maps keyed by name (a repeated name is
  refused). ``volumeName`` has no CRD pattern, but KubeVirt admits only DNS-1123 label disk
  names and every volume needs a disk of its name, so no VM can have another volume name.
- ``status`` and server-set metadata are ignored, so ``kubectl get -o yaml`` output loads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from reconciler.model.plan import (
    DEFAULT_CLASS,
    Mode,
    Plan,
    Retention,
    Source,
    VMSelection,
    VolumeMode,
    VolumeTarget,
)
from reconciler.plans.fields import (
    NameRule,
    Scope,
    read_access_modes,
    read_choice,
    read_name,
    read_namespace,
    read_plan_name,
    read_scoped_namespace,
    report_repeats,
)
from reconciler.plans.kmc_names import CRD_NAME_RULE, KUBEVIRT_DISK_RULE, child_plan_name
from reconciler.plans.located_yaml import (
    Field,
    MappingNode,
    Node,
    Reader,
    ScalarNode,
    join,
    peek,
)

__all__ = [
    "API_VERSION",
    "KIND",
    "MULTI_KIND",
    "read_kmc_multi_plan",
    "read_kmc_plan",
]

T = TypeVar("T")

API_VERSION = "migrations.kubevirt.io/v1alpha1"
KIND = "VirtualMachineStorageMigrationPlan"
MULTI_KIND = "MultiNamespaceVirtualMachineStorageMigrationPlan"


_ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "Auto")
_VOLUME_MODES = {
    "Filesystem": VolumeMode.FILESYSTEM,
    "Block": VolumeMode.BLOCK,
    "Auto": VolumeMode.AUTO,
}
_RETENTION = {"keepSource": Retention.KEEP, "deleteSource": Retention.DELETE}
# Set by the API server; accepted and ignored so that an exported object loads as it is.
_SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "finalizers",
    "ownerReferences",
    "selfLink",
    "generateName",
)

_TOP = {
    "apiVersion": Field(True),
    "kind": Field(True),
    "metadata": Field(True, "add metadata: {name: ..., namespace: ...}"),
    "spec": Field(True, "add spec: {virtualMachines: [...]}"),
}
_META = {
    "name": Field(True, "name the plan: metadata.name, a DNS-1123 subdomain"),
    # Required unless -n/--namespace gives it (read_scoped_namespace reports it missing).
    "namespace": Field(),
    "labels": Field(),
    "annotations": Field(),
}
_MULTI_META = _META  # its namespace is only checked against -n (its VMs are per entry)
_SPEC = {
    "virtualMachines": Field(True, "list the VMs: virtualMachines: [{name, targetMigrationPVCs}]"),
    "retentionPolicy": Field(),
}
_MULTI_SPEC = {
    "namespaces": Field(True, "list the namespaces: namespaces: [{name, virtualMachines}]"),
    "retentionPolicy": Field(),
}
_NAMESPACE = {"name": Field(True, "the namespace's name"), **_SPEC}
_VM = {
    "name": Field(True, "the VirtualMachine's metadata.name"),
    "targetMigrationPVCs": Field(
        True, "list the volumes to move: targetMigrationPVCs: [{volumeName, destinationPVC}]"
    ),
}
_TARGET = {
    "volumeName": Field(True, "the VM's volume name (spec.template.spec.volumes[].name)"),
    "destinationPVC": Field(True, "describe the target: destinationPVC: {storageClassName: ...}"),
}
_DESTINATION = {
    "name": Field(),
    "storageClassName": Field(),
    "accessModes": Field(),
    "volumeMode": Field(),
}


def _read_head(
    r: Reader,
    node: MappingNode,
    path: str,
    *,
    meta_fields: Mapping[str, Field],
    meta_ignored: tuple[str, ...],
    spec_fields: Mapping[str, Field],
) -> tuple[dict[str, Node] | None, str | None, Source, dict[str, Node] | None, str] | None:
    """The parts both KMC kinds share: (metadata, plan name, its source, spec, spec path);
    None when the document is not a mapping (already reported)."""
    top = r.mapping(node, path, _TOP, ignored=("status",))
    if top is None:
        return None
    meta_path, spec_path = join(path, "metadata"), join(path, "spec")
    meta = None
    if "metadata" in top:
        meta = r.mapping(top["metadata"], meta_path, meta_fields, ignored=meta_ignored)
    name, source = read_plan_name(r, meta, top.get("metadata"), meta_path)
    spec = r.mapping(top["spec"], spec_path, spec_fields) if "spec" in top else None
    return meta, name, source, spec, spec_path


def read_kmc_plan(r: Reader, node: MappingNode, path: str, scope: Scope) -> list[Plan]:
    """The plan in one VirtualMachineStorageMigrationPlan document."""
    head = _read_head(
        r, node, path, meta_fields=_META, meta_ignored=_SERVER_METADATA, spec_fields=_SPEC
    )
    if head is None:
        return []
    meta, name, source, spec, spec_path = head
    meta_path = join(path, "metadata")
    namespace = None
    if meta is not None:
        namespace = read_scoped_namespace(
            r,
            scope,
            meta.get("namespace"),
            join(meta_path, "namespace"),
            holder=_raw(node, "metadata") or node,
            what=f"a {KIND}",
        )
    if spec is None:
        return []
    plan = _plan(
        name=name or "",
        namespace=namespace or "",
        source=source,
        vms=_vms(r, spec, spec_path),
        retention=_retention(r, spec, spec_path) or Retention.KEEP,
        kind=KIND,
    )
    return [plan]


def read_kmc_multi_plan(r: Reader, node: MappingNode, path: str, scope: Scope) -> list[Plan]:
    """One plan per namespace of a MultiNamespaceVirtualMachineStorageMigrationPlan."""
    head = _read_head(
        r,
        node,
        path,
        meta_fields=_MULTI_META,
        meta_ignored=_SERVER_METADATA,
        spec_fields=_MULTI_SPEC,
    )
    if head is None:
        return []
    meta, name, _, spec, spec_path = head
    if meta is not None and "namespace" in meta:
        # Where the object itself would live: only kubectl's -n rule applies; its VMs are in
        # the spec.namespaces[] entries (those obey --allow-namespace).
        where = join(join(path, "metadata"), "namespace")
        read_scoped_namespace(
            r, Scope(namespace=scope.namespace), meta["namespace"], where, holder=node, what=""
        )
    if spec is None or "namespaces" not in spec:
        return []
    overall = _retention(r, spec, spec_path)
    entries_path = join(spec_path, "namespaces")
    entries = r.sequence(spec["namespaces"], entries_path)
    if entries is None:
        return []
    if not entries:
        r.report(
            spec["namespaces"],
            entries_path,
            "the plan lists no namespaces",
            "list them: namespaces: [{name: <namespace>, virtualMachines: [...]}]",
        )
    first_line: dict[str, int] = {}  # namespace -> line of its first entry
    plans: list[Plan] = []
    for index, entry in enumerate(entries):
        entry_path = f"{entries_path}[{index}]"
        namespace_name = peek(entry, "name")
        if namespace_name is not None and namespace_name in first_line:
            r.report(
                entry,
                entry_path,
                f"namespace '{namespace_name}' is listed twice in this plan "
                f"(first on line {first_line[namespace_name]})",
                "merge the two entries into one",
            )
        elif namespace_name is not None:
            first_line[namespace_name] = entry.start_mark.line + 1
        plan = _namespace_plan(
            r, entry, entry_path, plan_name=name, overall=overall, allowed=scope.allowed
        )
        if plan is not None:
            plans.append(plan)
    return plans


def _namespace_plan(
    r: Reader,
    entry: Node,
    path: str,
    *,
    plan_name: str | None,
    overall: Retention | None,
    allowed: frozenset[str] | None,
) -> Plan | None:
    fields = r.mapping(entry, path, _NAMESPACE)
    if fields is None or "name" not in fields:
        return None
    name_path = join(path, "name")
    namespace = read_namespace(r, fields["name"], name_path, allowed)
    child = child_plan_name(plan_name or "", namespace or "")
    if plan_name and namespace and not NameRule.SUBDOMAIN.matches(child):
        # Only when shortening cut the plan name at a '.' or '-' (KMC would fail to create it).
        r.report(
            fields["name"],
            name_path,
            f"the per-namespace plan name '{child}' that KMC derives from the plan and "
            f"namespace names is not a valid {NameRule.SUBDOMAIN.value}",
            f"shorten or rename metadata.name; {NameRule.SUBDOMAIN.rule}",
        )
    # deleteSource at the top overrides every namespace; keepSource or unset defers to them.
    retention = _retention(r, fields, path) or Retention.KEEP
    if overall is Retention.DELETE:
        retention = Retention.DELETE
    return _plan(
        name=child,
        namespace=namespace or "",
        source=r.source(entry, path),
        vms=_vms(r, fields, path),
        retention=retention,
        kind=MULTI_KIND,
    )


def _raw(node: MappingNode, key: str) -> Node | None:
    """The value node of ``key`` (already validated by the caller), for pointing at it."""
    for key_node, value in node.value:
        if isinstance(key_node, ScalarNode) and key_node.value == key:
            found: Node = value
            return found
    return None


def _plan(
    *,
    name: str,
    namespace: str,
    source: Source,
    vms: list[VMSelection],
    retention: Retention,
    kind: str,
) -> Plan:
    return Plan(
        name=name,
        namespace=namespace,
        source=source,
        storage_class=None,  # KMC moves only the volumes it lists
        virtual_machines=tuple(vms),
        mode=Mode.AUTO,
        allow_stop=False,  # KMC never stops a running VM
        retention=retention,
        origin_kind=kind,
    )


def _retention(r: Reader, spec: Mapping[str, Node], path: str) -> Retention | None:
    if "retentionPolicy" not in spec:
        return None
    where = join(path, "retentionPolicy")
    value = read_choice(r, spec["retentionPolicy"], where, "retentionPolicy", tuple(_RETENTION))
    return _RETENTION[value] if value is not None else None


def _vms(r: Reader, spec: Mapping[str, Node], path: str) -> list[VMSelection]:
    if "virtualMachines" not in spec:
        return []  # reported as a missing required field
    node, vms_path = spec["virtualMachines"], join(path, "virtualMachines")
    report_repeats(r, node, vms_path, key="name", what="VM", where="in this plan")
    vms = r.items(node, vms_path, lambda n, p: _vm(r, n, p))
    if vms == []:
        r.report(
            node,
            vms_path,
            "the plan selects no VMs",
            "list them: virtualMachines: [{name: <vm>, targetMigrationPVCs: [...]}]",
        )
    return vms or []


def _vm(r: Reader, node: Node, path: str) -> VMSelection | None:
    fields = r.mapping(node, path, _VM)
    if fields is None:
        return None
    name = None
    if "name" in fields:
        where = join(path, "name")
        name = read_name(r, fields["name"], where, "VM name", NameRule.DNS1035, why=CRD_NAME_RULE)
    if "targetMigrationPVCs" not in fields:
        return None
    targets, targets_path = fields["targetMigrationPVCs"], join(path, "targetMigrationPVCs")
    where = f"in VM '{peek(node, 'name')}'"
    report_repeats(r, targets, targets_path, key="volumeName", what="volume", where=where)
    volumes = r.items(targets, targets_path, lambda n, p: _volume(r, n, p))
    if volumes == []:
        r.report(
            targets,
            targets_path,
            f"VM '{peek(node, 'name')}' lists no volumes to move",
            "list them: targetMigrationPVCs: [{volumeName: <volume>, destinationPVC: {...}}]",
        )
    if name is None or not volumes:
        return None
    return VMSelection(name=name, source=r.source(node, path), volumes=tuple(volumes))


def _volume(r: Reader, node: Node, path: str) -> VolumeTarget | None:
    fields = r.mapping(node, path, _TARGET)
    if fields is None:
        return None
    before = len(r.problems)
    name = None
    if "volumeName" in fields:
        where = join(path, "volumeName")
        name = read_name(
            r, fields["volumeName"], where, "volume name", NameRule.LABEL, why=KUBEVIRT_DISK_RULE
        )
    dest_path = join(path, "destinationPVC")
    dest: Mapping[str, Node] = {}
    if "destinationPVC" in fields:
        dest = r.mapping(fields["destinationPVC"], dest_path, _DESTINATION) or {}

    def opt(key: str, read: Callable[[Node, str], T | None]) -> T | None:
        return read(dest[key], join(dest_path, key)) if key in dest else None

    modes = opt("accessModes", lambda n, p: read_access_modes(r, n, p, _ACCESS_MODES))
    concrete = tuple(m for m in modes or () if m != "Auto")  # Auto: the StorageProfile decides
    volume_mode = opt(
        "volumeMode", lambda n, p: read_choice(r, n, p, "volumeMode", tuple(_VOLUME_MODES))
    )
    volume = VolumeTarget(
        name=name or "",
        source=r.source(node, path),
        storage_class=opt("storageClassName", lambda n, p: read_name(r, n, p, "StorageClass name"))
        or DEFAULT_CLASS,
        volume_mode=_VOLUME_MODES[volume_mode] if volume_mode is not None else None,
        access_modes=concrete or None,
        target_name=opt(
            "name",
            lambda n, p: read_name(
                r, n, p, "destination PVC name", NameRule.DNS1035, why=CRD_NAME_RULE
            ),
        ),
    )
    return volume if len(r.problems) == before else None
