"""Assemble the PASER asset graph into Dagster Definitions."""

from __future__ import annotations

import dagster as dg

from paser_assets.assets.pool import recovery_pool
from paser_assets.assets.semantic import cluster_profiles, clusters, instruction_embeddings, manifold
from paser_assets.resources import PaserConfig, PaserDuckDB

SEMANTIC_ASSETS = [recovery_pool, instruction_embeddings, manifold, clusters, cluster_profiles]


def build_definitions(config: PaserConfig | None = None, database: PaserDuckDB | None = None) -> dg.Definitions:
    """Definitions for the PASER asset graph with the given settings (default: from the environment)."""
    config = config if config is not None else PaserConfig.from_env()
    database = database if database is not None else PaserDuckDB.from_env()
    assets = list(SEMANTIC_ASSETS)
    return dg.Definitions(
        assets=assets,
        jobs=[
            dg.define_asset_job(
                "paser_all", selection=dg.AssetSelection.all(), description="Materialize the whole PASER graph."
            )
        ],
        resources={"paser": config, "duckdb": database},
    )
