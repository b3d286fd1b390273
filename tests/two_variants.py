"""A real database with two variants, in a file not named paser.duckdb, shared by the SQL and check tests.

The graph is materialized the way a user gets there: `paser materialize` with the built-in pruning recipe
(variant ``magnitude-50``), then `paser variants add nm24 magnitude:2:4` (registry + refresh). The pool is a
JSONL file of demo rows plus two broken lines, so ``recovery_pool_rejected`` has rows too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.models.pruning import PruneRecipe
from paser_assets.pool.demo import generate_demo_pool
from paser_assets.registry import add_variant
from paser_assets.runner import refresh, run_graph
from paser_assets.variants import Variant

BUILT_IN = "magnitude-50"  # the variant of the pruning settings below
ADDED = "nm24"
VARIANTS = (BUILT_IN, ADDED)
FILE_NAME = "runs.duckdb"  # DuckDB's catalog is "runs": nothing may rely on it being "paser"
BROKEN_LINES = ['{"instruction": "no answer here"}', "{not json"]  # missing_output, malformed_row


@dataclass
class TwoVariants:
    root: Path
    settings: dict  # the PaserConfig arguments, to build another configuration from
    config: PaserConfig
    database: PaserDuckDB
    defs: dg.Definitions
    instance: dg.DagsterInstance
    runs: list  # the GraphRuns: materialize, then the refresh of `variants add`


def build_two_variants(root: Path, original: Path, instance: dg.DagsterInstance) -> TwoVariants:
    pool = root / "pool.jsonl"
    rows = [json.dumps(record, ensure_ascii=False) for record in generate_demo_pool(96, seed=3)]
    pool.write_text("\n".join([*rows[:40], *BROKEN_LINES, *rows[40:]]) + "\n", encoding="utf-8")
    database = PaserDuckDB(database=str(root / FILE_NAME))
    settings = {
        "dataset": str(pool),
        "budget": 0.5,
        "conflict_tolerance": 0.0,  # the paper's strict rule: some candidates are concept conflicts
        "original_model": str(original),
        "prune_method": "magnitude",
        "model_cache_dir": str(root / "models"),
        "export_dir": str(root / "export"),
    }
    config = PaserConfig(**settings)
    defs = build_definitions(config, database)
    first = run_graph(defs, instance)
    assert first.success, first.failures()
    add_variant(database, Variant(ADDED, recipe=PruneRecipe(method="magnitude", n_m=(2, 4))))
    defs = build_definitions(config, database)  # the added variant's assets come from the registry
    second, _ = refresh(defs, instance, command="variants add")  # what `paser variants add` runs
    assert second.success, second.failures()
    return TwoVariants(root, settings, config, database, defs, instance, [first, second])
