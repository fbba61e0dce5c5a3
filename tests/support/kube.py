"""Helpers for the suites that run against the real API server (tests/env, tests/cluster).

Plain pykube requests and polling, shared so each exists once; the ``eventually`` fixture
itself is in tests/conftest.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pykube

Eventually = Callable[..., Any]
"""The type of the ``eventually`` fixture of tests/conftest.py."""


def stays(probe: Callable[[], bool], seconds: float = 0.6) -> bool:
    """Whether `probe` holds on every poll for `seconds` (for "nothing happens" checks)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not probe():
            return False
        time.sleep(0.05)
    return True


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """The status condition of `type_` ({} when absent)."""
    for cond in (obj or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return {}


def annotation(obj: dict[str, Any] | None, key: str) -> str | None:
    value = ((obj or {}).get("metadata", {}).get("annotations") or {}).get(key)
    return None if value is None else str(value)


def get_json(api: pykube.HTTPClient, version: str, namespace: str, url: str) -> dict[str, Any]:
    """GET ``url`` (e.g. ``virtualmachines/vm1``) in `namespace`; {} when it does not exist."""
    response = api.get(version=version, namespace=namespace, url=url)
    if response.status_code == 404:
        return {}
    api.raise_for_status(response)
    body: dict[str, Any] = response.json()
    return body


def vmi_running(api: pykube.HTTPClient, namespace: str, name: str) -> bool:
    """The VM's VMI exists and is in phase Running."""
    vmi = get_json(api, "kubevirt.io/v1", namespace, f"virtualmachineinstances/{name}")
    return (vmi.get("status") or {}).get("phase") == "Running"


def reason_lines(vm: dict[str, Any]) -> list[str]:
    """A PlanReport VM's ``reasons`` (objects) as ``plan`` prints them: "volume v: msg [rule]"."""
    return [
        (f"volume {r['volume']}: " if r["volume"] else "") + f"{r['message']} [{r['rule']}]"
        for r in vm["reasons"]
    ]
