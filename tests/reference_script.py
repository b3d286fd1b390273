"""scripts/reference.py, the development script that writes docs/reference.md (not part of the package), loaded
by path for the tests of the settings and tables references."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reference.py"


def reference_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("paser_reference_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
