"""Read ``vmstorage.dev/v1alpha1`` ``StoragePlan`` documents (the native plan format).

The format, field by field, is in docs/plans.md. Beyond types and vocabularies, a plan must
select VMs (``virtualMachines`` and/or ``selector``) and every disk it selects must have a
target class (``spec.storageClass``, or a ``storageClass`` on each listed volume).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from reconciler.model.errors import Problem
from reconciler.model.plan import Mode, Plan, Retention, VMSelection, VolumeMode, VolumeTarget
from reconciler.plans.fields import (
    NameRule,
    Scope,
    read_access_modes,
    read_duration,
    read_enum,
    read_name,
    read_plan_name,
    read_scoped_namespace,
    read_selector,
    read_window,
    report_repeats,
)
from reconciler.plans.located_yaml import Field, MappingNode, Node, Reader, join, peek

__all__ = ["ACCESS_MODES", "API_VERSION", "KIND", "read_storage_plan"]

T = TypeVar("T")

API_VERSION = "vmstorage.dev/v1alpha1"
KIND = "StoragePlan"
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany", "ReadWriteOncePod")

_TOP = {
    "apiVersion": Field(True),
    "kind": Field(True),
    "metadata": Field(True, "add metadata: {name: <plan name>}"),
    "spec": Field(True, "add spec: {namespace: ..., storageClass: ..., virtualMachines: ...}"),
}
_META = {
    "name": Field(True, "name the plan: metadata.name, a DNS-1123 subdomain"),
    "labels": Field(),
    "annotations": Field(),
}
_META_MISPLACED = {"namespace": "a StoragePlan names the namespace it acts in with spec.namespace"}
_SPEC = {
    # Required unless -n/--namespace gives it (read_scoped_namespace reports it missing).
    "namespace": Field(),
    "storageClass": Field(),
    "virtualMachines": Field(),
    "selector": Field(),
    "volumeMode": Field(),
    "accessModes": Field(),
    "mode": Field(),
    "allowStop": Field(),
    "retention": Field(),
    "window": Field(),
    "timeout": Field(),
    "allowGitOpsManaged": Field(),
}
_SPEC_MISPLACED = {
    "name": "the plan's name goes in metadata.name",
    "retentionPolicy": "a StoragePlan says retention: Keep or Delete",
}
_VM = {"name": Field(True, "the VirtualMachine's metadata.name"), "volumes": Field()}
_VM_MISPLACED = {
    "targetMigrationPVCs": "that is the kubevirt-migration-controller format; a StoragePlan "
    "lists volumes: [{name: <volume>, storageClass: <class>}]",
}
_VOLUME = {
    "name": Field(True, "the VM's volume name (spec.template.spec.volumes[].name)"),
    "storageClass": Field(),
    "volumeMode": Field(),
    "accessModes": Field(),
    "targetName": Field(),
}


def read_storage_plan(r: Reader, node: MappingNode, path: str, scope: Scope) -> list[Plan]:
    """The plan in one StoragePlan document; problems go to ``r`` (the caller discards the
    plan of a document that had any)."""
    top = r.mapping(node, path, _TOP)
    if top is None:
        return []
    meta_path, spec_path = join(path, "metadata"), join(path, "spec")
    meta = None
    if "metadata" in top:
        meta = r.mapping(top["metadata"], meta_path, _META, misplaced=_META_MISPLACED)
    name, source = read_plan_name(r, meta, top.get("metadata"), meta_path)
    spec_node = top.get("spec")
    if spec_node is None:
        return []
    spec = r.mapping(spec_node, spec_path, _SPEC, misplaced=_SPEC_MISPLACED)
    if spec is None:
        return []

    def opt(key: str, read: Callable[[Node, str], T | None]) -> T | None:
        return read(spec[key], join(spec_path, key)) if key in spec else None

    namespace = read_scoped_namespace(
        r,
        scope,
        spec.get("namespace"),
        join(spec_path, "namespace"),
        holder=spec_node,
        what="a StoragePlan",
    )
    vms = opt("virtualMachines", lambda n, p: _vms(r, n, p))
    selector = opt("selector", lambda n, p: read_selector(r, n, p))
    plan = Plan(
        name=name or "",
        namespace=namespace or "",
        source=source,
        storage_class=opt("storageClass", lambda n, p: read_name(r, n, p, "StorageClass name")),
        volume_mode=opt("volumeMode", lambda n, p: read_enum(r, n, p, VolumeMode, "volumeMode"))
        or VolumeMode.AUTO,
        access_modes=opt("accessModes", lambda n, p: read_access_modes(r, n, p, ACCESS_MODES)),
        virtual_machines=tuple(vms or ()),
        selector=selector,
        mode=opt("mode", lambda n, p: read_enum(r, n, p, Mode, "mode")) or Mode.AUTO,
        allow_stop=bool(opt("allowStop", r.boolean)),
        retention=opt("retention", lambda n, p: read_enum(r, n, p, Retention, "retention"))
        or Retention.KEEP,
        window=opt("window", lambda n, p: read_window(r, n, p)),
        timeout=opt("timeout", lambda n, p: read_duration(r, n, p, "timeout")),
        allow_gitops_managed=bool(opt("allowGitOpsManaged", r.boolean)),
        origin_kind=KIND,
    )
    # A list or selector that failed to read has its own problem: do not pile on.
    vms_failed = "virtualMachines" in spec and vms is None
    selector_failed = "selector" in spec and selector is None
    if not vms_failed and not selector_failed:
        _check_selection(r, spec_node, spec, spec_path, plan)
    return [plan]


def _vms(r: Reader, node: Node, path: str) -> list[VMSelection] | None:
    report_repeats(r, node, path, key="name", what="VM", where="in this plan")
    return r.items(node, path, lambda n, p: _vm(r, n, p))


def _vm(r: Reader, node: Node, path: str) -> VMSelection | None:
    fields = r.mapping(node, path, _VM, misplaced=_VM_MISPLACED)
    if fields is None:
        return None
    name = read_name(r, fields["name"], join(path, "name"), "VM name") if "name" in fields else None
    volumes: list[VolumeTarget] | None = []
    if "volumes" in fields:
        volumes_path = join(path, "volumes")
        where = f"in VM '{peek(node, 'name')}'"
        report_repeats(r, fields["volumes"], volumes_path, key="name", what="volume", where=where)
        volumes = r.items(fields["volumes"], volumes_path, lambda n, p: _volume(r, n, p))
    if name is None or volumes is None:
        return None
    return VMSelection(name=name, source=r.source(node, path), volumes=tuple(volumes))


def _volume(r: Reader, node: Node, path: str) -> VolumeTarget | None:
    fields = r.mapping(node, path, _VOLUME)
    if fields is None:
        return None
    before = len(r.problems)

    def opt(key: str, read: Callable[[Node, str], T | None]) -> T | None:
        return read(fields[key], join(path, key)) if key in fields else None

    volume = VolumeTarget(
        name=opt("name", lambda n, p: read_name(r, n, p, "volume name", NameRule.LABEL)) or "",
        source=r.source(node, path),
        storage_class=opt("storageClass", lambda n, p: read_name(r, n, p, "StorageClass name")),
        volume_mode=opt("volumeMode", lambda n, p: read_enum(r, n, p, VolumeMode, "volumeMode")),
        access_modes=opt("accessModes", lambda n, p: read_access_modes(r, n, p, ACCESS_MODES)),
        target_name=opt(
            "targetName", lambda n, p: read_name(r, n, p, "targetName", NameRule.LABEL)
        ),
    )
    return volume if len(r.problems) == before else None


def _check_selection(
    r: Reader, spec_node: Node, spec: Mapping[str, Node], spec_path: str, plan: Plan
) -> None:
    """The plan must select VMs, and every disk it selects must have a target class."""
    if not plan.virtual_machines and plan.selector is None:
        listed = "virtualMachines" in spec  # an empty list: point at it
        r.report(
            spec["virtualMachines"] if listed else spec_node,
            join(spec_path, "virtualMachines") if listed else spec_path,
            "the plan selects no VMs",
            "list VMs by name in spec.virtualMachines and/or by label in spec.selector",
        )
        return
    if plan.storage_class is not None:
        return
    if plan.selector is not None:
        r.report(
            spec["selector"],
            join(spec_path, "selector"),
            "the VMs matched by spec.selector have no target StorageClass",
            "set spec.storageClass (the target for every disk of the selected VMs)",
        )
    for vm in plan.virtual_machines:
        if not vm.volumes:
            r.problems.append(
                Problem(
                    vm.source,
                    f"VM '{vm.name}' has no target StorageClass",
                    "set spec.storageClass, or list the VM's volumes with a storageClass each",
                )
            )
        for volume in vm.volumes:
            if volume.storage_class is None:
                r.problems.append(
                    Problem(
                        volume.source,
                        f"volume '{volume.name}' of VM '{vm.name}' has no target StorageClass",
                        "give the volume a storageClass, or set spec.storageClass",
                    )
                )
