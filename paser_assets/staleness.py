"""Which assets (and variant partitions) are stale or missing, as the Dagster UI reports them.

This reads Dagster's own stale-status resolver, so ``paser refresh`` and the UI agree. The resolver
is not part of Dagster's public API; it is used here with the pinned Dagster 1.13 and guarded by
the integration tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime


@dataclass
class StaleSet:
    """Stale or missing assets: unpartitioned keys, and partitioned keys per partition key (a variant,
    or a ``shard|variant`` key of degradation_scores)."""

    unpartitioned: set[dg.AssetKey] = field(default_factory=set)
    by_partition: dict[str, set[dg.AssetKey]] = field(default_factory=dict)
    # Why each asset (partition) is listed, by its name as describe() gives it.
    reasons: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.unpartitioned) or any(self.by_partition.values())

    def explain(self) -> list[str]:
        """``name: reason`` for every listed asset (partition), in name order."""
        return [f"{name}: {self.reasons.get(name, 'stale')}" for name in self.describe()]

    def describe(self) -> list[str]:
        names = [key.to_user_string() for key in self.unpartitioned]
        for partition, keys in self.by_partition.items():
            names.extend(f"{key.to_user_string()}[{partition}]" for key in keys)
        return sorted(names)


def stale_or_missing(defs: dg.Definitions, instance: dg.DagsterInstance) -> StaleSet:
    """Every materializable asset (partition) whose status is STALE or MISSING."""
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance, graph, view)
    result = StaleSet()
    for key in graph.materializable_asset_keys:
        node = graph.get(key)
        if node.partitions_def is None:
            status = resolver.get_status(key)
            if status in (StaleStatus.STALE, StaleStatus.MISSING):
                result.unpartitioned.add(key)
                result.reasons[key.to_user_string()] = _reason(resolver, status, key, None)
            continue
        for partition in node.partitions_def.get_partition_keys(dynamic_partitions_store=instance):
            status = resolver.get_status(key, partition)
            if status in (StaleStatus.STALE, StaleStatus.MISSING):
                result.by_partition.setdefault(str(partition), set()).add(key)
                name = f"{key.to_user_string()}[{partition}]"
                result.reasons[name] = _reason(resolver, status, key, str(partition))
    return result


def _reason(resolver: CachingStaleStatusResolver, status: StaleStatus, key: dg.AssetKey, partition: str | None) -> str:
    """Dagster's own words for why an asset (partition) is stale, e.g. 'updated data (pruned_checkpoint[w50])'."""
    if status == StaleStatus.MISSING:
        return "never materialized"
    causes = []
    for cause in resolver.get_stale_causes(key, partition):
        dependency = cause.dependency
        where = ""
        if dependency is not None:
            suffix = f"[{dependency.partition_key}]" if dependency.partition_key else ""
            where = f" ({dependency.asset_key.to_user_string()}{suffix})"
        causes.append(f"{cause.reason}{where}")
    return "; ".join(dict.fromkeys(causes)) or "stale"
