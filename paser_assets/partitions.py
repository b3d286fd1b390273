"""The partition scheme, in one place.

- Everything that reads a pruned model is partitioned by ``variant``, a dynamic partition whose keys are
  the names in the variant registry.
- ``degradation_scores`` is partitioned by ``shard`` x ``variant`` so that a backfill spreads scoring.
- The recovery assets that train or evaluate one selection method are partitioned by ``method`` x
  ``variant``; the methods are the registered ones (:mod:`paser_assets.methods`), the product's and those of
  installed plugins.

The runner, the registry, the assets and the tests all read partitions through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg

from paser_assets.methods import method_names

VARIANT = "variant"
SHARD = "shard"
METHOD = "method"

Kind = Literal["shared", "variant", "shard", "method"]

VARIANTS = dg.DynamicPartitionsDefinition(name=VARIANT)
METHODS = dg.MultiPartitionsDefinition({METHOD: dg.StaticPartitionsDefinition(list(method_names())), VARIANT: VARIANTS})


def shards(count: int) -> dg.MultiPartitionsDefinition:
    """Partitions of degradation_scores: ``count`` scoring shards x the variants."""
    return dg.MultiPartitionsDefinition(
        {SHARD: dg.StaticPartitionsDefinition([str(i) for i in range(count)]), VARIANT: VARIANTS}
    )


@dataclass(frozen=True)
class PartitionKey:
    """A partition of any PASER asset, by dimension: always a variant, sometimes a shard or a method."""

    variant: str
    shard: int | None = None
    method: str | None = None

    @classmethod
    def of(cls, context: dg.AssetExecutionContext) -> PartitionKey:
        return cls.parse(context.partition_key)

    @classmethod
    def parse(cls, key: str | dg.MultiPartitionKey) -> PartitionKey:
        """A key as Dagster gives it: ``variant``, or a multi-partition key (``shard|variant`` / ``method|variant``)."""
        if isinstance(key, dg.MultiPartitionKey):
            dimensions = key.keys_by_dimension
        elif "|" in key:
            first, variant = key.split("|", 1)
            dimensions = {SHARD if first.isdigit() else METHOD: first, VARIANT: variant}
        else:
            return cls(key)
        shard = dimensions.get(SHARD)
        return cls(dimensions[VARIANT], int(shard) if shard is not None else None, dimensions.get(METHOD))

    @property
    def dagster_key(self) -> str | dg.MultiPartitionKey:
        if self.shard is not None:
            return dg.MultiPartitionKey({SHARD: str(self.shard), VARIANT: self.variant})
        if self.method is not None:
            return dg.MultiPartitionKey({METHOD: self.method, VARIANT: self.variant})
        return self.variant


def kind(partitions_def: Any) -> Kind:
    """How an asset is partitioned: shared (not at all), variant, shard (x variant) or method (x variant)."""
    if partitions_def is None:
        return "shared"
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return "shard" if SHARD in partitions_def.partition_dimension_names else "method"
    return "variant"


def keys_for_variant(partitions_def: Any, variant: str, methods: list[str] | tuple[str, ...]) -> list[PartitionKey]:
    """The partitions of one variant that an asset with ``partitions_def`` runs (only the configured methods)."""
    found = kind(partitions_def)
    if found == "variant":
        return [PartitionKey(variant)]
    if found == "shard":
        count = len(partitions_def.get_partitions_def_for_dimension(SHARD).get_partition_keys())
        return [PartitionKey(variant, shard=i) for i in range(count)]
    if found == "method":
        return [PartitionKey(variant, method=m) for m in methods]
    return []
