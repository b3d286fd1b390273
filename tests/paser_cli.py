"""The `paser` command run as a subprocess, the way the CLI tests, reliability tests and the UI test start it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PASER = [sys.executable, "-m", "paser_assets.cli"]


def run_paser(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``paser <args>`` to completion with exactly ``env``, capturing its output as text."""
    return subprocess.run([*PASER, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
