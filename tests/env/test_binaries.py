"""Building the control plane: a missing Go toolchain is a clear error, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_without_go_the_build_says_what_to_install(tmp_path: Path) -> None:
    """An empty cache forces a build; a PATH without `go` must be named as the problem."""
    env = {"PATH": "/usr/bin:/bin", "VMSR_CACHE_DIR": str(tmp_path / "cache"),
           "HOME": str(tmp_path)}
    if Path("/usr/bin/go").exists() or Path("/bin/go").exists():  # pragma: no cover
        env["PATH"] = str(tmp_path)  # no directory with a `go` in it at all
    result = subprocess.run([sys.executable, "-m", "testenv", "build"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "Go toolchain not found on PATH" in result.stderr
    assert "install Go >= 1.26" in result.stderr
    assert "Traceback" not in result.stderr
