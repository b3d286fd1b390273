"""Assemble the PASER asset graph into Dagster Definitions."""

from __future__ import annotations

import json
import warnings

import dagster as dg

# Not exported by `dagster` in 1.13, but the documented way to carry load-time state to run workers (with
# Definitions.with_reconstruction_metadata, which is public); guarded by tests/test_ui.py and tests/test_lineage.py.
from dagster._core.definitions.definitions_load_context import DefinitionsLoadContext, DefinitionsLoadType

# The per-variant assets register themselves in paser_assets.per_variant when their modules are imported.
import paser_assets.assets.checks
import paser_assets.assets.evaluation
import paser_assets.assets.recovery
import paser_assets.assets.scores
import paser_assets.assets.selection  # noqa: F401
from paser_assets.assets.models import checkpoint_observation, original_model
from paser_assets.assets.pool import holdout_split, recovery_pool
from paser_assets.assets.selection import sample_concepts
from paser_assets.assets.semantic import cluster_profiles, clusters, instruction_embeddings, manifold
from paser_assets.automation import build_sensors, model_dependent_condition
from paser_assets.per_variant import ASSETS, CHECKS
from paser_assets.registry import definition_variants
from paser_assets.resources import PaserConfig, PaserDuckDB, SettingError
from paser_assets.settings import declared_reads
from paser_assets.variants import VariantError

VARIANTS_METADATA = "paser/variants"


def declared_settings(asset: dg.AssetsDefinition | dg.SourceAsset) -> frozenset[str]:
    """The settings an asset's function declared with ``@reads``; every asset of the graph declares them."""
    function = asset.op.compute_fn.decorated_fn if isinstance(asset, dg.AssetsDefinition) else asset.observe_fn
    declared = declared_reads(function)
    if declared is None:
        raise TypeError(f"{function.__name__} does not declare the settings it reads: decorate it with @reads(...)")
    return declared


def _stamp(asset: dg.AssetsDefinition, config: PaserConfig) -> dg.AssetsDefinition:
    """Fold the values of the settings the asset reads into its code version; attach the automation condition."""
    fingerprint = config.fingerprint(declared_settings(asset))

    def stamp(spec: dg.AssetSpec) -> dg.AssetSpec:
        code_version = spec.code_version
        if fingerprint and code_version is not None:
            code_version = f"{code_version}+{fingerprint}"
        return spec.replace_attributes(code_version=code_version, automation_condition=model_dependent_condition())

    return asset.map_asset_specs(stamp)


def variant_graph(variant: str, config: PaserConfig) -> tuple[list, list[dg.AssetChecksDefinition]]:
    """One variant's assets (its observed checkpoint first) and checks.

    The recovery assets are there only with PASER_RECOVERY: the UI's "Materialize all" takes every executable
    asset in view, and a non-executable spec would still be matched, and refused, by a selection such as
    ``dagster asset materialize --select 'key:"wanda-50/*"'``. Leaving them out keeps both from training models
    for hours; their tables and adapter files stay, and come back into view with the setting."""
    methods = config.recovery.recovery_methods
    assets: list = [checkpoint_observation(variant)]
    for template in ASSETS.values():
        if template.recovery and not config.execution.include_recovery:
            continue
        assets.extend(_stamp(built, config) for built in template.build(variant, methods))
    return assets, [check.build(variant) for check in CHECKS]


def _definition_variants(config: PaserConfig, database: PaserDuckDB) -> list[str]:
    """The variants of the definitions: read from the registry when a code location starts, and taken from the
    reconstruction metadata in every run worker it launches, so that a run executes the graph it was launched
    from even if the registry changed since."""
    loading = DefinitionsLoadContext.get() if DefinitionsLoadContext.is_set() else None
    key = f"{VARIANTS_METADATA}:{database.database}"
    if loading is not None and loading.load_type == DefinitionsLoadType.RECONSTRUCTION:
        recorded = loading.reconstruction_metadata.get(key)
        if recorded is not None:
            return json.loads(recorded)
    try:
        return definition_variants(database, config)
    except VariantError as error:
        raise SettingError(str(error)) from None


def build_definitions(
    config: PaserConfig | None = None, database: PaserDuckDB | None = None, variants: list[str] | None = None
) -> dg.Definitions:
    """Definitions for the PASER asset graph with the given settings (default: from the environment): the shared
    assets, and one asset graph per variant (default: the configured and the registered variants)."""
    config = config if config is not None else PaserConfig.from_env()
    database = database if database is not None else PaserDuckDB.from_env()
    variants = variants if variants is not None else _definition_variants(config, database)
    shared = [
        recovery_pool,
        instruction_embeddings,
        manifold,
        clusters,
        cluster_profiles,
        sample_concepts,
        holdout_split,
    ]
    per_variant = [variant_graph(variant, config) for variant in variants]
    defs = dg.Definitions(
        assets=[
            original_model,
            *(_stamp(asset, config) for asset in shared),
            *(asset for assets, _ in per_variant for asset in assets),
        ],
        asset_checks=[check for _, checks in per_variant for check in checks],
        sensors=build_sensors(config),
        resources={"paser": config, "duckdb": database},
        executor=build_executor(config),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)  # in preview in 1.13; what run workers rebuild from
        return defs.with_reconstruction_metadata({f"{VARIANTS_METADATA}:{database.database}": json.dumps(variants)})


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
