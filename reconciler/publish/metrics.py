"""Prometheus metrics of the last run (prometheus-client): pushed to a Pushgateway at the end of
each run (``--pushgateway URL``, the convention for batch jobs), or served on ``/metrics`` by the
long-running loop (``serve(port)``).

Every metric describes the **last run** (gauges, replaced as a whole by each run), so a
CronJob's push and a loop's scrape mean the same thing; a push replaces the job's whole group
(HTTP PUT), so a VM that is no longer blocked or moving does not linger as a stale series.
``vmsr_last_success_timestamp_seconds`` survives failed runs all the same: it is carried
forward through the status ConfigMap (``status``), as the Pushgateway documentation advises
for batch jobs.

========================================  ================================================
metric (labels)                           meaning
========================================  ================================================
vmsr_volumes_out_of_sync                  volumes not on their plan's class after the run
  (namespace, from_class, to_class)         (to move, blocked or in progress)
vmsr_run_migrations (result, flow)        VMs the run acted on, by Succeeded, RolledBack,
                                            Failed, Interrupted and live/offline
vmsr_blocked_vms (namespace, rule)        blocked VMs by rule id (a VM counts once per
                                            rule that blocks it)
vmsr_pending_vms (reason)                 VMs left for a later run: max-vms (or the
                                            breaker, or a stop), window
vmsr_plans_selecting_nothing              1 per plan that selected no VM, with the rule
  (namespace, plan, rule)                   saying why (namespace-not-found, ...; exit 7)
vmsr_vm_move_duration_seconds             seconds each VM's move took in the run
  (namespace, vm, flow, result)
vmsr_kept_sources (namespace)             sources kept by moves (label
                                            vmstorage.dev/kept-source), at the run's end
vmsr_kept_source_bytes (namespace)        their size in bytes
vmsr_last_run_timestamp_seconds           when the last run ended (Unix time)
vmsr_last_run_duration_seconds            how long it took
vmsr_last_run_success                     1 when it succeeded (no VM failed, no error)
vmsr_last_success_timestamp_seconds       when a run last succeeded (0: never)
========================================  ================================================

The kept sources are counted in each allowed and plan namespace (one LIST of DataVolumes and
one of PVCs with the label's selector, ``Reporting.finish``); a namespace whose LIST fails has
no series (a warning), 0 is a namespace with none.

A Pushgateway behind basic auth: ``--pushgateway-auth-file`` (``user:password`` on its first
line, read at every push) or a userinfo in the URL (``http://user:password@host:9091``, taken
out of it and sent as the ``Authorization`` header, never printed: ``redact_urls``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, start_http_server
from prometheus_client.exposition import basic_auth_handler, default_handler

from reconciler.model.outcome import FAILED, INTERRUPTED, ROLLED_BACK, SUCCEEDED, ApplyReport
from reconciler.model.text import parse_credentials, split_userinfo
from reconciler.model.verdict import Action, Effect

JOB = "vm-storage-reconciler"
RESULTS = (SUCCEEDED, ROLLED_BACK, FAILED, INTERRUPTED)
FLOWS = ("live", "offline")
PUSH_TIMEOUT = 10.0


BasicAuth = tuple[str, str]
"""(user, password) of HTTP basic auth."""


def gateway_url(url: str) -> str:
    """``url`` as prometheus-client reads it: ``http://`` when it names no scheme (so a
    userinfo in ``user:pw@host:9091`` is one too, taken out and redacted like any other)."""
    url = url.strip()
    return url if "://" in url else f"http://{url}"


def read_basic_auth(path: Path) -> BasicAuth:
    """(user, password) from ``path``'s first line, ``user:password``. Raises ``ValueError``
    (a message naming the file, never its text) when it cannot be read or holds no pair."""
    try:
        with path.open(encoding="utf-8", errors="strict") as handle:
            text = handle.read(64 * 1024)
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    try:
        user, password = parse_credentials(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if user is None:
        raise ValueError(f"{path}: expected user:password on its first line (no ':' in it)")
    return user, password


@dataclass(frozen=True)
class RunFacts:
    """What the metrics say about one run besides its report."""

    finished: float  # Unix time
    seconds: float
    succeeded: bool
    last_success: float | None  # Unix time of the last successful run (this one included)


def out_of_sync(report: ApplyReport) -> Counter[tuple[str, str, str]]:
    """(namespace, from class, to class) -> volumes not on their target after the run: every
    volume judged out of sync at the start, less those of the VMs that moved. Pure."""
    moved = {(o.namespace, o.vm) for o in report.outcomes if o.result == SUCCEEDED}
    counts: Counter[tuple[str, str, str]] = Counter()
    for verdict in report.verdicts:
        if (verdict.namespace, verdict.name) in moved:
            continue
        for volume in verdict.volumes:
            if volume.action is not Action.IN_SYNC:
                counts[(verdict.namespace, volume.from_class or "", volume.to_class)] += 1
    return counts


def blocked_by_rule(report: ApplyReport) -> Counter[tuple[str, str]]:
    """(namespace, rule) -> blocked VMs that rule blocks (notes left out). Pure."""
    counts: Counter[tuple[str, str]] = Counter()
    for verdict in report.verdicts:
        if verdict.action is not Action.BLOCKED:
            continue
        rules = {f.rule for f in verdict.findings if f.effect is not Effect.NOTE}
        for rule in rules or {"unknown"}:
            counts[(verdict.namespace, rule)] += 1
    return counts


class Metrics:
    """The run's metrics in their own registry (one per run for a push; one for the whole
    process when served)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.server: Any = None

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(name, doc, list(labels), registry=self.registry)

        self.out_of_sync = gauge(
            "vmsr_volumes_out_of_sync",
            "Volumes not on their plan's StorageClass after the last run",
            ("namespace", "from_class", "to_class"),
        )
        self.migrations = gauge(
            "vmsr_run_migrations", "VMs the last run acted on, by result", ("result", "flow")
        )
        self.blocked = gauge(
            "vmsr_blocked_vms", "Blocked VMs by the rule that blocks them", ("namespace", "rule")
        )
        self.pending = gauge("vmsr_pending_vms", "VMs left for a later run, by why", ("reason",))
        self.nothing_selected = gauge(
            "vmsr_plans_selecting_nothing",
            "Plans of the last run that selected no VM, by the rule saying why",
            ("namespace", "plan", "rule"),
        )
        self.duration = gauge(
            "vmsr_vm_move_duration_seconds",
            "Seconds each VM's move took in the last run",
            ("namespace", "vm", "flow", "result"),
        )
        self.kept = gauge(
            "vmsr_kept_sources",
            "Sources kept by moves (label vmstorage.dev/kept-source) at the end of the last run",
            ("namespace",),
        )
        self.kept_bytes = gauge(
            "vmsr_kept_source_bytes", "Bytes of the sources kept by moves", ("namespace",)
        )
        self.last_run = gauge("vmsr_last_run_timestamp_seconds", "When the last run ended")
        self.run_seconds = gauge("vmsr_last_run_duration_seconds", "How long the last run took")
        self.run_success = gauge(
            "vmsr_last_run_success", "1 when the last run succeeded (no VM failed, no error)"
        )
        self.last_success = gauge(
            "vmsr_last_success_timestamp_seconds", "When a run last succeeded (0: never)"
        )

    def record(
        self,
        report: ApplyReport | None,
        facts: RunFacts,
        kept: Mapping[str, tuple[int, int]] | None = None,
    ) -> None:
        """Replace every series with what ``report`` says (None: the run stopped before it
        had one; only the run's own facts are known). ``kept``: namespace -> (kept sources,
        their bytes) (``kept.marked_totals``; None or a namespace left out: not counted)."""
        for family in (
            self.out_of_sync,
            self.migrations,
            self.blocked,
            self.pending,
            self.nothing_selected,
            self.kept,
            self.kept_bytes,
        ):
            family.clear()
        for namespace, (count, size) in sorted((kept or {}).items()):
            self.kept.labels(namespace=namespace).set(count)
            self.kept_bytes.labels(namespace=namespace).set(size)
        self.duration.clear()
        self.last_run.set(facts.finished)
        self.run_seconds.set(round(facts.seconds, 3))
        self.run_success.set(1 if facts.succeeded else 0)
        self.last_success.set(facts.last_success or 0)
        if report is None:
            return
        for result in RESULTS:
            for flow in FLOWS:
                self.migrations.labels(result=result, flow=flow).set(0)
        for outcome in report.outcomes:
            flow = outcome.flow or "unknown"
            self.migrations.labels(result=outcome.result, flow=flow).inc()
            if outcome.vm:
                self.duration.labels(
                    namespace=outcome.namespace, vm=outcome.vm, flow=flow, result=outcome.result
                ).set(round(outcome.seconds, 3))
        for (namespace, source, target), count in out_of_sync(report).items():
            self.out_of_sync.labels(namespace=namespace, from_class=source, to_class=target).set(
                count
            )
        for (namespace, rule), count in blocked_by_rule(report).items():
            self.blocked.labels(namespace=namespace, rule=rule).set(count)
        self.pending.labels(reason="max-vms").set(len(report.pending))
        self.pending.labels(reason="window").set(len(report.outside_window))
        for empty in report.empty_plans:
            self.nothing_selected.labels(
                namespace=empty.namespace, plan=empty.plan, rule=empty.finding.rule
            ).set(1)

    def push(
        self,
        url: str,
        job: str = JOB,
        *,
        timeout: float = PUSH_TIMEOUT,
        auth: BasicAuth | None = None,
    ) -> None:
        """PUT the registry to the Pushgateway at ``url`` as group ``job`` (replacing the
        previous push), with basic ``auth`` (else the URL's userinfo, if any: the URL is sent
        without it). Raises OSError when the gateway cannot be reached or refuses."""
        public, user, password = split_userinfo(gateway_url(url))
        if auth is None and user is not None:
            auth = (user, password or "")
        handler = (
            default_handler
            if auth is None
            else partial(basic_auth_handler, username=auth[0], password=auth[1])
        )
        push_to_gateway(public, job=job, registry=self.registry, timeout=timeout, handler=handler)

    def close(self) -> None:
        """Stop serving (``serve``)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def serve(port: int, addr: str = "0.0.0.0", metrics: Metrics | None = None) -> Metrics:
    """Serve ``/metrics`` on ``addr:port`` from a thread (the loop mode); the ``Metrics`` to
    pass to every cycle's ``engine.apply(metrics=...)``. ``port`` 0 picks a free port: see
    ``metrics.server.server_port``."""
    metrics = metrics or Metrics()
    server, _thread = start_http_server(port, addr=addr, registry=metrics.registry)
    metrics.server = server
    return metrics
