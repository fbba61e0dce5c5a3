"""Run-state rules: the plan's mode and allowStop against the VM (Effect BLOCK), and the
decision they lead to. Pure."""

from __future__ import annotations

from reconciler.diff.context import RunContext
from reconciler.diff.rule import Rule, evaluate, rule_ids
from reconciler.model.plan import Mode
from reconciler.model.verdict import Effect, Finding, Route


def live_required(ctx: RunContext) -> str | None:
    if ctx.mode is not Mode.LIVE or not ctx.live_blockers:
        return None
    return (
        f"the plan's mode is Live, but the VM cannot move live ({rule_ids(ctx.live_blockers)}): "
        "fix that, or set mode: Auto to move offline when allowed"
    )


def offline_needs_stop(ctx: RunContext) -> str | None:
    if ctx.mode is not Mode.OFFLINE or not ctx.running or ctx.allow_stop:
        return None
    return (
        "the plan's mode is Offline and the VM is running: set allowStop: true so the "
        "reconciler may stop it (its run strategy is restored afterwards), or stop it yourself"
    )


def stop_not_allowed(ctx: RunContext) -> str | None:
    if ctx.mode is not Mode.AUTO or not ctx.running or ctx.allow_stop or not ctx.live_blockers:
        return None
    return (
        f"the VM is running and cannot move live ({rule_ids(ctx.live_blockers)}): set "
        "allowStop: true to let the reconciler stop it and move the disks offline, or fix that"
    )


def offline_impossible(ctx: RunContext) -> str | None:
    goes_offline = ctx.mode is Mode.OFFLINE or (ctx.mode is Mode.AUTO and ctx.live_blockers)
    if not goes_offline or not ctx.offline_blockers:
        return None
    return (
        f"the VM would move offline, but an offline copy is impossible "
        f"({rule_ids(ctx.offline_blockers)}); see that reason"
    )


RUN_RULES: tuple[Rule[RunContext], ...] = (
    Rule("live-required", Effect.BLOCK, "mode: Live, but live is impossible.", check=live_required),
    Rule(
        "offline-needs-stop",
        Effect.BLOCK,
        "mode: Offline on a running VM without allowStop.",
        check=offline_needs_stop,
    ),
    Rule(
        "stop-not-allowed",
        Effect.BLOCK,
        "A running VM cannot move live and allowStop is false.",
        check=stop_not_allowed,
    ),
    Rule(
        "offline-impossible",
        Effect.BLOCK,
        "The VM must move offline, but a volume cannot be cloned offline.",
        check=offline_impossible,
    ),
)


def decide(ctx: RunContext) -> tuple[Route, tuple[Finding, ...]]:
    """LIVE or OFFLINE (no findings), or BLOCKED with the run-state findings."""
    findings = evaluate(RUN_RULES, ctx)
    if findings:
        return Route.BLOCKED, findings
    live = ctx.mode is not Mode.OFFLINE and not ctx.live_blockers
    return (Route.LIVE if live else Route.OFFLINE), ()
