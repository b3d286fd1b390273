"""The ``recovery_pool`` asset and its rejection table."""

from pathlib import Path

import dagster as dg

from paser_assets import storage
from paser_assets.core.baselines import seeded_order
from paser_assets.locations import EXPORT_FOLDER, INSTANCE_FOLDER, MODEL_CACHE_FOLDER, beside
from paser_assets.pool import PoolInputError, load_pool
from paser_assets.resources import PaserConfig, PaserDuckDB
from paser_assets.settings import reads
from paser_assets.tables import table_metadata

POOL_GROUP = "pool"
HOLDOUT_TABLE = "holdout_split"


def _own_outputs(database: str) -> list[Path]:
    """The plugin's outputs at their default places beside the DuckDB file, never read as data. Moved ones
    (PASER_MODEL_CACHE, PASER_EXPORT_DIR) are recognised by what they hold (see paser_assets.pool.folders)."""
    if database == ":memory:":
        return []
    return [
        Path(database).resolve(),
        *(beside(database, f) for f in (MODEL_CACHE_FOLDER, EXPORT_FOLDER, INSTANCE_FOLDER)),
    ]


@dg.asset(
    group_name=POOL_GROUP,
    code_version="1",
    kinds={"duckdb"},
    description="The instruction pool: normalised Alpaca rows keyed by a content hash, duplicates kept once. "
    "Input rows that could not be used go to the table recovery_pool_rejected with their file, row and reason.",
)
@reads("pool.dataset", "pool.dataset_split", "pool.field_map", "pool.max_chars", "pool.demo_size", "seed")
def recovery_pool(context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB) -> dg.MaterializeResult:
    settings = paser.pool
    try:
        build = load_pool(
            settings.dataset,
            split=settings.dataset_split,
            field_map=settings.field_map,
            max_chars=settings.max_chars,
            demo_size=settings.demo_size,
            seed=paser.seed,
            exclude=_own_outputs(duckdb.database),
        )
    except PoolInputError as error:
        raise dg.Failure(description=str(error)) from None
    context.log.info(
        f"read {build.rows_read} rows: {len(build.accepted)} kept, {len(build.rejected)} rejected, "
        f"{build.duplicates_removed} duplicates merged"
    )
    with duckdb.write() as conn:
        storage.replace_table(conn, "recovery_pool", build.accepted)
        storage.replace_table(conn, "recovery_pool_rejected", build.rejected)
    families = build.accepted["family"].value_counts().sort_index()
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(build.accepted)),
        metadata={
            **table_metadata("recovery_pool", duckdb.schema_name, len(build.accepted)),
            "source": dg.MetadataValue.text(
                settings.dataset or f"demo pool (size {settings.demo_size}, seed {paser.seed})"
            ),
            "rows_read": build.rows_read,
            "duplicates_merged": build.duplicates_removed,
            "rejected": len(build.rejected),
            "rejected_table": dg.MetadataValue.text(f"{duckdb.schema_name}.recovery_pool_rejected"),
            "rejection_reasons": dg.MetadataValue.json(build.rejection_counts),
            "files_skipped": dg.MetadataValue.json([f"{p.path}: {p.reason}" for p in build.skipped]),
            "families": dg.MetadataValue.json({str(k): int(v) for k, v in families.items()}),
            "preview": dg.MetadataValue.md(
                build.accepted[["sample_id", "family", "instruction"]].head(8).to_markdown(index=False)
            ),
        },
    )


@dg.asset(
    deps=["recovery_pool"],
    group_name=POOL_GROUP,
    code_version="1",
    kinds={"duckdb"},
    description="Samples kept out of every selection, to measure recovery on: a seeded choice by sample_id.",
)
@reads("pool.holdout_fraction", "pool.holdout_max", "seed")
def holdout_split(paser: PaserConfig, duckdb: PaserDuckDB) -> dg.MaterializeResult:
    settings = paser.pool
    pool = duckdb.read("recovery_pool", "sample_id, family")
    size = min(settings.holdout_max, round(settings.holdout_fraction * len(pool)))
    if size >= len(pool):
        raise dg.Failure(description=f"PASER_HOLDOUT={settings.holdout_fraction} leaves no selectable sample")
    chosen = set(seeded_order(pool["sample_id"].tolist(), paser.seed)[:size])
    table = pool[pool["sample_id"].isin(chosen)].sort_values("sample_id").reset_index(drop=True)
    with duckdb.write() as conn:
        storage.replace_table(conn, HOLDOUT_TABLE, table)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(table)),
        metadata={
            **table_metadata(HOLDOUT_TABLE, duckdb.schema_name, len(table)),
            "fraction": settings.holdout_fraction,
            "selectable": len(pool) - len(table),
        },
    )
