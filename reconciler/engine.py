"""The composition root: runs the stages and returns values. No argparse, no exit codes.

``plan`` is load -> observe -> diff -> render (-> server dry run), the whole of the ``plan``
command but its output: the CLI (``cli.plan``) prints what it returns and maps it to an exit
code, and the demo (``testenv/demo.py``) sends its manifests. ``apply`` will compose the same
stages with ``reconciler.apply``. Bad input raises ``UserError`` (nothing was changed), an
unreachable or refusing cluster ``ClusterError``; nothing else is expected.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.apply.cancel import Cancelled, cancel_move, moves_again_after
from reconciler.apply.context import Settings
from reconciler.apply.lease import DEFAULT_DURATION as DEFAULT_LEASE_DURATION
from reconciler.apply.lease import Lease, LeaseLost
from reconciler.apply.runner import Runner
from reconciler.apply.seam import Listener, Options
from reconciler.diff.catalog import vm_not_found
from reconciler.diff.judge import diff
from reconciler.gitsource import GitSpec, PlanSource, resolve
from reconciler.kube import resources
from reconciler.kube.client import Cluster
from reconciler.kube.connect import load_client
from reconciler.kube.kubeconfig import context_namespace
from reconciler.model import journal as journals
from reconciler.model import names
from reconciler.model.errors import ClusterError, Problem, UserError
from reconciler.model.journal import Journal, Step
from reconciler.model.live import Snapshot
from reconciler.model.manifests import VMManifests
from reconciler.model.outcome import ROLLED_BACK, ApplyReport, Outcome
from reconciler.model.plan import Plan
from reconciler.model.progress import tagged
from reconciler.model.verdict import Action, EmptyPlan, VMVerdict
from reconciler.observe.fetch import fetch
from reconciler.observe.view import View
from reconciler.pipeline import CHECKS, stages_for
from reconciler.plans.load import load_plans, read_plans
from reconciler.publish.metrics import JOB, Metrics
from reconciler.publish.reporting import Reporting
from reconciler.render.move import RenderedVM, render_vm
from reconciler.render.sandbox import TemplateSet, load_templates
from reconciler.render.targets import Targets, check_distinct_targets, plan_targets
from reconciler.report.apply import StatusEntry
from reconciler.report.documents import PlanKey, converged, window_states

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
"""Where progress for people goes (the CLI: stderr); never stdout, which stays a document."""

VMKey = tuple[str, str]  # (namespace, VM name)


def _quiet(message: str) -> None:
    """The default ``Progress``: say nothing."""


@dataclass(frozen=True)
class PlanResult:
    """What one ``plan`` found.

    ``verdicts``: one per VM the plans select, in (namespace, name) order, with each moved
    volume's destination name filled in. ``rendered``: per VM that will move, its full
    ``RenderedVM`` (when manifests were asked for) or just its checked ``Targets``.
    ``dry_run_errors``: the server's refusals (``server_dry_run``). ``windows``: maintenance
    window state per plan with one (``report.documents.window_states``). ``requests``: HTTP
    requests sent to observe the cluster, ``observe_seconds`` how long that took.
    """

    plans: tuple[Plan, ...]
    snapshot: Snapshot
    verdicts: tuple[VMVerdict, ...]
    rendered: Mapping[VMKey, RenderedVM | Targets]
    windows: Mapping[PlanKey, Mapping[str, Any]]
    requests: int
    observe_seconds: float
    dry_run_errors: tuple[str, ...] = ()
    server_dry_run: bool = field(default=False)
    commit: str | None = None  # the plans' commit (plan_source), when known
    empty_plans: tuple[EmptyPlan, ...] = ()  # plans that select no VM, with why (exit 7)

    @property
    def converged(self) -> bool:
        """Every selected VM is in sync: nothing left to do."""
        return converged(self.verdicts)

    @property
    def fully_rendered(self) -> dict[VMKey, RenderedVM]:
        """The VMs rendered with their manifests (all moving VMs when ``manifests=True``)."""
        return {k: v for k, v in self.rendered.items() if isinstance(v, RenderedVM)}

    @property
    def manifests(self) -> dict[VMKey, VMManifests]:
        """What ``--show-manifests`` shows: per VM, its DataVolumes and its JSON patch."""
        return {
            key: {"dataVolumes": list(vm.data_volumes), "vmPatch": list(vm.vm_patch)}
            for key, vm in self.fully_rendered.items()
        }


def plan(
    paths: Sequence[str | Path],
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    allowed_namespaces: frozenset[str] | None = None,
    namespace: str | None = None,
    templates_dir: Path | None = None,
    manifests: bool = False,
    server_dry_run: bool = False,
    progress: Progress = _quiet,
    now: datetime | None = None,
    git: GitSpec | None = None,
) -> PlanResult:
    """Load the plans under ``paths``, observe the cluster, diff and render; change nothing.

    ``manifests`` renders every moving VM's DataVolumes and patches (else only names, which is
    what keeps a preview of thousands of VMs fast); ``server_dry_run`` implies them and sends
    each with ``dryRun=All``. Raises ``UserError`` for bad plans, templates, kubeconfig or
    conflicts, ``ClusterError`` when the cluster cannot be observed. ``namespace`` is ``-n``
    (``load_plans``). ``git``: the plans are fetched from there (``plan_source``).
    """
    source = plan_source(paths, git, progress)
    plans = plans_for_run(
        source.paths,
        allowed_namespaces=allowed_namespaces,
        namespace=namespace,
        kubeconfig=kubeconfig,
        context=context,
        progress=progress,
    )
    templates = load_templates(templates_dir)
    cluster = Cluster(load_client(kubeconfig, context))

    started = time.monotonic()
    progress("Observing the cluster (one LIST per kind)...")
    snapshot = fetch(cluster, {p.namespace for p in plans})
    observed = time.monotonic() - started
    requests = cluster.requests
    progress(
        f"Observed {len(snapshot.vms)} VM(s), {len(snapshot.pvcs)} PVC(s) in "
        f"{observed:.1f}s ({requests} requests)."
    )

    namespaces = namespaces_if_needed(cluster, plans, snapshot)
    result = diff(plans, snapshot, allowed_namespaces=allowed_namespaces, namespaces=namespaces)
    if result.problems:
        raise UserError(list(result.problems))
    full = manifests or server_dry_run
    rendered = render_all(result.vms, snapshot, templates, manifests=full)
    verdicts = tuple(with_targets(v, rendered.get((v.namespace, v.name))) for v in result.vms)
    errors = _server_dry_run(cluster, rendered, progress) if server_dry_run else []
    log.debug(
        "plan: %d VM(s), %d rendered, %d dry-run refusal(s)",
        len(verdicts),
        len(rendered),
        len(errors),
    )
    return PlanResult(
        plans=plans,
        snapshot=snapshot,
        verdicts=verdicts,
        rendered=rendered,
        windows=window_states(plans, now or datetime.now(UTC)),
        requests=requests,
        observe_seconds=observed,
        dry_run_errors=tuple(errors),
        server_dry_run=server_dry_run,
        commit=source.commit,
        empty_plans=result.empty_plans,
    )


NAMESPACES = resources.Resource("v1", "Namespace", "namespaces", namespaced=False)


def namespaces_if_needed(
    cluster: Cluster, plans: Sequence[Plan], snapshot: Snapshot
) -> frozenset[str] | None:
    """The cluster's namespaces, listed only when a plan's namespace has no VM, so that a
    misspelled namespace is told from an empty one (``diff.selection``); None when not needed,
    or when RBAC refuses the LIST (the in-cluster role is namespaced: then the report says
    "no VirtualMachine (or the namespace does not exist)")."""
    with_vms = {namespace for namespace, _ in snapshot.vms}
    if all(p.namespace in with_vms for p in plans):
        return None
    try:
        return frozenset(str(o["metadata"]["name"]) for o in cluster.list_objects(NAMESPACES))
    except ClusterError as exc:
        if exc.code != 403:
            raise
        log.debug("namespaces not listed: %s", exc)
        return None


def plan_source(
    paths: Sequence[str | Path], git: GitSpec | None = None, progress: Progress = _quiet
) -> PlanSource:
    """Where the plans are and which commit they come from: ``git`` fetched into its cache
    (then ``paths`` must be empty), else ``paths`` as given with the HEAD of the repository
    holding them (``reconciler.gitsource``). Raises ``UserError`` (no paths, bad ref or path)
    and ``GitError`` (the remote could not be fetched: exit 6)."""
    if git is None and not paths:
        raise UserError(
            [
                Problem(
                    None,
                    "no plans given",
                    "pass plan files or directories, or --git-repo URL (with --git-ref, "
                    "--git-path)",
                )
            ]
        )
    source = resolve(paths, git, progress=progress)
    for note in source.notes:
        progress(f"note: {note}")
    return source


def plans_for_run(
    paths: Sequence[str | Path],
    *,
    allowed_namespaces: frozenset[str] | None,
    namespace: str | None,
    kubeconfig: str | None,
    context: str | None,
    progress: Progress,
) -> tuple[Plan, ...]:
    """The plans under ``paths`` by kubectl's namespace rules (``-n``, else the kubeconfig
    context's namespace for a document without one), at least one (``require_plans``); the
    documents skipped as not plans are told in one note."""
    found = read_plans(
        paths,
        allowed_namespaces=allowed_namespaces,
        namespace=namespace,
        default_namespace=None if namespace else context_namespace(kubeconfig, context),
    )
    if found.note:
        progress(f"note: {found.note}")
    return require_plans(found.plans, paths, skipped=len(found.skipped))


def require_plans(
    plans: tuple[Plan, ...], paths: Sequence[str | Path], *, skipped: int = 0
) -> tuple[Plan, ...]:
    """``plans``, or a ``UserError`` when there are none: with no plan, ``plan`` would list
    the whole cluster and report "converged". Checked before any request is sent."""
    if plans:
        return plans
    others = f" ({skipped} document(s) of other kinds were skipped)" if skipped else ""
    raise UserError(
        [
            Problem(
                None,
                f"no plans in {', '.join(str(p) for p in paths)}: the files hold no plan "
                f"documents{others}",
                "add a StoragePlan (docs/plans.md), or point at the directory that holds them",
            )
        ]
    )


def render_all(
    verdicts: Sequence[VMVerdict],
    snapshot: Snapshot,
    templates: TemplateSet,
    *,
    manifests: bool = True,
) -> dict[VMKey, RenderedVM | Targets]:
    """For every VM that will move: its RenderedVM (``manifests``) or just its Targets.

    Either way destination names are decided and checked against the cluster and each other.
    """
    rendered: dict[VMKey, RenderedVM | Targets] = {}
    for verdict in verdicts:
        if verdict.action not in (Action.MOVE_LIVE, Action.MOVE_OFFLINE):
            continue
        vm = snapshot.vms[(verdict.namespace, verdict.name)]
        rendered[(verdict.namespace, verdict.name)] = (
            render_vm(verdict, vm, snapshot, templates, plan_name=verdict.plan)
            if manifests
            else plan_targets(verdict, vm, snapshot, templates)
        )
    check_distinct_targets(rendered)
    return rendered


def with_targets(verdict: VMVerdict, rendered: RenderedVM | Targets | None) -> VMVerdict:
    """The verdict with each moved volume's target name filled in from the rendering."""
    if rendered is None:
        return verdict
    volumes = tuple(
        replace(v, target_name=rendered.target_names.get(v.volume, v.target_name))
        for v in verdict.volumes
    )
    return replace(verdict, volumes=volumes)


