"""Reports as text for people: a table per VM, its reasons, a summary line. Pure; the only place
where findings become sentences (``finding_line``), byte for byte what ``plan`` always printed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from reconciler.model.manifests import VMManifests
from reconciler.model.quantity import human_size
from reconciler.model.verdict import Action, EmptyPlan, Finding, VMVerdict, VolumeVerdict
from reconciler.report.documents import PlanKey, dump, summary

_ACTION_WORD = {
    Action.IN_SYNC: "in sync",
    Action.MOVE_LIVE: "live",
    Action.MOVE_OFFLINE: "offline",
    Action.BLOCKED: "blocked",
    Action.IN_PROGRESS: "in progress",
}


def finding_line(finding: Finding) -> str:
    """``"volume data: <message> [rule-id]"`` (no volume prefix for VM-wide findings)."""
    where = f"volume {finding.volume}: " if finding.volume else ""
    return f"{where}{finding.message} [{finding.rule}]"


def summary_line(verdicts: Sequence[VMVerdict], empty_plans: Sequence[EmptyPlan] = ()) -> str:
    counts = summary(verdicts, empty_plans)
    parts = [
        f"{counts['live']} live",
        f"{counts['offline']} offline",
        f"{counts['blocked']} blocked",
        f"{counts['inProgress']} in progress",
        f"{counts['inSync']} in sync",
    ]
    moving = f"{counts['volumesToMove']} volume(s), {human_size(counts['bytesToMove'])} to move"
    empty = counts["plansSelectingNothing"]
    nothing = f"; {empty} plan(s) selected nothing" if empty else ""
    return f"Plan: {counts['vms']} VM(s): {', '.join(parts)}; {moving}{nothing}."


def first_to_do(verdict: VMVerdict) -> str:
    """A blocked VM in one line, for logs (`apply`): every rule id, then the first reason
    (``catalog.FIX_ORDER``: what to fix first) with what to do."""
    ids = list(dict.fromkeys(f.rule for f in verdict.findings))
    if not verdict.findings:
        return "blocked"
    first = verdict.findings[0]
    where = f"volume {first.volume}: " if first.volume else ""
    return f"blocked [{', '.join(ids)}]; first: {where}{first.message}"


def table(rows: Sequence[Sequence[str]], *, indent: str = "") -> str:
    """Left-aligned columns separated by two spaces; the first row is the header."""
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    return "\n".join(lines)


def _vm_heading(verdict: VMVerdict, window: Mapping[str, Any] | None) -> str:
    state = "missing" if not verdict.exists else "running" if verdict.running else "stopped"
    action = _ACTION_WORD[verdict.action]
    extra = ", stop required" if verdict.stop_required else ""
    if window is not None and verdict.action in (Action.MOVE_LIVE, Action.MOVE_OFFLINE):
        extra += (
            f"; window {window['window']} open until {window['closesAt']}"
            if window["open"]
            else f"; window {window['window']} closed, opens {window['opensAt']}"
        )
    return f"VM {verdict.namespace}/{verdict.name} ({state}, plan {verdict.plan}): {action}{extra}"


def _volume_row(vol: VolumeVerdict) -> list[str]:
    change = (
        f"{vol.from_class or '-'} -> {vol.to_class}"
        if vol.action is not Action.IN_SYNC
        else vol.to_class
    )
    # Full reasons are listed under the table; the column only names the rule.
    detail = f"[{vol.rule}]" if vol.reason else (f"-> {vol.target_name}" if vol.target_name else "")
    return [
        vol.volume,
        vol.claim,
        change,
        human_size(vol.size_bytes or None),
        _ACTION_WORD[vol.action],
        detail,
    ]


def plan_text(
    verdicts: Sequence[VMVerdict],
    *,
    verbose: bool = False,
    windows: Mapping[PlanKey, Mapping[str, Any]] | None = None,
    empty_plans: Sequence[EmptyPlan] = (),
) -> str:
    """A per-VM diff for people. In-sync VMs are listed in one line unless ``verbose``; a move
    under a plan with a maintenance window says whether the window is open; a VM that does not
    exist says so (no volume table); each plan that selects nothing says why."""
    blocks = []
    quiet = []
    for verdict in verdicts:
        if verdict.action is Action.IN_SYNC and not verbose:
            quiet.append(f"{verdict.namespace}/{verdict.name}")
            continue
        rows = [["VOLUME", "CLAIM", "STORAGECLASS", "SIZE", "ACTION", "DETAIL"]]
        rows += [_volume_row(v) for v in verdict.volumes]
        window = (windows or {}).get((verdict.namespace, verdict.plan))
        lines = [_vm_heading(verdict, window)]
        lines += [table(rows, indent="  ")] if verdict.volumes or verdict.exists else []
        lines += [f"  ! {finding_line(f)}" for f in verdict.findings]
        blocks.append("\n".join(lines))
    if quiet:
        blocks.append(f"In sync: {', '.join(quiet)}")
    if empty_plans:
        blocks.append("\n".join(nothing_selected_lines(empty_plans)))
    blocks.append(summary_line(verdicts, empty_plans))
    return "\n\n".join(blocks) + "\n"


def nothing_selected_lines(empty_plans: Sequence[EmptyPlan]) -> list[str]:
    """One line per plan that selects nothing: the plan, why, what to do, the rule id."""
    return [f"! {finding_line(e.finding)}" for e in empty_plans]


def manifests_text(manifests: Mapping[tuple[str, str], VMManifests]) -> str:
    """``--show-manifests`` for people: per VM, its DataVolumes then its JSON patch, as YAML."""
    parts = []
    for (namespace, name), doc in sorted(manifests.items()):
        parts.append(f"\n# --- VM {namespace}/{name}: DataVolumes to create")
        parts += ["---\n" + dump(dict(dv), "yaml") for dv in doc["dataVolumes"]]
        parts.append(f"# --- VM {namespace}/{name}: JSON patch (application/json-patch+json)")
        parts.append(dump({"patch": doc["vmPatch"]}, "yaml"))
    return "\n".join(parts)
