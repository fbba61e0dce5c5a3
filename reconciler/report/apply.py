"""What `apply` and `status` print: text for people, ``ApplyReport``/``Status`` documents for
machines. Pure: values in, strings and plain dicts out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.model.journal import Journal, LastMigration
from reconciler.model.outcome import ApplyReport, Outcome
from reconciler.model.verdict import Action, Finding
from reconciler.report.documents import empty_plan_doc, finding_doc, vm_doc
from reconciler.report.text import finding_line, first_to_do, nothing_selected_lines, table
from reconciler.report.writeback import write_back_doc, write_back_text

API_VERSION = "vmstorage.dev/v1alpha1"


def _outcome_doc(o: Outcome) -> dict[str, Any]:
    return {
        "namespace": o.namespace,
        "name": o.vm,
        "plan": o.plan,
        "migrationId": o.migration_id,
        "flow": str(o.flow or ""),  # plain text: YAML does not take an enum
        "result": str(o.result),
        "rule": str(o.rule) if o.rule else None,
        "reason": o.reason or None,
        "seconds": round(o.seconds, 3),
        "resumed": o.resumed,
        "commit": o.commit,
        "volumes": [{"volume": v, "source": s, "target": t} for v, s, t in o.volumes],
        "steps": [{"step": s, "seconds": round(t, 3)} for s, t in o.steps],
        "writeBack": write_back_doc(o.write_back) if o.write_back else None,
    }


def summary(report: ApplyReport) -> dict[str, int]:
    counts = {"succeeded": 0, "rolledBack": 0, "failed": 0, "interrupted": 0}
    keys = {
        "Succeeded": "succeeded",
        "RolledBack": "rolledBack",
        "Failed": "failed",
        "Interrupted": "interrupted",
    }
    for o in report.outcomes:
        counts[keys[o.result]] += 1
    counts["blocked"] = sum(1 for v in report.verdicts if v.action is Action.BLOCKED)
    counts["pending"] = len(report.pending)
    counts["outsideWindow"] = len(report.outside_window)
    counts["plansSelectingNothing"] = len(report.empty_plans)
    return counts


def apply_document(report: ApplyReport) -> dict[str, Any]:
    """The ``ApplyReport`` document (`apply -o json|yaml`)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "ApplyReport",
        "commit": report.commit,
        "summary": summary(report),
        "outcomes": [_outcome_doc(o) for o in report.outcomes],
        "blocked": [vm_doc(v) for v in report.verdicts if v.action is Action.BLOCKED],
        "pending": list(report.pending),
        "backingOff": list(report.backing_off),
        "outsideWindow": list(report.outside_window),
        "stoppedEarly": report.stopped_early or None,
        "notes": list(report.notes),
        "nothingSelected": [empty_plan_doc(e) for e in report.empty_plans],
    }


def apply_text(report: ApplyReport) -> str:
    lines: list[str] = []
    for o in report.outcomes:
        resumed = ", resumed" if o.resumed else ""
        head = f"VM {o.namespace}/{o.vm}: {o.result} ({o.flow or '-'}, {o.seconds:.1f}s{resumed}"
        if o.migration_id:
            head += f", move {o.migration_id}"
        if o.commit and o.commit != report.commit:
            head += f", started at commit {o.commit[:12]}"
        head += ")"
        if o.reason:
            head += f": {o.reason} [{o.rule}]"
        lines.append(head)
        rows = [[v, s, "->", t] for v, s, t in o.volumes]
        if rows:
            lines.append(table(rows, indent="  ").rstrip("\n"))
        if o.write_back:
            lines.append(write_back_text(o.write_back).rstrip("\n"))
    for verdict in report.verdicts:
        if verdict.action is Action.BLOCKED:
            lines.append(f"VM {verdict.namespace}/{verdict.name}: {first_to_do(verdict)}")
    backing_off = set(report.backing_off)
    for key in report.pending:
        if key not in backing_off:
            lines.append(f"VM {key}: pending (left for the next run)")
    lines += list(report.notes)  # e.g. "VM ns/x: backing off until ... after 2 failed move(s)"
    for key in report.outside_window:
        lines.append(f"VM {key}: waiting for its maintenance window")
    if report.stopped_early:
        lines.append(f"Stopped early: {report.stopped_early}")
    lines += nothing_selected_lines(report.empty_plans)
    s = summary(report)
    if report.commit:
        lines.append(f"Plans at commit {report.commit}.")
    lines.append(
        f"Apply: {len(report.outcomes)} VM(s) acted on: {s['succeeded']} succeeded, "
        f"{s['rolledBack']} rolled back, {s['failed']} failed; {s['blocked']} blocked, "
        f"{s['pending']} pending, {s['outsideWindow']} outside their window"
        + (f"; {len(report.empty_plans)} plan(s) selected nothing." if report.empty_plans else ".")
    )
    return "\n".join(lines) + "\n"


