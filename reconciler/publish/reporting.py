"""One run's reporting, as the engine composes it: the ``Listener`` that sends Events while the
run goes, and ``finish`` at its end, which writes the status ConfigMap and records (and pushes)
the metrics, whether the run ended with a report or stopped on an error.

Reporting never changes the run's outcome: a refused Event, an unwritable ConfigMap or an
unreachable Pushgateway is a ``warning:`` progress line (and a log record), not an error. The
Pushgateway's URL is printed redacted (``model.text.redact_urls``): its userinfo, and its basic
auth (``pushgateway_auth_file``, read at every push), never show.
"""

from __future__ import annotations

import http.client
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from reconciler.kube.client import Cluster
from reconciler.kube.resources import DATA_VOLUMES, PVCS
from reconciler.model import kept as kepts
from reconciler.model.errors import ClusterError
from reconciler.model.names import KEPT_SOURCE_LABEL
from reconciler.model.outcome import ApplyReport
from reconciler.model.text import redact_urls
from reconciler.publish.events import Events
from reconciler.publish.metrics import JOB, Metrics, RunFacts, gateway_url, read_basic_auth
from reconciler.publish.publisher import Publisher
from reconciler.publish.status import (
    STATUS_NAME,
    SUCCEEDED,
    read_last_success,
    run_result,
    status_document,
    write_status,
)

log = logging.getLogger(__name__)


class Reporting:
    def __init__(
        self,
        cluster: Cluster,
        *,
        run_id: str,
        holder: str,
        status_namespace: str,
        metrics: Metrics | None = None,
        pushgateway: str | None = None,
        pushgateway_auth_file: Path | None = None,
        job: str = JOB,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        warn: Callable[[str], None] = lambda _message: None,
    ) -> None:
        """``metrics``: a long-lived ``Metrics`` (the loop's, served on /metrics); without it
        and with ``pushgateway``, a fresh one for this run."""
        self.cluster = cluster
        self.run_id = run_id
        self.holder = holder
        self.namespace = status_namespace
        self.pushgateway = pushgateway
        self.pushgateway_auth_file = pushgateway_auth_file
        self.job = job
        self.metrics = metrics if metrics is not None else (Metrics() if pushgateway else None)
        self.now = now
        self.warn = warn
        self.events = Events(cluster, holder=holder, run_id=run_id, now=now, warn=warn)
        self.listener = Publisher(self.events, status_where=f"{status_namespace}/{STATUS_NAME}")
        self.started = now()
        self._clock = time.monotonic()

    def finish(
        self, report: ApplyReport | None, error: str = "", kept_in: Sequence[str] = ()
    ) -> None:
        """The status ConfigMap and the metrics for the run that ended with ``report`` (None,
        or a partial one, and ``error`` when it stopped on an exception). ``kept_in``: the
        namespaces whose kept sources the metrics count (listed only when there are metrics)."""
        finished = self.now()
        seconds = time.monotonic() - self._clock
        succeeded = run_result(report, error) == SUCCEEDED
        previous: datetime | None = None
        try:
            previous = read_last_success(self.cluster, self.namespace)
        except ClusterError as exc:
            log.warning("cannot read the status ConfigMap: %s", exc)
        last_success = finished if succeeded else previous
        document = status_document(
            report,
            run_id=self.run_id,
            holder=self.holder,
            started=self.started,
            finished=finished,
            error=error,
            last_success=last_success,
        )
        try:
            write_status(self.cluster, self.namespace, document)
        except ClusterError as exc:
            self.warn(f"warning: the status ConfigMap was not written: {exc}")
        if self.metrics is None:
            return
        kept = self.kept_totals(kept_in)
        self.metrics.record(
            report,
            RunFacts(
                finished=finished.timestamp(),
                seconds=seconds,
                succeeded=succeeded,
                last_success=last_success.timestamp() if last_success else None,
            ),
            kept,
        )
        if self.pushgateway:
            where = redact_urls(gateway_url(self.pushgateway))
            try:
                auth = None
                if self.pushgateway_auth_file is not None:
                    auth = read_basic_auth(self.pushgateway_auth_file)
                self.metrics.push(self.pushgateway, self.job, auth=auth)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                # (http.client.InvalidURL, for a port that is not a number, is neither.)
                self.warn(f"warning: metrics not pushed to {where}: {redact_urls(str(exc))}")

    def kept_totals(self, namespaces: Sequence[str]) -> dict[str, tuple[int, int]]:
        """namespace -> (kept sources, bytes): one LIST of DataVolumes and one of PVCs with
        the kept-source label's selector per namespace. A namespace that cannot be listed is
        left out with a warning: counting never fails the run."""
        totals: dict[str, tuple[int, int]] = {}
        for namespace in sorted(set(namespaces)):
            try:
                dvs = self.cluster.list_objects(
                    DATA_VOLUMES, namespace, missing_ok=True, label_selector=KEPT_SOURCE_LABEL
                )
                pvcs = self.cluster.list_objects(PVCS, namespace, label_selector=KEPT_SOURCE_LABEL)
            except (ClusterError, OSError, ValueError) as exc:
                self.warn(f"warning: kept sources in {namespace} not counted: {exc}")
                continue
            totals[namespace] = kepts.marked_totals(dvs, pvcs).get(namespace, (0, 0))
        return totals
