"""Assemble the PASER asset graph into Dagster Definitions."""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from paser_assets.assets.models import model_assets
from paser_assets.assets.pool import recovery_pool
from paser_assets.assets.scores import capability_degradation, degradation_scores
from paser_assets.assets.selection import SELECTION_CHECKS, sample_concepts, selection, selection_export
from paser_assets.assets.semantic import cluster_profiles, clusters, instruction_embeddings, manifold
from paser_assets.resources import PaserConfig, PaserDuckDB

# The settings each asset's output depends on. They are folded into the asset's code_version, so
# that changing a setting marks exactly the assets it affects as stale in the UI.
SETTINGS_BY_ASSET: dict[str, tuple[str, ...]] = {
    "recovery_pool": ("dataset", "dataset_split", "field_map", "max_chars", "demo_size", "seed"),
    "recovery_pool_rejected": ("dataset", "dataset_split", "field_map", "max_chars", "demo_size", "seed"),
    "instruction_embeddings": ("embedding_model",),
    "manifold": ("manifold", "manifold_dims", "n_neighbors", "seed"),
    "clusters": ("n_clusters", "n_neighbors", "graph_regularization", "max_clusters", "cluster_space", "seed"),
    "pruned_model": ("prune_method", "sparsity", "prune_n_m", "calibration_samples", "calibration_tokens", "seed"),
    "degradation_scores": ("max_tokens",),
    "capability_degradation": ("budget",),
    "sample_concepts": ("concepts_per_sample",),
    "selection": ("conflict_tolerance",),
    "concept_graph": ("conflict_tolerance",),
    "selection_export": ("export_dir",),
}


def settings_fingerprint(config: PaserConfig, fields: tuple[str, ...]) -> str:
    values = {name: getattr(config, name) for name in fields}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _with_settings_version(asset: dg.AssetsDefinition, config: PaserConfig) -> dg.AssetsDefinition:
    def stamp(spec: dg.AssetSpec) -> dg.AssetSpec:
        fields = SETTINGS_BY_ASSET.get(spec.key.to_user_string())
        if not fields or spec.code_version is None:
            return spec
        return spec.replace_attributes(code_version=f"{spec.code_version}+{settings_fingerprint(config, fields)}")

    return asset.map_asset_specs(stamp)


def build_definitions(config: PaserConfig | None = None, database: PaserDuckDB | None = None) -> dg.Definitions:
    """Definitions for the PASER asset graph with the given settings (default: from the environment)."""
    config = config if config is not None else PaserConfig.from_env()
    database = database if database is not None else PaserDuckDB.from_env()
    materializable = [
        recovery_pool,
        instruction_embeddings,
        manifold,
        clusters,
        cluster_profiles,
        degradation_scores,
        capability_degradation,
        sample_concepts,
        selection,
        selection_export,
    ]
    assets: list = [_with_settings_version(asset, config) for asset in materializable]
    for asset in model_assets(config):
        assets.append(_with_settings_version(asset, config) if isinstance(asset, dg.AssetsDefinition) else asset)
    return dg.Definitions(
        assets=assets,
        asset_checks=SELECTION_CHECKS,
        jobs=[
            dg.define_asset_job(
                "paser_all", selection=dg.AssetSelection.all(), description="Materialize the whole PASER graph."
            )
        ],
        resources={"paser": config, "duckdb": database},
    )