StatusEntry = tuple[str, str, Journal | None, LastMigration | None, str, Finding | None]
"""What ``engine.status`` returns for a VM: (namespace, VM, open journal, last migration
record, why the journal is unreadable, and for a VM a plan names that does not exist: its
``vm-not-found`` finding, naming the VM it probably meant)."""


def status_rows(entries: Sequence[StatusEntry]) -> list[list[str]]:
    """Rows of the `status` table; a VM that does not exist is ``missing``, with the VM it
    probably meant."""
    rows = [["VM", "STATE", "MOVE", "FLOW", "PLAN", "SINCE", "DETAIL"]]
    for namespace, vm, journal, last, error, missing in entries:
        name = f"{namespace}/{vm}"
        if missing is not None:
            rows.append([name, "missing", "-", "-", "-", "-", finding_line(missing)])
        if error:
            rows.append([name, "journal unreadable", "-", "-", "-", "-", error])
        if journal is not None:
            state = f"{'rolling back' if journal.rolling_back else 'moving'} ({journal.step.value})"
            detail = journal.rollback_reason or ", ".join(
                f"{v.volume} {v.source} -> {v.target}" for v in journal.volumes
            )
            rows.append(
                [name, state, journal.id, journal.flow.value, journal.plan, journal.started, detail]
            )
        if last is not None:
            detail = last.reason or ", ".join(f"{k}={v}" for k, v in last.volumes.items())
            rows.append(
                [
                    name,
                    f"last: {last.result}",
                    last.id,
                    last.flow.value,
                    last.plan,
                    last.finished,
                    detail,
                ]
            )
    return rows


def status_document(entries: Sequence[StatusEntry]) -> dict[str, Any]:
    vms: list[Mapping[str, Any]] = []
    for namespace, vm, journal, last, error, missing in entries:
        vms.append(
            {
                "namespace": namespace,
                "name": vm,
                "exists": missing is None,
                "missing": finding_doc(missing) if missing is not None else None,
                "journalError": error or None,
                "inFlight": None
                if journal is None
                else {
                    "migrationId": journal.id,
                    "plan": journal.plan,
                    "flow": journal.flow.value,
                    "step": journal.step.value,
                    "started": journal.started,
                    "deadline": journal.deadline,
                    "rollingBack": journal.rolling_back,
                    "reason": journal.rollback_reason or None,
                    "commit": journal.commit,
                    "volumes": [
                        {"volume": v.volume, "source": v.source, "target": v.target}
                        for v in journal.volumes
                    ],
                },
                "lastMigration": None
                if last is None
                else {
                    "migrationId": last.id,
                    "plan": last.plan,
                    "flow": last.flow.value,
                    "result": last.result,
                    "started": last.started,
                    "finished": last.finished,
                    "rule": last.rule or None,
                    "reason": last.reason or None,
                    "commit": last.commit,
                    "volumes": dict(last.volumes),
                },
            }
        )
    return {"apiVersion": API_VERSION, "kind": "Status", "vms": vms}
