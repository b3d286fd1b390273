"""Assemble the PASER asset graph into Dagster Definitions."""

from __future__ import annotations

import dagster as dg

from paser_assets.assets.checks import build_checks
from paser_assets.assets.models import MODEL_ASSETS
from paser_assets.assets.pool import holdout_split, recovery_pool
from paser_assets.assets.recovery import RECOVERY_ASSETS
from paser_assets.assets.scores import build_degradation_scores, capability_degradation
from paser_assets.assets.selection import sample_concepts, selection, selection_export
from paser_assets.assets.semantic import cluster_profiles, clusters, instruction_embeddings, manifold
from paser_assets.automation import build_sensors, model_dependent_condition
from paser_assets.resources import PaserConfig, PaserDuckDB, SettingError
from paser_assets.settings import declared_reads


def declared_settings(asset: dg.AssetsDefinition | dg.SourceAsset) -> frozenset[str]:
    """The settings an asset's function declared with ``@reads``; every asset of the graph declares them."""
    function = asset.op.compute_fn.decorated_fn if isinstance(asset, dg.AssetsDefinition) else asset.observe_fn
    declared = declared_reads(function)
    if declared is None:
        raise TypeError(f"{function.__name__} does not declare the settings it reads: decorate it with @reads(...)")
    return declared


def _stamp(asset: dg.AssetsDefinition, config: PaserConfig) -> dg.AssetsDefinition:
    """Fold the values of the settings the asset reads into its code version; attach the automation condition.

    Partitioned assets are the ones that read a pruned model: they rerun when the models change.
    """
    fingerprint = config.fingerprint(declared_settings(asset))

    def stamp(spec: dg.AssetSpec) -> dg.AssetSpec:
        code_version = spec.code_version
        if fingerprint and code_version is not None:
            code_version = f"{code_version}+{fingerprint}"
        condition = model_dependent_condition() if spec.partitions_def is not None else spec.automation_condition
        return spec.replace_attributes(code_version=code_version, automation_condition=condition)

    return asset.map_asset_specs(stamp)


def recovery_assets(config: PaserConfig) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """The recovery group: materializable with PASER_RECOVERY, else shown in the UI but never launched.

    The UI's "Materialize all" takes every executable asset in view and Dagster 1.13 has no per-asset opt-out
    (an asset job cannot mix the graph's partitionings, a second code location would still be in the global
    "Materialize all"). An asset this location does not execute (an external ``AssetSpec``) stays in the
    lineage and the catalog with its history and code version, but no "Materialize all" and no automation
    launches it: the same switch that keeps `paser materialize` from training models for hours.
    """
    stamped = [_stamp(asset, config) for asset in RECOVERY_ASSETS]
    if config.execution.include_recovery:
        return stamped
    return [spec.replace_attributes(automation_condition=None) for asset in stamped for spec in asset.specs]


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
        build_degradation_scores(config.scoring.score_shards),
        capability_degradation,
        selection,
        selection_export,
    ]
    return dg.Definitions(
        assets=[
            *MODEL_ASSETS[:2],
            *(_stamp(asset, config) for asset in materializable),
            *recovery_assets(config),
        ],
        asset_checks=build_checks(config.scoring.score_shards),
        sensors=build_sensors(config),
        resources={"paser": config, "duckdb": database},
        executor=build_executor(config),
    )


def build_executor(config: PaserConfig) -> dg.ExecutorDefinition:
    """The executor of runs launched from the UI or `dagster asset materialize` (PASER_EXECUTOR)."""
    if config.execution.executor == "multiprocess":
        return dg.multiprocess_executor
    if config.execution.executor == "dask":
        try:
            from dagster_dask import dask_executor
        except ImportError as error:  # pragma: no cover - dagster-dask is a dependency
            raise SettingError("PASER_EXECUTOR=dask needs the dagster-dask package") from error
        cluster = (
            {"existing": {"address": config.execution.dask_address}}
            if config.execution.dask_address
            else {"local": {"n_workers": 2, "threads_per_worker": 1}}
        )
        return dask_executor.configured({"cluster": cluster})
    return dg.in_process_executor
