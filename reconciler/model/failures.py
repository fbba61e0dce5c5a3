"""Why a move stopped short: every failure id `apply` and `cancel` give, in one catalog. Pure.

The id is an outcome's ``rule``, a rolled-back journal's ``rollback.rule``, a last-migration
record's ``rule`` and the ``vmstorage.dev/rule`` label of the Event about it: stable strings
(``Failure`` is a ``StrEnum``, so an id compares and serialises as its text). The diff's rules
(why a VM is blocked) are ``diff.catalog``'s; these are what happened to a move once started.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Failure(enum.StrEnum):
    # the move as a whole
    TIMEOUT = "timeout"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    RENDER_FAILED = "render-failed"
    JOURNAL_UNREADABLE = "journal-unreadable"
    JOURNAL_REFUSED = "journal-refused"
    # the VM
    VM_DELETED = "vm-deleted"
    VM_CHANGED = "vm-changed"
    VM_START_FAILED = "vm-start-failed"
    SOURCE_CHANGED = "source-changed"
    STOP_REFUSED = "stop-refused"
    START_REFUSED = "start-refused"
    SWAP_REFUSED = "swap-refused"
    REVERT_REFUSED = "revert-refused"
    RECOVERY_REFUSED = "recovery-refused"
    # the destinations
    TARGET_REFUSED = "target-refused"
    TARGET_TAKEN = "target-taken"
    TARGET_DELETED = "target-deleted"
    TARGET_IN_USE = "target-in-use"
    TARGET_WAITS_FOR_CONSUMER = "target-waits-for-consumer"
    STORAGE_CLASS_DELETED = "storage-class-deleted"
    COPY_FAILED = "copy-failed"
    # KubeVirt's volume migration
    MIGRATION_FAILED = "migration-failed"
    MIGRATION_CANCELLED = "migration-cancelled"
    MIGRATION_REFUSED = "migration-refused"
    RESTART_REQUIRED = "restart-required"
    MANUAL_RECOVERY_REQUIRED = "manual-recovery-required"
    VMI_RESTARTED = "vmi-restarted"
    ROLLBACK_TIMEOUT = "rollback-timeout"
    # the end
    VERIFY_FAILED = "verify-failed"


FAILURES: Mapping[Failure, str] = {
    Failure.TIMEOUT: "The move ran past its deadline (the plan's timeout, else 15 minutes plus "
    "a minute per GiB), or a wait of a step did.",
    Failure.INTERRUPTED: "SIGTERM, Ctrl-C or a lost Lease stopped the run; the journal is "
    "kept and the next run resumes the move.",
    Failure.CANCELLED: "`cancel` rolled the move back.",
    Failure.RENDER_FAILED: "The templates could not render the move right before it started.",
    Failure.JOURNAL_UNREADABLE: "The journal annotation is not one this version can read; "
    "left for a human.",
    Failure.JOURNAL_REFUSED: "The journal asks for what a move of this VM never does "
    "(``apply.trust``); left for a human.",
    Failure.VM_DELETED: "The VM was deleted during the move; what the move created is deleted.",
    Failure.VM_CHANGED: "Someone else changed what a step was about to change; nothing was "
    "overwritten.",
    Failure.VM_START_FAILED: "The VM does not start again after an offline move.",
    Failure.SOURCE_CHANGED: "The stopped VM changed or ran during the offline copy: the copy "
    "may miss writes, so it is not used.",
    Failure.STOP_REFUSED: "The API server refused the patch that stops the VM.",
    Failure.START_REFUSED: "The API server refused the patch that restores the run strategy.",
    Failure.SWAP_REFUSED: "The API server refused the swap of the volumes.",
    Failure.REVERT_REFUSED: "The API server refused the revert of the volumes (or of the "
    "strategy we added).",
    Failure.RECOVERY_REFUSED: "The API server refused the removal of updateVolumesStrategy "
    "after a copy that finished while its VMI went away.",
    Failure.TARGET_REFUSED: "The API server refused a destination DataVolume.",
    Failure.TARGET_TAKEN: "A destination's name is taken by a DataVolume that is not this move's.",
    Failure.TARGET_DELETED: "A destination DataVolume was deleted during the move.",
    Failure.TARGET_IN_USE: "A destination to delete in a rollback is still used by the VM.",
    Failure.TARGET_WAITS_FOR_CONSUMER: "A live destination waits for a first consumer on a "
    "class without CDI populators.",
    Failure.STORAGE_CLASS_DELETED: "The destination StorageClass was deleted during the move.",
    Failure.COPY_FAILED: "CDI's copy failed, or restarted too often.",
    Failure.MIGRATION_FAILED: "KubeVirt's volume migration failed too many times.",
    Failure.MIGRATION_CANCELLED: "The VM's volumes were rewritten during the migration, which "
    "KubeVirt treats as a cancellation.",
    Failure.MIGRATION_REFUSED: "KubeVirt refused the volume change.",
    Failure.RESTART_REQUIRED: "KubeVirt refused the volume update (RestartRequired).",
    Failure.MANUAL_RECOVERY_REQUIRED: "The VMI went away before the copy ended "
    "(ManualRecoveryRequired).",
    Failure.VMI_RESTARTED: "The VM was restarted during the live move.",
    Failure.ROLLBACK_TIMEOUT: "KubeVirt did not confirm the cancellation in time.",
    Failure.VERIFY_FAILED: "The moved VM is not as a finished move leaves it.",
}
"""Every failure id, with what it means."""


def _complete() -> None:
    missing = sorted(set(Failure) - set(FAILURES))
    if missing:
        raise RuntimeError(f"failure ids without a description: {', '.join(missing)}")


_complete()
