"""Which assets are stale or missing, as the Dagster UI reports them.

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
    """Stale or missing assets, and why each one is listed (by its name as :meth:`describe` gives it)."""

    keys: set[dg.AssetKey] = field(default_factory=set)
    reasons: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def explain(self) -> list[str]:
        """``name: reason`` for every listed asset, in name order."""
        return [f"{name}: {self.reasons.get(name, 'stale')}" for name in self.describe()]

    def describe(self) -> list[str]:
        return sorted(key.to_user_string() for key in self.keys)

    def within(self, scope: set[dg.AssetKey]) -> StaleSet:
        keys = self.keys & scope
        names = {key.to_user_string() for key in keys}
        return StaleSet(keys, {name: reason for name, reason in self.reasons.items() if name in names})


def stale_or_missing(defs: dg.Definitions, instance: dg.DagsterInstance) -> StaleSet:
    """Every materializable asset whose status is STALE or MISSING."""
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance, graph, view)
    result = StaleSet()
    for key in graph.materializable_asset_keys:
        status = resolver.get_status(key)
        if status in (StaleStatus.STALE, StaleStatus.MISSING):
            result.keys.add(key)
            result.reasons[key.to_user_string()] = _reason(resolver, status, key)
    return result


def _reason(resolver: CachingStaleStatusResolver, status: StaleStatus, key: dg.AssetKey) -> str:
    """Dagster's own words for why an asset is stale, e.g. 'updated data (wanda-50/pruned_checkpoint)'."""
    if status == StaleStatus.MISSING:
        return "never materialized"
    causes = []
    for cause in resolver.get_stale_causes(key):
        dependency = cause.dependency
        where = f" ({dependency.asset_key.to_user_string()})" if dependency is not None else ""
        causes.append(f"{cause.reason}{where}")
    return "; ".join(dict.fromkeys(causes)) or "stale"
