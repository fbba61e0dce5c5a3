"""The GitOps write-back of one finished move: the change to commit to the VM's manifest in the
application repository, so Git and the cluster agree again. Values only.

A VM that Argo CD or Flux applies from Git still has its old claim names there after a move;
the next sync without an ignore rule would put them back, and for a VM that runs with
``updateVolumesStrategy: Migration`` that is a storage migration back to the old disks (or a
failure, once a source was deleted). ``report.writeback`` computes this value from the moved
volumes and the VM as the move left it, and formats it (YAML to edit by hand, an RFC 6902
patch to apply with a tool or a kustomize ``patches`` entry, a one-line Event note).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WriteBackVolume:
    """One moved volume, as the VM manifest names it.

    ``index``: its position in ``spec.template.spec.volumes``; ``claim_field``: ``dataVolume``
    or ``persistentVolumeClaim`` (the key holding the claim: ``name`` or ``claimName``).
    ``template_index`` and ``template_storage`` (``storage`` or ``pvc``): the
    ``spec.dataVolumeTemplates`` entry that was renamed with it, if any, and ``storage_class``
    the class that template now asks for.
    """

    volume: str
    index: int
    claim_field: str
    source: str
    target: str
    template_index: int | None = None
    template_storage: str = "storage"
    storage_class: str | None = None

    @property
    def claim_key(self) -> str:
        return "claimName" if self.claim_field == "persistentVolumeClaim" else "name"


@dataclass(frozen=True)
class WriteBack:
    """``owners``: who applies the VM from Git, in words ("Flux Kustomization apps/vms").
    ``patch``: RFC 6902 operations on the VM manifest as Git has it (each renamed value is
    tested first, so a manifest that differs fails loudly instead of being half-edited).
    ``strategy``: ``spec.updateVolumesStrategy`` as the move left it (None: unset).
    ``notes``: what the patch cannot do (e.g. a standalone DataVolume that Git also holds)."""

    namespace: str
    vm: str
    owners: tuple[str, ...]
    volumes: tuple[WriteBackVolume, ...]
    patch: tuple[Mapping[str, Any], ...]
    strategy: str | None = None
    notes: tuple[str, ...] = ()
