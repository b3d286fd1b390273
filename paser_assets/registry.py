"""The variant registry: which pruned variants exist, in DuckDB (their specs) and in Dagster (partitions).

The ``variants`` table is the source of truth for what each variant is; the Dagster instance's
dynamic partitions ``variant`` mirror its names. Configured variants (``PASER_VARIANTS``, or the
single variant of ``PASER_PRUNED_MODEL`` / the pruning settings) are added by :func:`sync_variants`;
:func:`remove_variant` deletes a variant's rows from every per-variant table and nothing else.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import dagster as dg
import pandas as pd

from paser_assets import storage
from paser_assets.models.pruning import PruneRecipe
from paser_assets.partitions import VARIANTS
from paser_assets.resources import PaserConfig, PaserDuckDB
from paser_assets.variants import Variant, VariantError, configured_variants, parse_variant_spec

REGISTRY_TABLE = "variants"
PRUNED_TABLE = "pruned_checkpoints"
# Tables holding one block of rows per variant, in a ``variant`` column.
VARIANT_TABLES = (PRUNED_TABLE, "degradation_scores", "capability_degradation", "selection", "concept_graph")


def _registry_frame(variants: Iterable[Variant]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"variant": v.name, "kind": v.kind, "spec": v.spec, "fingerprint": v.fingerprint()} for v in variants],
        columns=["variant", "kind", "spec", "fingerprint"],
    )


def registered_variants(database: PaserDuckDB, recipe_defaults: PruneRecipe | None = None) -> dict[str, Variant]:
    """Variants recorded in the DuckDB registry, by name."""
    with database.get_connection() as conn:
        if not storage.table_exists(conn, database.schema_name, REGISTRY_TABLE):
            return {}
        frame = storage.read_table(conn, database.schema_name, REGISTRY_TABLE)
    return {
        row.variant: parse_variant_spec(row.variant, row.spec, recipe_defaults) for row in frame.itertuples(index=False)
    }


def variant_for(database: PaserDuckDB, recipe_defaults: PruneRecipe, name: str) -> Variant:
    """The registered variant ``name``; a clear error when it was never registered."""
    variants = registered_variants(database, recipe_defaults)
    if name not in variants:
        raise VariantError(
            f"variant {name!r} is not registered in {database.database}: add it with "
            f"`paser variants add {name} SPEC` or list it in PASER_VARIANTS"
        )
    return variants[name]


def register_variants(database: PaserDuckDB, variants: Iterable[Variant], replace: bool = False) -> list[str]:
    """Record variants in the registry; returns the names that are new or changed.

    A name already registered with another spec is an error unless ``replace`` is set, so that a
    typo in PASER_VARIANTS cannot silently redefine a variant whose results are stored.
    """
    variants = list(variants)
    with database.write() as conn:
        schema = database.schema_name
        existing = (
            storage.read_table(conn, schema, REGISTRY_TABLE)
            if storage.table_exists(conn, schema, REGISTRY_TABLE)
            else _registry_frame([])
        )
        known = dict(zip(existing["variant"], existing["spec"], strict=True))
        changed = []
        for variant in variants:
            if variant.name in known and known[variant.name] != variant.spec and not replace:
                raise VariantError(
                    f"variant {variant.name!r} is registered as {known[variant.name]!r}, not {variant.spec!r}; "
                    "use another name, or `paser variants add --replace` to redefine it"
                )
            if known.get(variant.name) != variant.spec:
                changed.append(variant.name)
        if changed:
            keep = existing[~existing["variant"].isin(changed)]
            fresh = _registry_frame(v for v in variants if v.name in changed)
            storage.replace_table(conn, schema, REGISTRY_TABLE, pd.concat([keep, fresh], ignore_index=True))
    return changed


def sync_variants(instance: dg.DagsterInstance, database: PaserDuckDB, config: PaserConfig) -> list[str]:
    """Register the configured variants and make sure each has its Dagster partition; returns all names."""
    variants = configured_variants(config.models.variants, config.models.pruned_model, config.pruning.recipe())
    register_variants(database, variants)
    names = [v.name for v in variants]
    missing = [n for n in names if not instance.has_dynamic_partition(VARIANTS.name, n)]
    if missing:
        instance.add_dynamic_partitions(VARIANTS.name, missing)
    return names


def add_variant(instance: dg.DagsterInstance, database: PaserDuckDB, variant: Variant, replace: bool = False) -> None:
    register_variants(database, [variant], replace=replace)
    if not instance.has_dynamic_partition(VARIANTS.name, variant.name):
        instance.add_dynamic_partitions(VARIANTS.name, [variant.name])


def remove_variant(instance: dg.DagsterInstance, database: PaserDuckDB, name: str, export_dir: Path) -> dict[str, int]:
    """Delete a variant: its rows in every per-variant table, its export files, its partition and its registry row.

    Returns the number of rows deleted per table. Other variants' rows are not touched.
    """
    deleted: dict[str, int] = {}
    with database.write() as conn:
        schema = database.schema_name
        for table in (*VARIANT_TABLES, REGISTRY_TABLE):
            if storage.table_exists(conn, schema, table):
                qualified = storage.qualified(conn, schema, table)
                count = conn.execute(f"SELECT count(*) FROM {qualified} WHERE variant = ?", [name]).fetchall()[0][0]
                conn.execute(f"DELETE FROM {qualified} WHERE variant = ?", [name])
                deleted[table] = int(count)
    folder = export_dir / name
    if folder.is_dir() and folder.resolve().parent == export_dir.resolve():
        shutil.rmtree(folder)
    if instance.has_dynamic_partition(VARIANTS.name, name):
        instance.delete_dynamic_partition(VARIANTS.name, name)
    return deleted
