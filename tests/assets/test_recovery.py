"""The recovery group materialized through Dagster with tiny models: held-out split, baselines at PASER's
budget, LoRA recovery per method, held-out evaluation and the comparison."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.assets import recovery as recovery_assets
from paser_assets.core.baselines import seeded_order
from paser_assets.resources import RECOVERY_METHODS
from paser_assets.runner import GraphRun, run_graph

VARIANT = "magnitude-50"
RECOVERY_ASSETS = {asset.key.to_user_string() for asset in recovery_assets.RECOVERY_ASSETS}
BASELINES = [m for m in RECOVERY_METHODS if m != "paser"]


@dataclass
class Recovery:
    first: GraphRun
    second: GraphRun
    database: PaserDuckDB
    instance: dg.DagsterInstance
    config: PaserConfig
    cache: Path
    export: Path
    holdout_before: list[tuple]
    first_metadata: dict[str, dict]


def query(database: PaserDuckDB, sql: str, parameters: list | None = None) -> list[tuple]:
    with duckdb.connect(database.database, read_only=True) as conn:
        conn.execute("USE paser.paser")
        return conn.execute(sql, parameters or []).fetchall()


def scalar(database: PaserDuckDB, sql: str, parameters: list | None = None):
    return query(database, sql, parameters)[0][0]


def frame(database: PaserDuckDB, sql: str) -> pd.DataFrame:
    with duckdb.connect(database.database, read_only=True) as conn:
        conn.execute("USE paser.paser")
        return conn.execute(sql).df()


def method_key(method: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"method": method, "variant": VARIANT})


def recovered_metadata(instance: dg.DagsterInstance) -> dict[str, dict]:
    """method -> metadata of the latest recovered_model materialization."""
    result = {}
    for method in RECOVERY_METHODS:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("recovered_model"), asset_partitions=[method_key(method)]),
            limit=1,
        ).records
        assert records, method
        result[method] = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
    return result


def run_messages(instance: dg.DagsterInstance, run: GraphRun) -> list[str]:
    return [entry.user_message for result in run.results for entry in instance.all_logs(result.run_id)]


def make_config(tmp_path: Path, model: Path, **settings) -> PaserConfig:
    return PaserConfig(
        demo_size=96,
        original_model=str(model),
        prune_method="magnitude",
        lora_epochs=1,
        lora_batch_size=8,
        model_cache_dir=str(tmp_path / "models"),
        export_dir=str(tmp_path / "export"),
        **settings,
    )


@pytest.fixture(scope="module")
def recovery(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Recovery:
    """The whole graph with recovery on, then a second run over the same instance and database."""
    tmp_path = tmp_path_factory.mktemp("recovery")
    config = make_config(tmp_path, tiny_llama_dir, include_recovery=True)
    database = PaserDuckDB(database=str(tmp_path / "paser.duckdb"))
    defs = build_definitions(config, database)
    instance = dg.DagsterInstance.ephemeral()
    first = run_graph(defs, instance)
    assert first.success, first.failures()
    holdout_before = query(database, "SELECT * FROM holdout_split ORDER BY sample_id")
    first_metadata = recovered_metadata(instance)
    second = run_graph(defs, instance)
    assert second.success, second.failures()
    cache, export = tmp_path / "models", tmp_path / "export"
    return Recovery(first, second, database, instance, config, cache, export, holdout_before, first_metadata)


def test_every_recovery_partition_materializes(recovery: Recovery) -> None:
    materialized = set(recovery.first.materialized)
    for asset in ["baseline_selections", "reference_evaluation", "recovery_comparison"]:
        assert f"{asset}[{VARIANT}]" in materialized
    for asset in ["recovered_model", "recovery_evaluation"]:
        for method in RECOVERY_METHODS:
            assert f"{asset}[{method_key(method)}]" in materialized, (asset, method)
    assert "holdout_split" in materialized
    recovery_events = [name for name in materialized if name.split("[")[0] in RECOVERY_ASSETS]
    assert len(recovery_events) == 3 + 2 * len(RECOVERY_METHODS)


def test_the_held_out_split_never_intersects_any_selection(recovery: Recovery) -> None:
    database = recovery.database
    holdout = {row[0] for row in query(database, "SELECT sample_id FROM holdout_split")}
    pool = scalar(database, "SELECT count(*) FROM recovery_pool")
    assert len(holdout) == round(0.1 * pool) > 0
    # Not even a candidate of PASER's selection, whatever its decision.
    candidates = {row[0] for row in query(database, "SELECT sample_id FROM selection")}
    assert candidates and not candidates & holdout
    assert len(candidates) == pool - len(holdout)
    baselines = query(database, "SELECT DISTINCT method, sample_id FROM baseline_selections")
    assert {method for method, _ in baselines} == set(BASELINES)
    assert not {sample_id for _, sample_id in baselines} & holdout
    # Nor in the exported files.
    held = frame(database, "SELECT p.* FROM recovery_pool p JOIN holdout_split h USING (sample_id)")
    held_records = set(zip(held["instruction"], held["input"], held["output"], strict=True))
    folder = recovery.export / VARIANT
    exported = json.loads((folder / "selection.json").read_text())
    lines = [json.loads(line) for line in (folder / "selection.jsonl").read_text().splitlines()]
    parquet = pd.read_parquet(folder / "selection.parquet")
    assert exported and lines == exported and len(parquet) == len(exported)
    assert not {(r["instruction"], r["input"], r["output"]) for r in exported} & held_records
    assert not set(parquet["sample_id"]) & holdout


def test_every_method_gets_the_same_budget(recovery: Recovery) -> None:
    database = recovery.database
    budget = scalar(database, "SELECT sum(budget) FROM capability_degradation WHERE variant = ?", [VARIANT])
    assert budget > 0
    paser = scalar(database, "SELECT count(*) FROM selection WHERE variant = ? AND decision = 'selected'", [VARIANT])
    assert paser == budget  # the budget_met check explains any shortfall; this pool has none
    sql = "SELECT method, count(DISTINCT sample_id) FROM baseline_selections WHERE variant = ? GROUP BY method"
    counts = dict(query(database, sql, [VARIANT]))
    assert counts == dict.fromkeys(BASELINES, budget)
    ranks = query(database, "SELECT method, min(rank), max(rank), count(*) FROM baseline_selections GROUP BY method")
    assert all((low, high, n) == (1, budget, budget) for _, low, high, n in ranks)
    checks = {e.check_name: e.passed for e in recovery.first.get_asset_check_evaluations()}
    assert checks.get("budget_met") is True


def test_methods_select_differently(recovery: Recovery) -> None:
    sql = "SELECT sample_id FROM baseline_selections WHERE method = ?"
    selections = {m: frozenset(row[0] for row in query(recovery.database, sql, [m])) for m in BASELINES}
    assert selections["random"] != selections["top_jsd"]
    assert len(set(selections.values())) >= 3


def test_recovered_adapters_are_safetensors_with_a_loss_curve(recovery: Recovery) -> None:
    database = recovery.database
    paser = scalar(database, "SELECT count(*) FROM selection WHERE decision = 'selected'")
    sizes = dict(query(database, "SELECT method, count(*) FROM baseline_selections GROUP BY method"))
    sizes["paser"] = paser
    for method, metadata in recovery.first_metadata.items():
        folder = Path(metadata["adapter"])
        assert folder.is_relative_to(recovery.cache), folder
        assert (folder / "adapter_model.safetensors").is_file()
        assert (folder / "adapter_config.json").is_file()
        assert not list(folder.glob("*.bin"))
        record = json.loads((folder / "paser_training.json").read_text())
        assert metadata["train_samples"] == sizes[method], method
        steps = (
            math.ceil(sizes[method] / recovery.config.recovery.lora_batch_size) * recovery.config.recovery.lora_epochs
        )
        assert record["steps"] == list(range(1, steps + 1))
        assert metadata["first_loss"] == round(record["losses"][0], 4)
        assert metadata["loss_curve"].startswith("![") and "data:image/png;base64," in metadata["loss_curve"]
    assert len({m["adapter"] for m in recovery.first_metadata.values()}) == len(RECOVERY_METHODS)


def test_recovery_comparison_has_every_method_overall_and_per_cluster(recovery: Recovery) -> None:
    database = recovery.database
    table = frame(database, f"SELECT * FROM recovery_comparison WHERE variant = '{VARIANT}'")
    holdout = scalar(database, "SELECT count(*) FROM holdout_split")
    overall = table[table["cluster"].isna()]
    assert list(overall["method"]) == ["original", "pruned", *RECOVERY_METHODS]
    assert (overall["samples"] == holdout).all()
    assert all(math.isfinite(v) and v > 0 for v in overall["heldout_nll"])
    assert all(math.isfinite(v) and v > 1 for v in overall["general_ppl"])
    for row in overall.itertuples():
        assert row.heldout_ppl == pytest.approx(math.exp(row.heldout_nll))
    per_cluster = table[table["cluster"].notna()]
    assert set(per_cluster["method"]) == set(overall["method"])
    assert (per_cluster.groupby("method")["samples"].sum() == holdout).all()
    # The overall NLL is the sample-weighted mean of the clusters' NLLs.
    for method, group in per_cluster.groupby("method"):
        weighted = (group["heldout_nll"] * group["samples"]).sum() / group["samples"].sum()
        assert weighted == pytest.approx(overall.set_index("method").loc[method, "heldout_nll"])
    clusters = scalar(database, "SELECT count(DISTINCT c.cluster) FROM holdout_split JOIN clusters c USING (sample_id)")
    assert len(per_cluster) == clusters * len(overall)


def test_every_model_is_evaluated_on_every_held_out_sample(recovery: Recovery) -> None:
    database = recovery.database
    holdout = scalar(database, "SELECT count(*) FROM holdout_split")
    sql = "SELECT method, model, count(*), count(DISTINCT sample_id) FROM heldout_nll GROUP BY ALL ORDER BY ALL"
    counts = query(database, sql)
    expected = sorted(
        [("reference", "original"), ("reference", "pruned"), *((m, "recovered") for m in RECOVERY_METHODS)]
    )
    assert [(method, model) for method, model, _, _ in counts] == expected
    assert all(n == distinct == holdout for _, _, n, distinct in counts)
    general = query(database, "SELECT count(*), min(tokens), max(tokens) FROM general_text_nll")[0]
    assert general[0] == len(expected) and general[1] == general[2] > 0  # the same text for every model


def test_pruning_changed_the_held_out_nll(recovery: Recovery) -> None:
    nll = dict(query(recovery.database, "SELECT method, heldout_nll FROM recovery_comparison WHERE cluster IS NULL"))
    assert abs(nll["pruned"] - nll["original"]) > 1e-4
    # A recovered model differs from the pruned one it started from (its adapter was trained).
    assert any(abs(nll[m] - nll["pruned"]) > 1e-6 for m in RECOVERY_METHODS)


def test_a_rerun_reuses_the_adapters_and_keeps_the_held_out_split(recovery: Recovery) -> None:
    assert sorted(n for n in recovery.second.materialized if n.startswith("recovered_model")) == sorted(
        n for n in recovery.first.materialized if n.startswith("recovered_model")
    )
    second = recovered_metadata(recovery.instance)
    for method in RECOVERY_METHODS:
        assert second[method]["adapter"] == recovery.first_metadata[method]["adapter"]
        assert second[method]["seconds"] == recovery.first_metadata[method]["seconds"]  # the saved record
        assert second[method]["first_loss"] == recovery.first_metadata[method]["first_loss"]
    first_messages = run_messages(recovery.instance, recovery.first)
    second_messages = run_messages(recovery.instance, recovery.second)
    assert sum("LoRA fine-tuning variant" in m for m in first_messages) == len(RECOVERY_METHODS)
    assert not any("LoRA fine-tuning variant" in m for m in second_messages)
    assert sum("reusing the adapter" in m for m in second_messages) == len(RECOVERY_METHODS)
    assert query(recovery.database, "SELECT * FROM holdout_split ORDER BY sample_id") == recovery.holdout_before
    # Membership is the seeded order of the pool's sample ids, whatever the row order.
    pool = [row[0] for row in query(recovery.database, "SELECT sample_id FROM recovery_pool ORDER BY random()")]
    expected = sorted(seeded_order(pool, recovery.config.seed)[: len(recovery.holdout_before)])
    assert [row[0] for row in recovery.holdout_before] == expected


def test_recovery_is_off_by_default(recovery: Recovery) -> None:
    """Runs last: the default configuration over the same database and instance materializes no recovery asset."""
    assert PaserConfig().execution.include_recovery is False
    config = make_config(recovery.cache.parent, Path(recovery.config.models.original_model))  # recovery not set
    defs = build_definitions(config, recovery.database)
    run = run_graph(defs, recovery.instance)
    assert run.success, run.failures()
    assert "holdout_split" in run.materialized and f"selection[{VARIANT}]" in run.materialized
    assert not [name for name in run.materialized if name.split("[")[0] in RECOVERY_ASSETS]
