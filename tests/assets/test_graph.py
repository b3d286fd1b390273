"""The whole asset graph materialized through Dagster into a real DuckDB file, with tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.graph import declared_settings
from paser_assets.models.device import resolve_device, resolve_precision
from paser_assets.runner import run_graph as materialize
from paser_assets.settings import READ_LOG, all_settings
from paser_assets.tables import TABLES

pytestmark = pytest.mark.system

SEMANTIC_TABLES = ["recovery_pool", "recovery_pool_rejected", "instruction_embeddings", "manifold", "clusters"]


def make_defs(tmp_path: Path, **settings) -> tuple[dg.Definitions, PaserDuckDB]:
    database = PaserDuckDB(database=str(tmp_path / "paser.duckdb"))
    config = PaserConfig(demo_size=96, model_cache_dir=str(tmp_path / "models"), **settings)
    return build_definitions(config, database), database


def latest(instance: dg.DagsterInstance, key: str):
    """The latest materialization event of an asset, named as the UI names it (``<variant>/<asset>``)."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey.from_user_string(key)), limit=1
    ).records
    return records[0].event_log_entry if records else None


def query(database: PaserDuckDB, sql: str) -> list[tuple]:
    with duckdb.connect(database.database, read_only=True) as conn:
        conn.execute("USE paser.paser")
        return conn.execute(sql).fetchall()


@pytest.fixture(scope="module")
def identical_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path):
    """Everything materialized with pruned = original (the same checkpoint folder)."""
    tmp_path = tmp_path_factory.mktemp("identical")
    defs, database = make_defs(tmp_path, original_model=str(tiny_llama_dir), pruned_model=str(tiny_llama_dir))
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(defs, instance=instance)
    return result, database, instance


def test_every_asset_materializes_into_duckdb(identical_run) -> None:
    result, database, _ = identical_run
    assert result.success
    assert set(result.materialized) == {
        "recovery_pool",
        "instruction_embeddings",
        "manifold",
        "clusters",
        "cluster_profiles",
        "sample_concepts",
        "holdout_split",
        "external/pruned_model",
        "external/degradation_scores",
        "external/capability_degradation",
        "external/selection",
        "external/concept_graph",
        "external/selection_export",
    }
    assert result.observed == ["external/pruned_checkpoint", "original_model"]
    pool_rows = query(database, "SELECT count(*) FROM recovery_pool")[0][0]
    assert 0 < pool_rows <= 96
    for table in [*SEMANTIC_TABLES[2:], "degradation_scores"]:
        assert query(database, f"SELECT count(*) FROM {table}")[0][0] == pool_rows, table


def test_tables_match_the_documented_schema(identical_run) -> None:
    _, database, _ = identical_run
    stored = {
        row[0]
        for row in query(
            database,
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'paser' AND table_type = 'BASE TABLE'",
        )
    }
    assert {"recovery_pool", "clusters", "cluster_profiles", "degradation_scores", "selection"} <= stored
    assert stored <= set(TABLES), "a table is written that tables.py does not declare"
    for table in stored:
        columns = {row[0]: row[1] for row in query(database, f"DESCRIBE {table}")}
        assert columns == TABLES[table].types, table


def test_metadata_carries_schema_row_count_and_cluster_map(identical_run) -> None:
    _, _, instance = identical_run
    for key in ["recovery_pool", "clusters", "external/degradation_scores", "external/capability_degradation"]:
        event = latest(instance, key)
        assert event is not None
        metadata = event.asset_materialization.metadata
        assert "dagster/column_schema" in metadata, key
        assert metadata["dagster/row_count"].value > 0, key
    clusters = latest(instance, "clusters").asset_materialization.metadata
    assert clusters["cluster_map"].value.startswith("![cluster map](data:image/png;base64,")
    assert clusters["n_clusters"].value >= 2
    assert "eigengap" in clusters["k_criterion"].value
    capability = latest(instance, "external/capability_degradation").asset_materialization.metadata
    assert capability["cds_per_cluster"].value.startswith("![")
    assert capability["budget_per_cluster"].value.startswith("![")


def test_pruned_equal_to_original_scores_exactly_zero(identical_run) -> None:
    _, database, _ = identical_run
    jsd_values = [row[0] for row in query(database, "SELECT jsd FROM degradation_scores")]
    assert jsd_values and all(value == 0.0 for value in jsd_values)
    nll_gap = query(database, "SELECT max(abs(original_nll - pruned_nll)) FROM degradation_scores")[0][0]
    assert nll_gap == 0.0


