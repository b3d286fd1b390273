"""Concepts, the concept-consistent selection with its graph, the SQL view and the export (checks: checks.py)."""

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd

from paser_assets import report, storage
from paser_assets.assets.models import CHECKPOINTS
from paser_assets.assets.semantic import SEMANTIC_GROUP
from paser_assets.core.concepts import extract_concepts
from paser_assets.core.consistency import SELECTED
from paser_assets.core.selection import acceptance_per_cluster, decision_table, graph_table, paser_select
from paser_assets.locations import EXPORT_FOLDER, beside
from paser_assets.per_variant import variant_asset, variant_key, variant_multi_asset, variant_of
from paser_assets.resources import PaserConfig, PaserDuckDB, named_when_disk_full
from paser_assets.settings import reads
from paser_assets.tables import table_metadata
from paser_assets.variants import validate_variant_name

SELECTED_VIEW = "selected_instructions"
EXPORT_FORMATS = ("json", "jsonl", "parquet")


@dg.asset(
    deps=["recovery_pool"],
    group_name=SEMANTIC_GROUP,  # shared and model-independent like the clusters; the lineage reads left to right
    code_version="1",
    kinds={"duckdb", "scikitlearn"},
    description="Per sample: its concepts, the top TF-IDF keyphrases of instruction + input + output, stemmed.",
)
@reads("selection.concepts_per_sample")
def sample_concepts(paser: PaserConfig, duckdb: PaserDuckDB) -> dg.MaterializeResult:
    pool = duckdb.read("recovery_pool", "sample_id, instruction, input, output")
    texts = [f"{i}\n{x}\n{o}" for i, x, o in zip(pool["instruction"], pool["input"], pool["output"], strict=True)]
    concepts = extract_concepts(texts, paser.selection.concepts_per_sample)
    table = pd.DataFrame(
        {"sample_id": pool["sample_id"], "concepts": concepts, "n_concepts": [len(c) for c in concepts]}
    ).astype({"n_concepts": "int64"})
    with duckdb.write() as conn:
        storage.replace_table(conn, "sample_concepts", table)
    examples = pool.assign(concepts=[", ".join(c) for c in concepts])[["instruction", "concepts"]].head(6)
    examples["instruction"] = examples["instruction"].str.slice(0, 80)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(table)),
        metadata={
            **table_metadata("sample_concepts", duckdb.schema_name, len(table)),
            "distinct_concepts": len({c for row in concepts for c in row}),
            "examples": dg.MetadataValue.md(examples.to_markdown(index=False)),
        },
    )


