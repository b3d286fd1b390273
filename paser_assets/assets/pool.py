"""The ``recovery_pool`` asset and its rejection table."""

from collections.abc import Iterator

import dagster as dg

from paser_assets import storage
from paser_assets.core.baselines import seeded_order
from paser_assets.pool import PoolInputError, load_pool
from paser_assets.resources import PaserConfig, PaserDuckDB
from paser_assets.tables import table_metadata

POOL_GROUP = "pool"
HOLDOUT_TABLE = "holdout_split"


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "recovery_pool",
            group_name=POOL_GROUP,
            code_version="1",
            kinds={"duckdb"},
            description="The instruction pool: normalised Alpaca rows keyed by a content hash, duplicates kept once.",
        ),
        dg.AssetSpec(
            "recovery_pool_rejected",
            group_name=POOL_GROUP,
            code_version="1",
            kinds={"duckdb"},
            description="Input rows that could not be used, with their file, row and reason.",
        ),
    ],
)
def recovery_pool(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> Iterator[dg.MaterializeResult]:
    try:
        build = load_pool(
            paser.dataset,
            split=paser.dataset_split,
            field_map=paser.field_map,
            max_chars=paser.max_chars,
            demo_size=paser.demo_size,
            seed=paser.seed,
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
    yield dg.MaterializeResult(
        asset_key="recovery_pool",
        data_version=dg.DataVersion(storage.content_hash(build.accepted)),
        metadata={
            **table_metadata("recovery_pool", duckdb.schema_name, len(build.accepted)),
            "source": dg.MetadataValue.text(paser.dataset or f"demo pool (size {paser.demo_size}, seed {paser.seed})"),
            "rows_read": build.rows_read,
            "duplicates_merged": build.duplicates_removed,
            "rejected": len(build.rejected),
            "families": dg.MetadataValue.json({str(k): int(v) for k, v in families.items()}),
            "preview": dg.MetadataValue.md(
                build.accepted[["sample_id", "family", "instruction"]].head(8).to_markdown(index=False)
            ),
        },
    )
    yield dg.MaterializeResult(
        asset_key="recovery_pool_rejected",
        data_version=dg.DataVersion(storage.content_hash(build.rejected)),
        metadata={
            **table_metadata("recovery_pool_rejected", duckdb.schema_name, len(build.rejected)),
            "reasons": dg.MetadataValue.json(build.rejection_counts),
        },
    )


@dg.asset(
    deps=["recovery_pool"],
    group_name=POOL_GROUP,
    code_version="1",
    kinds={"duckdb"},
    description="Samples kept out of every selection, to measure recovery on: a seeded choice by sample_id.",
)
def holdout_split(paser: PaserConfig, duckdb: PaserDuckDB) -> dg.MaterializeResult:
    pool = duckdb.read("recovery_pool", "sample_id, family")
    size = min(paser.holdout_max, round(paser.holdout_fraction * len(pool)))
    if size >= len(pool):
        raise dg.Failure(description=f"PASER_HOLDOUT={paser.holdout_fraction} leaves no selectable sample")
    chosen = set(seeded_order(pool["sample_id"].tolist(), paser.seed)[:size])
    table = pool[pool["sample_id"].isin(chosen)].sort_values("sample_id").reset_index(drop=True)
    with duckdb.write() as conn:
        storage.replace_table(conn, HOLDOUT_TABLE, table)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(table)),
        metadata={
            **table_metadata(HOLDOUT_TABLE, duckdb.schema_name, len(table)),
            "fraction": paser.holdout_fraction,
            "selectable": len(pool) - len(table),
        },
    )