def test_budget_is_allocated_exactly(identical_run) -> None:
    _, database, _ = identical_run
    pool_rows = query(database, "SELECT count(*) FROM recovery_pool")[0][0]
    held_out = query(database, "SELECT count(*) FROM holdout_split")[0][0]
    assert held_out == round(0.1 * pool_rows)  # the default held-out split is never selectable
    total, over_capacity, sizes = query(
        database, "SELECT sum(budget), count(*) FILTER (WHERE budget > size), sum(size) FROM capability_degradation"
    )[0]
    assert sizes == pool_rows - held_out
    assert total == math.floor(0.2 * (pool_rows - held_out) + 0.5)
    assert over_capacity == 0


def test_built_in_pruning_degrades_and_rerun_reuses_scores(tmp_path: Path, tiny_llama_dir: Path) -> None:
    defs, database = make_defs(tmp_path, original_model=str(tiny_llama_dir), prune_method="magnitude", budget=10)
    instance = dg.DagsterInstance.ephemeral()
    first = materialize(defs, instance=instance)
    assert first.success
    jsd_min, jsd_max = query(database, "SELECT min(jsd), max(jsd) FROM degradation_scores")[0]
    assert 0.0 < jsd_min <= jsd_max <= math.log(2)
    first_scores = latest(instance, "magnitude-50/degradation_scores").asset_materialization
    assert first_scores.metadata["float16_rounding_jsd_error"].value.startswith("mean ")
    # 'auto' keeps float32 heads for the tiny model's small vocabulary, on any CPU.
    assert first_scores.metadata["output_head_precision"].value == "float32"
    # The decoder's precision is recorded: PASER_PRECISION=auto as it resolves on this machine's CPU.
    assert first_scores.metadata["precision"].value == resolve_precision("auto", resolve_device("auto"))
    assert first_scores.metadata["device"].value == str(resolve_device("auto"))
    sparsity = query(database, "SELECT sparsity FROM pruned_model")[0][0]
    assert abs(sparsity - 0.5) < 0.01
    assert query(database, "SELECT sum(budget) FROM capability_degradation")[0][0] == 10
    before = query(database, "SELECT * FROM degradation_scores ORDER BY sample_id")

    selection = 'key:"magnitude-50/pruned_model" or key:"magnitude-50/degradation_scores"'
    second = materialize(defs, selection=selection, instance=instance)
    assert second.success
    assert second.materialized == ["magnitude-50/degradation_scores", "magnitude-50/pruned_model"]
    scores = latest(instance, "magnitude-50/degradation_scores").asset_materialization
    assert scores.metadata["scored_now"].value == "0"
    assert scores.metadata["precision"].value == first_scores.metadata["precision"].value  # the reused scores'
    assert query(database, "SELECT * FROM degradation_scores ORDER BY sample_id") == before


def test_bad_budget_fails_with_the_setting_named(tmp_path: Path, tiny_llama_dir: Path) -> None:
    defs, _ = make_defs(tmp_path, original_model=str(tiny_llama_dir), pruned_model=str(tiny_llama_dir), budget=5000)
    result = materialize(defs, instance=dg.DagsterInstance.ephemeral())
    assert not result.success
    assert any("PASER_BUDGET" in failure for failure in result.failures())


def test_asset_checks_run_with_the_graph_on_the_variants_assets(identical_run) -> None:
    result, _, _ = identical_run
    evaluations = {(e.check_name, e.asset_key.to_user_string()): e for e in result.get_asset_check_evaluations()}
    assert {key: e.passed for key, e in evaluations.items()} == {
        ("budget_met", "external/selection"): True,
        ("no_sample_selected_twice", "external/selection"): True,
        ("selected_samples_in_pool", "external/selection"): True,
        ("jsd_in_range", "external/degradation_scores"): True,
        # pruned = original scores JSD 0 everywhere: no cluster is more degraded than another, and the
        # random tiny model is a near-uniform guesser: both are warned about, neither fails the run
        ("degradation_signal", "external/capability_degradation"): False,
    }
    signal = evaluations["degradation_signal", "external/capability_degradation"]
    assert signal.severity == dg.AssetCheckSeverity.WARN and result.success
    assert "does not separate" in signal.description and "as well as chance" in signal.description


def test_every_asset_reads_the_result_settings_it_declares(identical_run) -> None:
    """A declared setting that an asset never reads would only make it stale for nothing."""
    result, _, _ = identical_run
    defs = build_definitions(PaserConfig(), PaserDuckDB(database=":memory:"), variants=["external"])
    materialized = set(result.materialized)
    for asset in defs.assets or []:
        if not isinstance(asset, dg.AssetsDefinition) or not {k.to_user_string() for k in asset.keys} & materialized:
            continue
        function = asset.op.compute_fn.decorated_fn
        declared = {
            item.path
            for item in all_settings()
            if item.affects == "results" and ({item.path, item.stage} & declared_settings(asset))
        }
        assert declared <= READ_LOG.get(function.__name__, set()), function.__name__
