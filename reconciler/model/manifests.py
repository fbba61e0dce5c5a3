"""The shapes render produces and apply will send, as TypedDicts, so mypy checks them.

Render parses each template's output, checks it at run time (kind, names, sizes, patch shape)
and only then returns it as one of these types; everything downstream (report, the server dry
run, apply) sees typed manifests, never ``Any``. Stdlib only.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypeAlias, TypedDict

JsonValue: TypeAlias = str | int | float | bool | list["JsonValue"] | dict[str, "JsonValue"] | None
JsonObject: TypeAlias = dict[str, JsonValue]
VMObject: TypeAlias = dict[str, Any]
"""A whole VirtualMachine as JSON: KubeVirt's schema, not ours to type; shown, never sent."""

PatchVerb = Literal["add", "remove", "replace", "move", "copy", "test"]


class PatchOp(TypedDict):
    """One RFC 6902 operation. ``value`` for add/replace/test; ``from`` (move/copy) is never
    rendered by our templates and refused by the rollback."""

    op: PatchVerb
    path: str
    # Any JSON (a claim name, a whole volume entry): its shape is KubeVirt's VM schema, which
    # render checks by applying the patch to the observed VM, not by a static type.
    value: NotRequired[Any]


class ObjectMeta(TypedDict):
    name: str
    namespace: str
    labels: NotRequired[dict[str, str]]
    annotations: NotRequired[dict[str, str]]


class DataVolumeSpec(TypedDict):
    """``source`` is ``{blank: {}}`` (live) or ``{pvc: {namespace, name}}`` (offline); CDI's
    ``storage`` API (or the older ``pvc``) holds ``storageClassName`` and the size."""

    source: dict[str, Any]
    storage: NotRequired[dict[str, Any]]
    pvc: NotRequired[dict[str, Any]]


class DataVolumeManifest(TypedDict):
    """A CDI DataVolume to create (``cdi.kubevirt.io/v1beta1``): ``spec.source`` is blank (live)
    or a PVC clone (offline); ``spec.storage`` (or ``spec.pvc``) names the target class."""

    apiVersion: Literal["cdi.kubevirt.io/v1beta1"]
    kind: Literal["DataVolume"]
    metadata: ObjectMeta
    spec: DataVolumeSpec


class VMManifests(TypedDict):
    """What ``plan --show-manifests`` shows for one VM: the DataVolumes, then the patch."""

    dataVolumes: list[DataVolumeManifest]
    vmPatch: list[PatchOp]