def _server_dry_run(
    cluster: Cluster, rendered: Mapping[VMKey, RenderedVM | Targets], progress: Progress
) -> list[str]:
    """Send every DataVolume create and VM patch with dryRun=All; return the refusals.

    Only 400, 409 and 422 answers refuse our objects (bad input, exit 2); anything else
    (401, 403, 404, 5xx, no answer) is the cluster's problem and raised as the
    ``ClusterError`` it is (exit 6). A DataVolume that already exists and is ours (a leftover
    the next apply will reuse) is not a refusal: render already checked its ownership.
    Progress about every tenth of the way (a request per object: thousands for a large plan).
    """
    errors: list[str] = []
    vms = sorted((k, v) for k, v in rendered.items() if isinstance(v, RenderedVM))
    progress(f"Server-side dry run of {len(vms)} VM(s)' manifests...")
    step = max(len(vms) // 10, 50)
    for done, ((namespace, name), vm) in enumerate(vms, start=1):
        if done % step == 0:
            progress(f"  {done}/{len(vms)} VMs sent ({len(errors)} refused so far)")
        for dv in vm.data_volumes:
            try:
                cluster.create(resources.DATA_VOLUMES, namespace, dv, dry_run=True)
            except ClusterError as exc:
                if exc.code not in REFUSALS:
                    raise
                if exc.code != 409:
                    errors.append(str(exc))
        try:
            cluster.json_patch(
                resources.VIRTUAL_MACHINES, namespace, name, vm.vm_patch, dry_run=True
            )
        except ClusterError as exc:
            if exc.code not in REFUSALS:
                raise
            errors.append(str(exc))
    return errors


REFUSALS = (400, 409, 422)
"""HTTP answers to a dry run that refuse the object sent (schema, conflict, admission)."""


def apply(
    paths: Sequence[str | Path],
    *,
    kubeconfig: str | None = None,
    context: str | None = None,
    allowed_namespaces: frozenset[str] | None = None,
    namespace: str | None = None,
    templates_dir: Path | None = None,
    max_vms: int | None = None,
    parallel: int = 1,
    lease_namespace: str = "vm-storage-reconciler",
    holder: str = "vm-storage-reconciler",
    settings: Settings | None = None,
    progress: Progress = _quiet,
    stop: threading.Event | None = None,
    commit: str | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    listener: Listener | None = None,
    git: GitSpec | None = None,
    run_id: str | None = None,
    metrics: Metrics | None = None,
    pushgateway: str | None = None,
    pushgateway_job: str = JOB,
    pushgateway_auth_file: Path | None = None,
    lease_duration: int = DEFAULT_LEASE_DURATION,
) -> ApplyReport:
    """Load the plans, take the Lease, and run ``apply.runner``: open journals first, then new
    moves one VM at a time (``parallel``: up to that many at once, ``apply.parallel``). Raises
    ``UserError`` (bad input, found before anything is written), ``LockHeld`` (another run
    holds the Lease: nothing changed), ``LeaseLost`` (this run could no longer prove it held the
    Lease and stopped writing: exit 4) and ``ClusterError``.

    The Lease fences every write of the run (``Cluster.write_guard``): past its renew deadline
    nothing is written any more, not even the status ConfigMap or Events.

    ``git`` fetches the plans first (``plan_source``); ``commit`` (else the plans' commit, when
    they are in a repository) goes into every new journal and the report.

    Reporting (``reconciler.publish``): Events on each VM as the run goes (``listener``, if
    given, hears the run too); at the end, also when the run stops on an error, the status
    ConfigMap in ``lease_namespace`` and the metrics: recorded into ``metrics`` (the loop's,
    served on /metrics) and pushed to ``pushgateway`` as job ``pushgateway_job`` (with the
    basic auth in ``pushgateway_auth_file``)."""
    source = plan_source(paths, git, progress)
    commit = commit or source.commit
    progress = tagged(progress, commit=commit)  # JSON logs: every line names the commit
    plans = plans_for_run(
        source.paths,
        allowed_namespaces=allowed_namespaces,
        namespace=namespace,
        kubeconfig=kubeconfig,
        context=context,
        progress=progress,
    )
    templates = load_templates(templates_dir)
    cluster = Cluster(load_client(kubeconfig, context))
    cluster.identify(holder)
    stop = stop or threading.Event()
    lease = Lease(cluster, lease_namespace, holder, lost=stop, now=now, duration=lease_duration)
    cluster.write_guard = lease.ensure
    try:
        lease.acquire()
    except ClusterError as exc:
        if exc.code == 404 and "namespaces" in str(exc):  # no such namespace: the user's to fix
            raise missing_lease_namespace(lease_namespace, str(exc)) from exc
        raise
    reporting = Reporting(
        cluster,
        run_id=run_id or uuid.uuid4().hex[:12],
        holder=holder,
        status_namespace=lease_namespace,
        metrics=metrics,
        pushgateway=pushgateway,
        pushgateway_auth_file=pushgateway_auth_file,
        job=pushgateway_job,
        now=now,
        warn=progress,
    )
    runner: Runner | None = None
    # the judges' watch-fed view of the plans' namespaces (observe.view), for this run only:
    # stopped (sockets shut, threads joined) in the finally below, on errors and SIGTERM too
    view = View(cluster, {p.namespace for p in plans})
    try:
        view.start()
        options = Options(
            max_vms=max_vms,
            parallel=parallel,
            commit=commit,
            settings=settings or Settings(),
            now=now,
            listener=_Both(reporting.listener, listener) if listener else reporting.listener,
            guard=lease.ensure,
            token=lease.token,
            health=lease.overdue,
        )
        runner = Runner(
            cluster,
            plans,
            stages_for(cluster, plans, templates, allowed_namespaces, view),
            options,
            progress=progress,
            stop=stop,
            allowed_namespaces=allowed_namespaces,
        )
        report = runner.run()
        lease.ensure()  # a run that lost the Lease reports nothing: LeaseLost (exit 4)
        reporting.finish(report, kept_in=_kept_namespaces(plans, allowed_namespaces))
        return report
    except LeaseLost:
        raise
    except BaseException as exc:
        if not lease.holds():
            raise LeaseLost(lease.where, "while the run was failing") from exc
        partial = ApplyReport(outcomes=tuple(runner.outcomes if runner else ()), commit=commit)
        reporting.finish(
            partial,
            error=f"{type(exc).__name__}: {exc}",
            kept_in=_kept_namespaces(plans, allowed_namespaces),
        )
        raise
    finally:
        view.close()
        lease.release()


def cancel(
    namespace: str,
    vm: str,
    *,
    who: str,
    kubeconfig: str | None = None,
    context: str | None = None,
    lease_namespace: str = "vm-storage-reconciler",
    holder: str = "vm-storage-reconciler",
    lease_duration: int = DEFAULT_LEASE_DURATION,
    settings: Settings | None = None,
    progress: Callable[[str], None] = lambda _line: None,
    stop: threading.Event | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Cancelled:
    """Take the Lease (as `apply` does: ``LockHeld`` when another run holds it, nothing
    changed), fence every write with it, and ``apply.cancel.cancel_move`` with the pipeline's
    checks; the Lease is released at the end. Raises as ``cancel_move`` does, and
    ``LockHeld``, ``LeaseLost``."""
    cluster = Cluster(load_client(kubeconfig, context))
    cluster.identify(holder)
    stop = stop or threading.Event()
    lease = Lease(cluster, lease_namespace, holder, lost=stop, now=now, duration=lease_duration)
    cluster.write_guard = lease.ensure
    try:
        lease.acquire()
    except ClusterError as exc:
        if exc.code == 404 and "namespaces" in str(exc):
            raise UserError(
                [
                    Problem(
                        None,
                        f"the Lease's namespace {lease_namespace!r} does not exist ({exc})",
                        "point --lease-namespace (or $POD_NAMESPACE) at the namespace the "
                        "scheduled apply uses: a cancel must take the same Lease",
                    )
                ]
            ) from exc
        raise
    try:
        outcome = cancel_move(
            cluster,
            namespace,
            vm,
            who=who,
            settings=settings or Settings(),
            progress=progress,
            stop=stop,
            now=now,
            guard=lease.ensure,
            token=lease.token,
            health=lease.overdue,
            checks=CHECKS,
        )
        lease.ensure()  # a cancel that lost the Lease says so: LeaseLost (exit 4)
        again = None
        if outcome.result == ROLLED_BACK:
            defaults = Options()
            again = moves_again_after(
                cluster, namespace, vm, defaults.backoff_base, defaults.backoff_cap
            )
        return Cancelled(outcome, again)
    finally:
        lease.release()


def _kept_namespaces(plans: Sequence[Plan], allowed: frozenset[str] | None) -> list[str]:
    """Where the metrics count kept sources: every allowed namespace and every plan's."""
    return sorted({p.namespace for p in plans} | set(allowed or ()))


def missing_lease_namespace(namespace: str, said: str) -> UserError:
    """Bad input (exit 2), not a bare 404: where the Lease goes is the user's choice."""
    return UserError(
        [
            Problem(
                None,
                f"the Lease's namespace {namespace!r} does not exist ({said})",
                f"create it (kubectl create namespace {namespace}), or point --lease-namespace "
                "(or $POD_NAMESPACE) at a namespace where this identity may create Leases",
            )
        ]
    )


class _Both:
    """Two Listeners in one (the publisher, and the caller's)."""

    def __init__(self, first: Listener, second: Listener) -> None:
        self.listeners = (first, second)

    def move_started(self, namespace: str, vm: str, journal: Journal, resumed: bool) -> None:
        for listener in self.listeners:
            listener.move_started(namespace, vm, journal, resumed)

    def step_done(self, namespace: str, vm: str, journal: Journal, step: Step) -> None:
        for listener in self.listeners:
            listener.step_done(namespace, vm, journal, step)

    def move_finished(self, outcome: Outcome) -> None:
        for listener in self.listeners:
            listener.move_finished(outcome)

    def vm_blocked(self, verdict: VMVerdict) -> None:
        for listener in self.listeners:
            listener.vm_blocked(verdict)


def status(
    paths: Sequence[str | Path],
    *,
    namespaces: Sequence[str] = (),
    all_namespaces: bool = False,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> list[StatusEntry]:
    """Every VM of the plans' namespaces (and ``namespaces``) that has a journal or a last
    migration record, in (namespace, name) order. Reads only the VMs: one LIST per namespace.
    As ``kubectl get``: with neither plans nor ``namespaces``, the kubeconfig context's
    namespace (``default`` when it sets none); ``all_namespaces``: every namespace, in one
    LIST."""
    selected = set(namespaces)
    default = context_namespace(kubeconfig, context)
    plans = load_plans(paths, default_namespace=default) if paths else ()
    selected |= {p.namespace for p in plans}
    if not selected and not all_namespaces:
        selected = {default or "default"}
    cluster = Cluster(load_client(kubeconfig, context))
    entries: list[StatusEntry] = []
    listed: set[tuple[str, str]] = set()
    if all_namespaces:
        everywhere = cluster.list_objects(resources.VIRTUAL_MACHINES)
        for vm in everywhere:
            meta = vm.get("metadata") or {}
            listed.add((str(meta.get("namespace")), str(meta.get("name"))))
            entry = _status_entry(str(meta.get("namespace")), vm)
            if entry is not None:
                entries.append(entry)
        entries += _missing_vms(plans, listed, everywhere)
        return sorted(entries, key=lambda entry: entry[:2])
    for namespace in sorted(selected):
        for vm in sorted(
            cluster.list_objects(resources.VIRTUAL_MACHINES, namespace),
            key=lambda o: str(o["metadata"]["name"]),
        ):
            listed.add((namespace, str(vm["metadata"]["name"])))
            entry = _status_entry(namespace, vm)
            if entry is not None:
                entries.append(entry)
    everywhere = _all_vms(cluster)
    entries += _missing_vms(plans, listed, everywhere)
    entries += _open_elsewhere(everywhere, selected)
    return sorted(entries, key=lambda entry: entry[:2])


def _all_vms(cluster: Cluster) -> list[dict[str, Any]]:
    """Every VM of the cluster in one LIST; [] when RBAC does not allow listing across
    namespaces (a namespaced install sees its own namespaces only)."""
    try:
        return cluster.list_objects(resources.VIRTUAL_MACHINES)
    except ClusterError as exc:
        if exc.code in (401, 403):
            return []
        raise


def _open_elsewhere(everywhere: list[dict[str, Any]], selected: set[str]) -> list[StatusEntry]:
    """Open moves in namespaces no plan (nor ``-n``) names: `apply` finishes them whatever
    the plans say, so `status` shows them too."""
    found: list[StatusEntry] = []
    for vm in everywhere:
        meta = vm.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        if namespace in selected or names.JOURNAL_ANNOTATION not in (meta.get("annotations") or {}):
            continue
        entry = _status_entry(namespace, vm)
        if entry is not None:
            found.append(entry)
    return found


def _status_entry(namespace: str, vm: dict[str, Any]) -> StatusEntry | None:
    """The VM's journal and last-migration record (None: it has neither)."""
    notes = (vm.get("metadata") or {}).get("annotations") or {}
    journal, error = None, ""
    try:
        journal = journals.read_journal(notes)
    except journals.JournalError as exc:
        error = str(exc)
    last = journals.read_last(notes)
    if journal or last or error:
        return (namespace, str(vm["metadata"]["name"]), journal, last, error, None)
    return None


def _missing_vms(
    plans: Sequence[Plan], listed: set[tuple[str, str]], everywhere: list[dict[str, Any]]
) -> list[StatusEntry]:
    """The VMs the plans name that do not exist, each with the VM it probably meant: of every
    namespace (``everywhere``, when RBAC let us list VMs across them), else of those listed."""
    missing = {
        (p.namespace, s.name): p.name
        for p in plans
        for s in p.virtual_machines
        if (p.namespace, s.name) not in listed
    }
    known = set(listed) | {
        (str(o["metadata"]["namespace"]), str(o["metadata"]["name"])) for o in everywhere
    }
    return [
        (namespace, name, None, None, "", vm_not_found(namespace, name, plan, known))
        for (namespace, name), plan in sorted(missing.items())
    ]
