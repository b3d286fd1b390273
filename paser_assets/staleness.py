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

    def __bool__(self) -> bool:
        return bool(self.unpartitioned) or any(self.by_partition.values())

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
            if resolver.get_status(key) in (StaleStatus.STALE, StaleStatus.MISSING):
                result.unpartitioned.add(key)
            continue
        for partition in node.partitions_def.get_partition_keys(dynamic_partitions_store=instance):
            if resolver.get_status(key, partition) in (StaleStatus.STALE, StaleStatus.MISSING):
                result.by_partition.setdefault(str(partition), set()).add(key)
    return result
