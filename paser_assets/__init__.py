"""paser-assets: PASER post-training data selection for pruned LLM recovery, as Dagster assets.

PASER is due to He et al., "PASER: Post-Training Data Selection for Efficient Pruned Large
Language Model Recovery" (arXiv 2502.12594).

The public names are imported on first use, so that `paser --help` does not load Dagster and PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "Candidates": "paser_assets.methods",
    "PaserComponent": "paser_assets.component",
    "PaserConfig": "paser_assets.settings",
    "PaserDuckDB": "paser_assets.resources",
    "SelectionMethod": "paser_assets.methods",
    "build_definitions": "paser_assets.graph",
}

__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'paser_assets' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
