"""Which VM may start next when up to N move at once (``apply --parallel N``): a pure function
of the lanes in flight, the migrations the cluster runs, and KubeVirt's limits.

A live move hands its VM to KubeVirt's workload updater, whose migration then needs a slot in
virt-controller: at most ``parallelMigrationsPerCluster`` (default 5) migrations run in the
cluster and at most ``parallelOutboundMigrationsPerNode`` (default 2) leave one node; a
migration beyond either waits Pending in virt-controller's queue
(pkg/virt-controller/watch/migration: ``handleTargetPodCreation``, ``findRunningMigrations``,
``outboundMigrationsOnNode``), where our deadline would run on a migration that is not moving.
So a live move starts only when a slot is free *now*, counting every unfinished migration the
cluster shows (anyone's: they compete for the same slots, and counting a Pending one too is
the safe side) and our own live lanes whose migration virt-controller has not created yet (the
workload updater creates it after our patch). An offline move (a CDI clone) needs a lane only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.model.journal import Flow

DEFAULT_PER_CLUSTER = 5  # KubeVirt's ParallelMigrationsPerClusterDefault
DEFAULT_PER_NODE = 2  # KubeVirt's ParallelOutboundMigrationsPerNodeDefault


@dataclass(frozen=True)
class MigrationLimits:
    """KubeVirt's migration limits (``spec.configuration.migrations`` of the KubeVirt CR)."""

    per_cluster: int = DEFAULT_PER_CLUSTER
    per_node: int = DEFAULT_PER_NODE

    @classmethod
    def of_kubevirt(cls, kubevirt: Mapping[str, Any] | None) -> MigrationLimits:
        """The limits a KubeVirt CR sets; KubeVirt's defaults for what it leaves out (or for no
        CR at all). A value that is not a positive integer is read as the default: virt-api
        would have refused it, and the defaults are what virt-controller then runs with."""
        spec = (kubevirt or {}).get("spec")
        configuration = spec.get("configuration") if isinstance(spec, Mapping) else None
        found = configuration.get("migrations") if isinstance(configuration, Mapping) else None
        migrations: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        return cls(
            per_cluster=_positive(
                migrations.get("parallelMigrationsPerCluster"), DEFAULT_PER_CLUSTER
            ),
            per_node=_positive(
                migrations.get("parallelOutboundMigrationsPerNode"), DEFAULT_PER_NODE
            ),
        )


def _positive(value: object, default: int) -> int:
    return (
        value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default
    )


@dataclass(frozen=True)
class Migrating:
    """A VMI that migrates (an unfinished migration) or is about to (our live lane before
    virt-controller created its migration): which VMI, and the node it leaves."""

    namespace: str
    vmi: str
    source_node: str


@dataclass(frozen=True)
class Candidate:
    """A VM waiting for a lane: its flow, and for a live move the node its VMI runs on."""

    namespace: str
    name: str
    flow: Flow
    node: str = ""


@dataclass(frozen=True)
class Wait:
    """Why a candidate cannot start now (a sentence for progress output)."""

    candidate: Candidate
    reason: str


def next_to_start(
    waiting: Sequence[Candidate],
    *,
    lanes: int,
    busy: int,
    migrating: Iterable[Migrating],
    limits: MigrationLimits,
) -> tuple[Candidate | None, tuple[Wait, ...]]:
    """The first of ``waiting`` (in their order) that may start now, and why each one before it
    waits. None when no lane is free (``busy >= lanes``) or no candidate fits.

    ``migrating`` lists the cluster's unfinished migrations and our live lanes; one VMI counted
    once however many of those name it (our lane and the migration it caused are one)."""
    if busy >= lanes:
        return None, ()
    by_vmi = {(m.namespace, m.vmi): m.source_node for m in migrating}
    running = len(by_vmi)
    per_node = Counter(by_vmi.values())
    waits: list[Wait] = []
    for candidate in waiting:
        if candidate.flow is Flow.OFFLINE:
            return candidate, tuple(waits)
        if running >= limits.per_cluster:
            waits.append(
                Wait(
                    candidate,
                    f"KubeVirt runs {running} migration(s), its limit "
                    f"(parallelMigrationsPerCluster {limits.per_cluster})",
                )
            )
        elif per_node[candidate.node] >= limits.per_node:
            waits.append(
                Wait(
                    candidate,
                    f"{per_node[candidate.node]} migration(s) leave node "
                    f"{candidate.node or '?'}, KubeVirt's limit "
                    f"(parallelOutboundMigrationsPerNode {limits.per_node})",
                )
            )
        else:
            return candidate, tuple(waits)
    return None, tuple(waits)
