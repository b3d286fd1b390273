"""Assemble the PASER asset graph into Dagster Definitions."""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from paser_assets.assets.models import MODEL_ASSETS
from paser_assets.assets.pool import holdout_split, recovery_pool
from paser_assets.assets.recovery import RECOVERY_ASSETS
from paser_assets.assets.scores import build_degradation_scores, capability_degradation
from paser_assets.assets.selection import SELECTION_CHECKS, sample_concepts, selection, selection_export
from paser_assets.assets.semantic import cluster_profiles, clusters, instruction_embeddings, manifold
from paser_assets.automation import build_sensors, model_dependent_condition
from paser_assets.resources import PaserConfig, PaserDuckDB, SettingError

# The settings each asset's output depends on. They are folded into the asset's code_version, so
# that changing a setting marks exactly the assets it affects as stale in the UI.
SETTINGS_BY_ASSET: dict[str, tuple[str, ...]] = {
    "recovery_pool": ("dataset", "dataset_split", "field_map", "max_chars", "demo_size", "seed"),
    "recovery_pool_rejected": ("dataset", "dataset_split", "field_map", "max_chars", "demo_size", "seed"),
    "instruction_embeddings": ("embedding_model",),
    "manifold": ("manifold", "manifold_dims", "n_neighbors", "seed"),
    "clusters": ("n_clusters", "n_neighbors", "graph_regularization", "max_clusters", "cluster_space", "seed"),
    "pruned_model": ("seed",),
    "degradation_scores": ("max_tokens",),
    "capability_degradation": ("budget",),
    "sample_concepts": ("concepts_per_sample",),
    "selection": ("conflict_tolerance",),
    "concept_graph": ("conflict_tolerance",),
    "selection_export": ("export_dir",),
    "holdout_split": ("holdout_fraction", "holdout_max", "seed"),
    "baseline_selections": ("seed", "recovery_seed", "recovery_methods"),
    "recovered_model": (
        "lora_r",
        "lora_alpha",
        "lora_learning_rate",
        "lora_epochs",
        "lora_batch_size",
        "lora_layers",
        "seed",
        "recovery_seed",
    ),
}
# Assets whose result depends on the pruned model; they go stale together when it changes.
MODEL_DEPENDENT = (
    "pruned_model",
    "degradation_scores",
    "capability_degradation",
    "selection",
    "concept_graph",
    "selection_export",
    "baseline_selections",
    "recovered_model",
    "reference_evaluation",
    "recovery_evaluation",
    "recovery_comparison",
)


def settings_fingerprint(config: PaserConfig, fields: tuple[str, ...]) -> str:
    values = {name: getattr(config, name) for name in fields}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _stamp(asset: dg.AssetsDefinition, config: PaserConfig) -> dg.AssetsDefinition:
    """Fold settings into code versions and attach the automation conditions."""

    def stamp(spec: dg.AssetSpec) -> dg.AssetSpec:
        name = spec.key.to_user_string()
        fields = SETTINGS_BY_ASSET.get(name)
        code_version = spec.code_version
        if fields and code_version is not None:
            code_version = f"{code_version}+{settings_fingerprint(config, fields)}"
        condition = model_dependent_condition() if name in MODEL_DEPENDENT else spec.automation_condition
        return spec.replace_attributes(code_version=code_version, automation_condition=condition)

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
        sample_concepts,
        holdout_split,
        *MODEL_ASSETS[2:],
        build_degradation_scores(config.score_shards),
        capability_degradation,
        selection,
        selection_export,
        *RECOVERY_ASSETS,
    ]
    return dg.Definitions(
        assets=[*MODEL_ASSETS[:2], *(_stamp(asset, config) for asset in materializable)],
        asset_checks=SELECTION_CHECKS,
        sensors=build_sensors(config),
        resources={"paser": config, "duckdb": database},
        executor=build_executor(config),
    )


def build_executor(config: PaserConfig) -> dg.ExecutorDefinition:
    """The executor of runs launched from the UI or `dagster asset materialize` (PASER_EXECUTOR)."""
    if config.executor == "multiprocess":
        return dg.multiprocess_executor
    if config.executor == "dask":
        try:
            from dagster_dask import dask_executor
        except ImportError as error:  # pragma: no cover - dagster-dask is a dependency
            raise SettingError("PASER_EXECUTOR=dask needs the dagster-dask package") from error
        cluster = (
            {"existing": {"address": config.dask_address}}
            if config.dask_address
            else {"local": {"n_workers": 2, "threads_per_worker": 1}}
        )
        return dask_executor.configured({"cluster": cluster})
    return dg.in_process_executor
