"""Run the graph in this process: everything, a selection, or exactly what is stale (``paser refresh``).

The shared assets (pool, embeddings, clusters, concepts) are not partitioned; everything that reads
a pruned model is partitioned by variant. A graph run is therefore one run for the shared assets
(which also observes the checkpoints) and one run per variant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import dagster as dg

from paser_assets.registry import sync_variants
from paser_assets.resources import PaserConfig, PaserDuckDB
from paser_assets.staleness import StaleSet, stale_or_missing
from paser_assets.variants import VARIANT_PARTITIONS

OBSERVED = (dg.AssetKey("original_model"), dg.AssetKey("pruned_checkpoint"))
LOG_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def default_instance() -> dg.DagsterInstance:
    """The instance in DAGSTER_HOME (what `dagster dev` shows), or an ephemeral one when it is unset."""
    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


@dataclass
class GraphRun:
    """What a graph run did: its Dagster runs and the asset (partitions) it materialized."""

    results: list[dg.ExecuteInProcessResult] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(result.success for result in self.results)

    @property
    def materialized(self) -> list[str]:
        names = []
        for result in self.results:
            for event in result.get_asset_materialization_events():
                suffix = f"[{event.partition}]" if event.partition else ""
                names.append(f"{event.asset_key.to_user_string()}{suffix}")
        return sorted(names)

    @property
    def observed(self) -> list[str]:
        return sorted(
            {
                f"{event.asset_key.to_user_string()}" + (f"[{event.partition}]" if event.partition else "")
                for result in self.results
                for event in result.all_events
                if event.event_type_value == "ASSET_OBSERVATION" and event.asset_key is not None
            }
        )

    @property
    def all_events(self) -> list:
        return [event for result in self.results for event in result.all_events]

    def get_asset_materialization_events(self) -> list:
        return [event for result in self.results for event in result.get_asset_materialization_events()]

    def get_asset_check_evaluations(self) -> list:
        return [evaluation for result in self.results for evaluation in result.get_asset_check_evaluations()]

    def failures(self) -> list[str]:
        messages = []
        for result in self.results:
            for event in result.all_events:
                if event.is_step_failure and event.step_failure_data is not None:
                    error = event.step_failure_data.error
                    messages.append(f"{event.step_key}: {error.message.strip() if error else 'unknown error'}")
        return messages


def _resources(defs: dg.Definitions) -> tuple[PaserConfig, PaserDuckDB]:
    resources = defs.resources or {}
    return resources["paser"], resources["duckdb"]


def _execute(
    defs: dg.Definitions,
    keys: set[dg.AssetKey],
    instance: dg.DagsterInstance,
    partition_key: str | None = None,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*(defs.assets or []), *(defs.asset_checks or [])],
        selection=dg.AssetSelection.assets(*keys),
        resources=defs.resources,
        instance=instance,
        partition_key=partition_key,
        raise_on_error=False,
        run_config=LOG_CONFIG,
    )


def _split(defs: dg.Definitions, keys: set[dg.AssetKey]) -> tuple[set[dg.AssetKey], set[dg.AssetKey]]:
    graph = defs.resolve_asset_graph()
    partitioned = {key for key in keys if graph.get(key).partitions_def is not None and key not in OBSERVED}
    return keys - partitioned, partitioned


def run_graph(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    selection: str | None = None,
    variants: list[str] | None = None,
) -> GraphRun:
    """Observe the checkpoints and materialize the selection (default: everything) for every variant."""
    config, database = _resources(defs)
    names = sync_variants(instance, database, config)
    if variants is not None:
        names = variants
    graph = defs.resolve_asset_graph()
    wanted = (
        dg.AssetSelection.from_string(selection).resolve(graph)
        if selection
        else set(graph.materializable_asset_keys) | set(OBSERVED)
    )
    shared, partitioned = _split(defs, set(wanted))
    run = GraphRun()
    if shared:
        run.results.append(_execute(defs, shared, instance))
        if not run.success:
            return run
    for name in names if partitioned else []:
        run.results.append(_execute(defs, partitioned, instance, partition_key=name))
    return run


def observe(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """Record the checkpoints' current content hashes (original and every variant)."""
    return _execute(defs, set(OBSERVED), instance)


def refresh(defs: dg.Definitions, instance: dg.DagsterInstance, max_waves: int = 5) -> tuple[GraphRun, list[str]]:
    """Observe the checkpoints, then materialize exactly the stale or missing assets until none is left.

    Each wave materializes what Dagster reports stale or missing; materializing can make further
    assets stale (a changed result), so the next wave looks again. Returns the runs and the stale
    set found by the first look.
    """
    config, database = _resources(defs)
    sync_variants(instance, database, config)
    run = GraphRun(results=[observe(defs, instance)])
    first: list[str] | None = None
    for _ in range(max_waves):
        stale: StaleSet = stale_or_missing(defs, instance)
        if first is None:
            first = stale.describe()
        if not stale or not run.success:
            break
        if stale.unpartitioned:
            run.results.append(_execute(defs, stale.unpartitioned, instance))
            if not run.success:
                break
            continue  # shared assets changed: look again before running variants
        for variant, keys in sorted(stale.by_variant.items()):
            if keys:
                run.results.append(_execute(defs, keys, instance, partition_key=variant))
    return run, first or []


def registered_variant_names(instance: dg.DagsterInstance) -> list[str]:
    return list(instance.get_dynamic_partitions(VARIANT_PARTITIONS))
