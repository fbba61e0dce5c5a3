"""YAML through libyaml (PyYAML's C loader and dumper; PyPI's wheels and Debian's package
have it), falling back to the pure-Python ones.

The environment reads megabytes of YAML on every start: KubeVirt's manifests (4 MB, its CRDs),
then the CRDs again as the control plane installs them. With the pure-Python loader that was
half of a real engine's start: 33 s wall and 37 CPU-s (this process 16) before, 16 s and
19 CPU-s (this process 2.6) with libyaml, on a machine where CPU is what the suite waits for.
"""

from __future__ import annotations

from typing import Any

import yaml

_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load(text: str) -> Any:
    """The one document of ``text`` (``yaml.safe_load``)."""
    return yaml.load(text, Loader=_LOADER)


def load_all(text: str) -> list[Any]:
    """Every non-empty document of ``text``, in order (``yaml.safe_load_all``)."""
    return [doc for doc in yaml.load_all(text, Loader=_LOADER) if doc]


def dump(doc: Any, *, sort_keys: bool = True) -> str:
    """``doc`` as block YAML (``yaml.safe_dump``)."""
    return str(yaml.dump(doc, Dumper=_DUMPER, sort_keys=sort_keys))
