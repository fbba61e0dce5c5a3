"""A VM's run strategy, read one way for the whole product. Pure, stdlib only.

Upstream KubeVirt (``VirtualMachine.RunStrategy()`` in staging/src/kubevirt.io/api/core/v1/
types.go): ``spec.running: true`` is ``Always``, ``spec.running: false`` is ``Halted``, neither
field set is ``Halted``, and ``spec.runStrategy`` is taken as it is. KubeVirt's admission refuses
a VM that sets both; should one get here, ``runStrategy`` wins.

The diff reads the effective strategy (``RunStrategy.effective``); `apply` records the field the
VM uses (``RunStrategy.recorded``), so that a stop and a restore write the very field the VM
was on (a VM on the deprecated ``spec.running`` stays on it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ALWAYS = "Always"
HALTED = "Halted"
RUNNING_FIELD = "running:"
"""The prefix of a recorded strategy of a VM on ``spec.running`` (``running:true|false``)."""


@dataclass(frozen=True, slots=True)
class RunStrategy:
    """``effective``: the strategy KubeVirt acts on; ``on_running_field``: the VM sets the
    deprecated ``spec.running`` (and not ``spec.runStrategy``)."""

    effective: str
    on_running_field: bool = False

    @property
    def recorded(self) -> str:
        """What a journal records: the ``runStrategy`` value, or ``running:true`` /
        ``running:false`` for a VM on ``spec.running``."""
        if self.on_running_field:
            return f"{RUNNING_FIELD}{'true' if self.effective == ALWAYS else 'false'}"
        return self.effective


def run_strategy_of(spec: object) -> RunStrategy:
    """The run strategy of a VM's ``spec`` (anything but a mapping reads as an empty spec)."""
    fields: Mapping[str, object] = spec if isinstance(spec, Mapping) else {}
    strategy = fields.get("runStrategy")
    if strategy is not None:
        return RunStrategy(str(strategy))
    running = fields.get("running")
    if running is not None:
        return RunStrategy(ALWAYS if running else HALTED, on_running_field=True)
    return RunStrategy(HALTED)


def stopped_form(recorded: str) -> str:
    """The recorded strategy of a stopped VM, in the field ``recorded`` is in."""
    return f"{RUNNING_FIELD}false" if recorded.startswith(RUNNING_FIELD) else HALTED
