"""Crash injection at step boundaries, for the crash-at-every-step tests. Test-only.

``VMSR_FAILPOINT=<when>:<step>`` (``when`` is ``before`` or ``after``; ``step`` a journal step
value, optionally prefixed ``live/`` or ``offline/``, e.g. ``after:swap`` or
``offline/before:start``) makes the process SIGKILL itself at that boundary: before means the
journal naming the step is written and the step not taken; after means the step is done and the
journal not yet advanced. Unset in production: one environment lookup per step.
"""

from __future__ import annotations

import os
import signal

from reconciler.model.journal import Flow, Step

ENV = "VMSR_FAILPOINT"


def hit(when: str, flow: Flow, step: Step) -> None:
    """SIGKILL this process if ``$VMSR_FAILPOINT`` names this boundary."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    if wanted in (f"{when}:{step.value}", f"{flow.value}/{when}:{step.value}"):
        os.kill(os.getpid(), signal.SIGKILL)
