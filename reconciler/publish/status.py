"""The status ConfigMap: what the last run did, in the Lease's namespace, written at the end of
every run (while the Lease is still held, so two runs never write it at once).

``vm-storage-reconciler-status`` holds:

- ``report.json``: a ``RunStatus`` document: run id, holder, start and end, seconds, the run's
  ``result`` (``Succeeded``: no VM failed; ``VMFailed``; ``Error``: the run stopped on an
  error, named in ``error``), ``lastSuccess``, the plans' commit, and the run's
  ``ApplyReport`` (``report.apply.apply_document``: per VM its result, flow, seconds, steps,
  rule and reason, write-back; blocked VMs with their rule ids; pending ones);
- ``result``, ``lastRun``, ``lastSuccess``, ``commit``, ``runId`` as plain keys, for
  ``kubectl get cm ... -o jsonpath='{.data.result}'`` and for the next run, which carries
  ``lastSuccess`` forward when it fails itself (so does the metric of the same name).

A ConfigMap holds at most 1 MiB: the API server adds up the bytes of its ``data`` values and
refuses more (422). That sum is what ``stored_bytes`` measures, of exactly the ``data`` that is
written (the indented ``report.json`` and the plain keys). Beyond ``MAX_BYTES`` the report
gives way, one step at a time until it fits, and says so (``truncated: true``, ``trimmed``: what
gave way): the blocked VMs' details to their counts by rule; the pending and outside-window
VMs to their counts; each outcome's details (reason, volumes, steps, write-back) to its VM,
result, flow, rule and move id; the outcomes to their count; at last the report to its
summary (``trimmed`` names each step: ``blocked``, ``pending``, ``outsideWindow``,
``outcomes.details``, ``outcomes``, ``report``). A status is always written, never silently nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from reconciler.kube.client import Cluster
from reconciler.kube.resources import CONFIG_MAPS
from reconciler.model.errors import ClusterError
from reconciler.model.names import MANAGED_BY, MANAGED_BY_LABEL
from reconciler.model.outcome import ApplyReport
from reconciler.model.text import redact_urls
from reconciler.report.apply import API_VERSION, apply_document

STATUS_NAME = "vm-storage-reconciler-status"
MAX_BYTES = 1024 * 1024
"""The API server's limit on a ConfigMap: the bytes of its ``data`` values added up
(``core.MaxSecretSize``, checked by ``ValidateConfigMap``)."""

SUCCEEDED = "Succeeded"
VM_FAILED = "VMFailed"
ERROR = "Error"


def run_result(report: ApplyReport | None, error: str) -> str:
    """``Error`` (the run stopped), ``VMFailed`` (a VM failed or was rolled back), else
    ``Succeeded`` (blocked, pending or outside-window VMs are not a failed run)."""
    if error or report is None:
        return ERROR
    return VM_FAILED if report.failed else SUCCEEDED


def status_document(
    report: ApplyReport | None,
    *,
    run_id: str,
    holder: str,
    started: datetime,
    finished: datetime,
    error: str = "",
    last_success: datetime | None = None,
) -> dict[str, Any]:
    """The ``RunStatus`` document. Pure."""
    result = run_result(report, error)
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "RunStatus",
        "runId": run_id,
        "holder": holder,
        "startedAt": started.isoformat(timespec="seconds"),
        "finishedAt": finished.isoformat(timespec="seconds"),
        "seconds": round((finished - started).total_seconds(), 3),
        "result": result,
        "error": redact_urls(error) or None,
        "lastSuccess": last_success.isoformat(timespec="seconds") if last_success else None,
        "commit": report.commit if report else None,
        "report": apply_document(report) if report is not None else None,
    }
    return _bounded(doc)


def stored_bytes(doc: Mapping[str, Any]) -> int:
    """Bytes the API server counts against ``MAX_BYTES`` for ``doc``: those of the values of
    ``configmap_data(doc)``, what ``write_status`` stores. Pure."""
    return sum(len(value.encode()) for value in configmap_data(doc).values())


_OUTCOME_KEYS = ("namespace", "name", "migrationId", "flow", "result", "rule")
"""What an outcome keeps when its details give way."""


def _bounded(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc``, or, when its ConfigMap would exceed ``MAX_BYTES``, ``doc`` with its report
    trimmed step by step until it fits (``truncated``, ``trimmed``)."""
    if doc["report"] is None or stored_bytes(doc) <= MAX_BYTES:
        return doc
    report = dict(doc["report"])
    trimmed: list[str] = []

    def fits(*steps: str) -> bool:
        trimmed.extend(steps)
        report["truncated"] = True
        report["trimmed"] = list(trimmed)
        return stored_bytes({**doc, "report": report}) <= MAX_BYTES

    blocked = report.get("blocked") or ()
    rules = Counter(
        reason["rule"]
        for vm in blocked
        for reason in vm.get("reasons") or ()
        if reason.get("effect") != "Note"
    )
    report["blocked"] = {"vms": len(blocked), "byRule": dict(rules)}
    if fits("blocked"):
        return {**doc, "report": report}
    for key in ("pending", "outsideWindow"):
        report[key] = {"vms": len(report.get(key) or ())}
    if fits("pending", "outsideWindow"):
        return {**doc, "report": report}
    outcomes = list(report.get("outcomes") or ())
    report["outcomes"] = [{k: o.get(k) for k in _OUTCOME_KEYS} for o in outcomes]
    if fits("outcomes.details"):
        return {**doc, "report": report}
    report["outcomes"] = {"vms": len(outcomes)}
    if fits("outcomes"):
        return {**doc, "report": report}
    kept = ("apiVersion", "kind", "commit", "summary")
    report = {k: report[k] for k in kept if k in report}
    fits("report")
    return {**doc, "report": report}


def configmap_data(doc: Mapping[str, Any]) -> dict[str, str]:
    """The ConfigMap's ``data`` for ``doc``. Pure."""
    return {
        "report.json": json.dumps(doc, indent=1, sort_keys=False),
        "result": str(doc["result"]),
        "lastRun": str(doc["finishedAt"]),
        "lastSuccess": str(doc["lastSuccess"] or ""),
        "commit": str(doc["commit"] or ""),
        "runId": str(doc["runId"]),
    }


def read_last_success(cluster: Cluster, namespace: str) -> datetime | None:
    """``lastSuccess`` of the ConfigMap as the previous run left it (None: none yet)."""
    current = cluster.get(CONFIG_MAPS, namespace, STATUS_NAME)
    text = ((current or {}).get("data") or {}).get("lastSuccess") or ""
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def write_status(cluster: Cluster, namespace: str, doc: Mapping[str, Any]) -> None:
    """Create or replace the ConfigMap (compare-and-swap on its resourceVersion; a conflict is
    retried, a run holding the Lease is the only writer)."""
    for _ in range(3):
        current = cluster.get(CONFIG_MAPS, namespace, STATUS_NAME)
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": STATUS_NAME,
                "namespace": namespace,
                "labels": {MANAGED_BY_LABEL: MANAGED_BY},
            },
            "data": configmap_data(doc),
        }
        try:
            if current is None:
                cluster.create(CONFIG_MAPS, namespace, body)
            else:
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                cluster.replace(CONFIG_MAPS, namespace, STATUS_NAME, body)
            return
        except ClusterError as exc:
            if exc.code != 409:
                raise
    raise ClusterError(
        f"ConfigMap/{namespace}/{STATUS_NAME}", "keeps changing under us: is another run writing?"
    )
