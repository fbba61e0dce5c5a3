"""Faults a test sets on the real engine's node side through the API: the node side runs in
its own process, so an in-process ``Faults.add`` cannot reach it, and an
annotation cannot be put on an object that does not exist yet (the destination DataVolume
``apply`` is about to create).

ConfigMap ``kube-system/testenv-faults``: each data key ``<plural>.<namespace>.<name>``
(e.g. ``datavolumes.apps.root-mig-x1y2z``) holds ``<action>[:N]`` as the fault annotation
does (``fail``, ``fail-times:3``, ``fatal``, ``stall``). ``FaultFeed`` mirrors it into the
node side's ``Faults``: a key added or changed arms its fault afresh, a key removed clears
the object's faults. A key of ``SETTINGS`` (no dots) sets a node-side setting instead, for
as long as it is there: ``copy-seconds-per-gib`` (how long a copy or a migration takes per
GiB: the ``--copy-seconds-per-gib`` the node side started with is back once the key goes).
After each sync it records the ConfigMap's resourceVersion in ConfigMap
``kube-system/testenv-faults-seen`` (key ``resourceVersion``), so a test can wait until the
node side has armed what it wrote (``NodeFaults`` in tests/support does).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any, ClassVar

from testenv.node.runtime import (
    RESOURCES,
    Controller,
    Fault,
    Key,
    ResourceInfo,
    plural_for,
)

log = logging.getLogger(__name__)

CONFIGMAPS = "configmaps"
RESOURCES.setdefault(CONFIGMAPS, ResourceInfo("v1", "ConfigMap", True))

NAMESPACE = "kube-system"
FAULTS = "testenv-faults"
SEEN = "testenv-faults-seen"
COPY_SECONDS_PER_GIB = "copy-seconds-per-gib"
SETTINGS = frozenset({COPY_SECONDS_PER_GIB})
"""The ConfigMap's keys that are node-side settings, not faults (see the module docstring)."""


def fault_key(kind: str, namespace: str, name: str) -> str:
    """The ConfigMap key of an object's fault."""
    return f"{plural_for(kind)}.{namespace}.{name}"


def parse_key(key: str) -> tuple[str, str, str] | None:
    """``(plural, namespace, name)`` of a key, None if it names no known resource."""
    plural, _, rest = key.partition(".")
    namespace, _, name = rest.partition(".")
    if plural not in RESOURCES or not namespace or not name:
        return None
    return plural, namespace, name


class FaultFeed(Controller):
    """Mirrors ``kube-system/testenv-faults`` into ``sim.faults`` (see the module docstring)."""

    watches: ClassVar[tuple[str, ...]] = (CONFIGMAPS,)

    def __init__(self, sim: Any) -> None:
        super().__init__(sim)
        self._armed: dict[str, str] = {}
        self._started_with = sim.config  # the settings a removed setting key goes back to

    def keys_for(self, resource: str, obj: dict[str, Any]) -> Iterable[Key]:
        meta = obj.get("metadata") or {}
        if (meta.get("namespace"), meta.get("name")) == (NAMESPACE, FAULTS):
            return [(CONFIGMAPS, NAMESPACE, FAULTS)]
        return []

    def _settings(self, wanted: dict[str, str]) -> None:
        """The setting keys of ``wanted`` applied (absent: as the node side started)."""
        rate = self._started_with.copy_seconds_per_gib
        if COPY_SECONDS_PER_GIB in wanted:
            try:
                rate = float(wanted[COPY_SECONDS_PER_GIB])
            except ValueError:
                log.warning("ignoring %s=%r: not a number", COPY_SECONDS_PER_GIB,
                            wanted[COPY_SECONDS_PER_GIB])
        if rate != self.sim.config.copy_seconds_per_gib:
            self.sim.config = dataclasses.replace(self.sim.config, copy_seconds_per_gib=rate)
            log.info("copy seconds per GiB: %s", rate)

    def reconcile(self, key: Key) -> None:
        config = self.sim.store.get(CONFIGMAPS, NAMESPACE, FAULTS)
        wanted: dict[str, str] = dict((config or {}).get("data") or {})
        self._settings(wanted)
        for entry in (set(self._armed) | set(wanted)) - SETTINGS:
            if self._armed.get(entry) == wanted.get(entry):
                continue
            target = parse_key(entry)
            if target is None:
                log.warning("ignoring fault key %r: not <plural>.<namespace>.<name>", entry)
                continue
            self.sim.faults.clear(*target)
            if entry in wanted:
                try:
                    self.sim.faults.add(*target, Fault.parse(wanted[entry]))
                except ValueError:
                    log.warning("ignoring malformed fault %r=%r", entry, wanted[entry])
                    continue
                log.info("armed fault %s on %s", wanted[entry], entry)
            else:
                log.info("cleared faults of %s", entry)
        self._armed = wanted
        version = str(((config or {}).get("metadata") or {}).get("resourceVersion") or "")
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": SEEN, "namespace": NAMESPACE},
            "data": {"resourceVersion": version},
        }
        # server-side apply: creates the ConfigMap the first time, updates it after
        self.sim.client.request(
            "PATCH",
            RESOURCES[CONFIGMAPS].url(CONFIGMAPS, NAMESPACE, SEEN),
            body=body,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": "testenv-node-side", "force": "true"},
        )
