"""Where the plugin keeps its outputs by default: folders beside the DuckDB file.

The names are written here once; the settings, the export, the CLI's run history and the pool reader
(which must never read them as data) all take them from this module.
"""

from __future__ import annotations

from pathlib import Path

MODEL_CACHE_FOLDER = "paser_models"  # converted GGUF models, pruned checkpoints, cached states, adapters
EXPORT_FOLDER = "paser_export"  # the exported selections, one folder per variant
INSTANCE_FOLDER = ".dagster_home"  # the Dagster instance the CLI uses without DAGSTER_HOME


def beside(database: str, folder: str) -> Path:
    """``folder`` in the directory of the DuckDB file ``database``."""
    return Path(database).resolve().parent / folder
