"""What `apply` did: one ``Outcome`` per VM it acted on, gathered in an ``ApplyReport``. Values.

``result``: ``Succeeded`` (moved and verified), ``RolledBack`` (failed, restored, what it
created deleted), ``Failed`` (the rollback itself could not finish, or the VM was deleted: the
journal, if any, is kept and ``status`` shows it), ``Interrupted`` (SIGTERM or a lost Lease:
the journal is kept, the next run resumes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from reconciler.model.journal import Flow
from reconciler.model.verdict import EmptyPlan, VMVerdict
from reconciler.model.writeback import WriteBack


class Result(enum.StrEnum):
    """How a VM's move ended (a ``StrEnum``: documents and metrics show its text)."""

    SUCCEEDED = "Succeeded"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"
    INTERRUPTED = "Interrupted"


SUCCEEDED = Result.SUCCEEDED
ROLLED_BACK = Result.ROLLED_BACK
FAILED = Result.FAILED
INTERRUPTED = Result.INTERRUPTED


@dataclass(frozen=True)
class Outcome:
    """``flow`` is None when no journal could be read (a refused or unreadable journal, a move
    that could not be rendered)."""

    migration_id: str
    plan: str
    flow: Flow | None
    result: Result
    rule: str = ""
    reason: str = ""
    seconds: float = 0.0
    steps: tuple[tuple[str, float], ...] = ()  # (step, seconds) in the order taken
    resumed: bool = False
    commit: str | None = None
    volumes: tuple[tuple[str, str, str], ...] = ()  # (volume, source, target)
    namespace: str = ""
    vm: str = ""
    write_back: WriteBack | None = None  # a GitOps-managed VM that moved: what to commit

    def of(self, namespace: str, vm: str) -> Outcome:
        return replace(self, namespace=namespace, vm=vm)


@dataclass(frozen=True)
class ApplyReport:
    """``outcomes`` in the order taken; ``verdicts`` the plan as judged at the start (blocked
    VMs and those left for later show there); ``pending`` VMs not started because of
    ``--max-vms`` or the circuit breaker; ``outside_window`` because their window was shut;
    ``empty_plans`` the plans that selected no VM."""

    outcomes: tuple[Outcome, ...] = ()
    verdicts: tuple[VMVerdict, ...] = ()
    pending: tuple[str, ...] = ()
    outside_window: tuple[str, ...] = ()
    stopped_early: str = ""  # why the run stopped before the end ("" = it did not)
    commit: str | None = None
    requests: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    # plans that selected no VM, with why (``diff.Diff.empty_plans``; exit 7)
    empty_plans: tuple[EmptyPlan, ...] = ()
    backing_off: tuple[str, ...] = ()  # VMs (also in ``pending``) whose last move failed lately

    @property
    def failed(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if o.result in (ROLLED_BACK, FAILED))