def selectable_candidates(duckdb: PaserDuckDB, variant: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A variant's selectable samples (the held-out split excluded) with their scores, cluster, concepts and
    text, by sample_id; and the per-cluster CDS and budget. PASER and every baseline choose from these."""
    with duckdb.get_connection() as conn:
        frame = conn.execute(
            """
            SELECT s.sample_id, c.cluster, s.ies, s.jsd, s.original_nll, s.pruned_nll, s.cost, s.response_tokens,
                   s.prompt_tokens + s.response_tokens AS tokens, k.concepts, p.instruction, p.input, p.output
            FROM degradation_scores s
            JOIN clusters c USING (sample_id)
            JOIN sample_concepts k USING (sample_id)
            JOIN recovery_pool p USING (sample_id)
            WHERE s.variant = ?
              AND s.sample_id NOT IN (SELECT sample_id FROM holdout_split)
            ORDER BY s.sample_id
            """,
            [variant],
        ).df()
        budgets = conn.execute(
            "SELECT cluster, cds, budget FROM capability_degradation WHERE variant = ? ORDER BY cluster", [variant]
        ).df()
    if frame.empty or budgets.empty:
        raise dg.Failure(description=f"no scores or budgets for variant {variant!r}: materialize its scores first")
    return frame, budgets


def _create_view(conn: duckdb.DuckDBPyConnection) -> None:
    """The view of selected rows with their text and scores, in the connection's current schema.

    Its body names tables without catalog or schema: DuckDB resolves them in the view's own schema,
    and rejects catalog-qualified names inside a view when catalog and schema share a name.
    """
    conn.execute(
        f"""
        CREATE OR REPLACE VIEW {SELECTED_VIEW} AS
        SELECT s.variant, s.sample_id, s.cluster, s.rank, s.ies, s.jsd, d.cost, d.original_nll, d.pruned_nll,
               p.instruction, p.input, p.output, p.family, p.source, p.source_row
        FROM selection s
        JOIN recovery_pool p USING (sample_id)
        JOIN degradation_scores d ON d.variant = s.variant AND d.sample_id = s.sample_id
        WHERE s.decision = '{SELECTED}'
        """
    )


SELECTION_PARENTS = [
    "capability_degradation",
    "degradation_scores",
    "clusters",
    "sample_concepts",
    "holdout_split",
    CHECKPOINTS,
]


@variant_multi_asset(
    deps=SELECTION_PARENTS,
    outputs={
        "selection": dict(
            code_version="1",
            kinds={"duckdb"},
            description="Every candidate considered, in each cluster's walk order (IES by default), with its decision "
            "(selected, concept_conflict, budget_full) and conflicting concept pairs.",
        ),
        "concept_graph": dict(
            code_version="1",
            kinds={"duckdb"},
            description="The Concept Consistency Graph of the selected samples: concept pairs and co-occurrences.",
        ),
    },
)
@reads("selection.conflict_tolerance")
def selection(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> Iterator[dg.MaterializeResult]:
    tolerance = paser.selection.conflict_tolerance
    variant = variant_of(context)
    frame, budgets = selectable_candidates(duckdb, variant)
    result = paser_select(frame, budgets, tolerance)
    table, graph = decision_table(result, variant), graph_table(result, variant)
    with duckdb.write() as conn:
        storage.replace_partition(conn, "selection", {"variant": variant}, table)
        storage.replace_partition(conn, "concept_graph", {"variant": variant}, graph)
        _create_view(conn)
    per_cluster = acceptance_per_cluster(table, budgets)
    considered = int(per_cluster["considered"].sum())
    yield dg.MaterializeResult(
        asset_key=variant_key(variant, "selection"),
        data_version=dg.DataVersion(storage.content_hash(table)),
        metadata={
            **table_metadata("selection", duckdb.schema_name, len(table)),
            "budget": result.budget,
            "selected": result.selected,
            "shortfall": result.shortfall,
            "refill_rounds": result.refill_rounds,
            "conflict_tolerance": tolerance,
            "acceptance_rate": round(int(per_cluster["selected"].sum()) / considered, 4) if considered else 0.0,
            "per_cluster": dg.MetadataValue.md(per_cluster.to_markdown(index=False)),
            "query": dg.MetadataValue.text(_view_query(duckdb, variant)),
        },
    )
    yield dg.MaterializeResult(
        asset_key=variant_key(variant, "concept_graph"),
        data_version=dg.DataVersion(storage.content_hash(graph)),
        metadata={
            **table_metadata("concept_graph", duckdb.schema_name, len(graph)),
            "concepts": len(result.graph.nodes),
        },
    )


def _view_query(duckdb: PaserDuckDB, variant: str) -> str:
    """The SQL to read a variant's selection in the `duckdb` shell. It sets the schema instead of naming the
    catalog: DuckDB names that after the file (up to its first dot), which this must not guess."""
    return f"SET schema = '{duckdb.schema_name}'; SELECT * FROM {SELECTED_VIEW} WHERE variant = '{variant}'"


def export_folder(export_dir: str | None, database: str) -> Path:
    """The export folder: ``export_dir``, or ``paser_export`` beside the DuckDB file."""
    return Path(export_dir) if export_dir else beside(database, EXPORT_FOLDER)


def safe_export_path(folder: Path, name: str) -> Path:
    """``folder / name``, refusing any name that would land outside ``folder`` (or in a subfolder)."""
    path = (folder / name).resolve()
    if path.parent != folder.resolve() or name in ("", ".", ".."):
        raise ValueError(f"export name {name!r} would leave the export folder {folder}")
    return path


def _alpaca_records(rows: pd.DataFrame) -> list[dict[str, str]]:
    return rows[["instruction", "input", "output"]].to_dict(orient="records")


def _write_json(rows: pd.DataFrame, path: Path) -> None:
    path.write_text(json.dumps(_alpaca_records(rows), ensure_ascii=False, indent=1), encoding="utf-8")


def _write_jsonl(rows: pd.DataFrame, path: Path) -> None:
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in _alpaca_records(rows))
    path.write_text(lines, encoding="utf-8")


def _write_parquet(rows: pd.DataFrame, path: Path) -> None:
    rows.to_parquet(path, index=False)


# How each file of an export is written (in the order of EXPORT_FORMATS). They must agree: see export_records.
EXPORT_WRITERS: dict[str, Callable[[pd.DataFrame, Path], None]] = {
    "json": _write_json,
    "jsonl": _write_jsonl,
    "parquet": _write_parquet,
}


def export_records(rows: pd.DataFrame, folder: Path, stem: str = "selection") -> dict[str, Path]:
    """Write Alpaca records (instruction, input, output) as JSON, JSONL and Parquet into ``folder``; returns
    the paths.

    The three files are one set: they are written into a new staging folder beside ``folder``, which then
    replaces ``folder`` whole (:func:`storage.replace_folder`). A reader, or a run killed at any point, finds
    the previous set or the new one, never files of both; what a killed run left aside is deleted here.
    """
    folder = safe_export_path(folder.parent, folder.name)
    names = {fmt: safe_export_path(folder, f"{stem}.{fmt}").name for fmt in EXPORT_FORMATS}
    storage.remove_leftover_staging(folder)
    staging = storage.staging_folder_beside(folder)
    try:
        for fmt in EXPORT_FORMATS:
            EXPORT_WRITERS[fmt](rows, staging / names[fmt])
            os.chmod(staging / names[fmt], 0o644)  # an export is meant to be shared
        os.chmod(staging, 0o755)  # mkdtemp makes it private
        storage.replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {fmt: folder / name for fmt, name in names.items()}


@variant_asset(
    deps=["selection", "recovery_pool", CHECKPOINTS],
    code_version="2",  # 2: also writes report.html
    kinds={"parquet", "json"},
    description="The selected instructions as Alpaca JSON, JSONL and a Parquet file that `datasets` loads.",
)
@reads("selection.export_dir")
def selection_export(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    variant = validate_variant_name(variant_of(context))
    with duckdb.get_connection() as conn:
        rows = conn.execute(
            f"SELECT sample_id, cluster, instruction, input, output, jsd, ies FROM {SELECTED_VIEW} "
            "WHERE variant = ? ORDER BY cluster, rank",
            [variant],
        ).df()
    folder = export_folder(paser.selection.export_dir, duckdb.database)
    target = safe_export_path(folder, variant)  # the variant's folder: its export files and report.html
    kept = f"the previous export of {variant} is kept as it was"
    try:
        with named_when_disk_full(folder, "PASER_EXPORT_DIR", kept):
            paths = export_records(rows, target)
    except OSError as error:  # not a full disk: a folder that cannot be written, say
        problem = f"cannot write the export into {folder} (PASER_EXPORT_DIR): {error}; {kept}"
        raise dg.Failure(description=problem) from None
    # After the files: the report describes the export as published. The export replaced the variant's folder
    # whole, so a full disk here leaves the new export without a report, and says so in one line.
    report_kept = f"the export of {variant} is written, without its report.html"
    with named_when_disk_full(folder, "PASER_EXPORT_DIR", report_kept), duckdb.get_connection() as conn:
        report_path = report.write_report(conn, variant, target)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(rows)),
        metadata={
            "dagster/row_count": dg.MetadataValue.int(len(rows)),
            **{f"{fmt}_path": dg.MetadataValue.path(str(path)) for fmt, path in paths.items()},
            "report_path": dg.MetadataValue.path(str(report_path)),
            "load_with": dg.MetadataValue.text(f"datasets.load_dataset('parquet', data_files='{paths['parquet']}')"),
        },
    )
