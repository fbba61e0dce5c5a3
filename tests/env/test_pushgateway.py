"""The Pushgateway of the metrics tests: built from the Go module proxy (a clear error without
Go), started on 127.0.0.1, and read back through its own HTTP API."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from testenv.binaries import MissingPrerequisiteError, ensure_pushgateway
from testenv.pushgateway import Pushgateway


def test_without_go_a_cold_build_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMSR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no `go` anywhere on it

    with pytest.raises(MissingPrerequisiteError, match=r"Go toolchain not found on PATH.*1\.26"):
        ensure_pushgateway(log=lambda _line: None)


def test_a_push_is_read_back_through_the_gateway_api_and_stop_leaves_nothing() -> None:
    registry = CollectorRegistry()
    Gauge("probe_value", "a probe", ["rule"], registry=registry).labels(rule="x").set(3)

    with Pushgateway(log=lambda _line: None) as gateway:
        assert gateway.url.startswith("http://127.0.0.1:")
        push_to_gateway(gateway.url, job="probe", registry=registry)
        assert gateway.samples("probe")["probe_value"] == [({"rule": "x"}, 3.0)]
        pid = gateway._proc.pid if gateway._proc else 0
        gateway.wipe()
        assert gateway.samples("probe") == {}

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
