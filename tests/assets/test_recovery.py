"""The recovery group materialized through Dagster with tiny models: held-out split, the product's methods (the
baselines at PASER's budget, full, token-matched random), LoRA recovery per method, evaluation on the held-out
split, a text corpus and two tasks (one partially scored), and the comparison. The lab's arms are tested in
lab/tests."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.core.baselines import seeded_order
from paser_assets.core.recovery_metrics import comparison_table
from paser_assets.methods.builtin import BUILTIN
from paser_assets.per_variant import variant_asset_names, variant_key
from paser_assets.runner import GraphRun, run_graph

pytestmark = pytest.mark.system

VARIANT = "magnitude-50"
RECOVERY_ASSETS = set(variant_asset_names(recovery=True))
# The fixture recovers with every method the product ships, and only those.
RECOVERY_METHODS = [method.name for method in BUILTIN]
BASELINES = [m for m in RECOVERY_METHODS if m != "paser"]
AT_PASER_BUDGET = ["paser", "random", "ifd", "longest"]
WINDOW, TEXT_TOKENS, TASK_ITEMS = 16, 200, 4


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


def asset_of(name: str) -> str:
    """The asset of a key as a run names it: ``<variant>/<asset>[/<method>]``, or a shared asset's name."""
    parts = name.split("/")
    return parts[1] if len(parts) > 1 else parts[0]


def recovered_metadata(instance: dg.DagsterInstance) -> dict[str, dict]:
    """method -> metadata of the latest recovered_model materialization."""
    result = {}
    for method in RECOVERY_METHODS:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=variant_key(VARIANT, "recovered_model", method)), limit=1
        ).records
        assert records, method
        result[method] = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
    return result


def run_messages(instance: dg.DagsterInstance, run: GraphRun) -> list[str]:
    return [entry.user_message for result in run.results for entry in instance.all_logs(result.run_id)]


def write_evaluation_files(folder: Path) -> dict[str, str]:
    """A text corpus and two tasks (question style, and WinoGrande's partial evaluation) in the eval formats."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "tiny.txt"
    text.write_text(" ".join(f"The {w} sat on the mat and summarised the report." for w in ["cat", "dog"] * 60))
    qa = folder / "qa.jsonl"
    items = [
        {"id": i, "context": f"Which colour is the sky on day {i}?", "choices": ["blue", "a green stone", "red"],
         "label": i % 3}
        for i in range(6)
    ]  # fmt: skip
    qa.write_text("".join(json.dumps(item) + "\n" for item in items))
    wino = folder / "wino.jsonl"
    sentences = [
        {"id": i, "context": f"Sarah helped Maria because _ was kind on day {i}.", "choices": ["Sarah", "Maria"],
         "label": i % 2}
        for i in range(6)
    ]  # fmt: skip
    wino.write_text("".join(json.dumps(item) + "\n" for item in sentences))
    return {"eval_text": f"tiny={text}", "eval_tasks": f"qa={qa}; winogrande={wino}"}


def make_config(tmp_path: Path, model: Path, **settings) -> PaserConfig:
    return PaserConfig(
        **write_evaluation_files(tmp_path / "eval"),
        eval_window=WINDOW,
        eval_max_tokens=TEXT_TOKENS,
        eval_task_items=TASK_ITEMS,
        demo_size=96,
        original_model=str(model),
        prune_method="magnitude",
        lora_epochs=1,
        lora_batch_size=8,
        model_cache_dir=str(tmp_path / "models"),
        export_dir=str(tmp_path / "export"),
        **{"recovery_methods": list(RECOVERY_METHODS), **settings},
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


def test_every_recovery_asset_materializes(recovery: Recovery) -> None:
    materialized = set(recovery.first.materialized)
    for asset in ["baseline_selections", "reference_evaluation", "recovery_comparison"]:
        assert f"{VARIANT}/{asset}" in materialized
    for asset in ["recovered_model", "recovery_evaluation"]:
        for method in RECOVERY_METHODS:
            assert f"{VARIANT}/{asset}/{method}" in materialized, (asset, method)
    assert "holdout_split" in materialized
    recovery_events = [name for name in recovery.first.materialized if asset_of(name) in RECOVERY_ASSETS]
    assert len(recovery_events) == 3 + 2 * len(RECOVERY_METHODS)  # each once


def test_every_evaluation_records_its_wall_time(recovery: Recovery) -> None:
    """The bench prices the evaluations left by the seconds the done ones recorded."""
    for method in RECOVERY_METHODS:
        records = recovery.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=variant_key(VARIANT, "recovery_evaluation", method)), limit=1
        ).records
        assert records[0].asset_materialization.metadata["seconds"].value > 0, method
    reference = recovery.instance.fetch_materializations(variant_key(VARIANT, "reference_evaluation"), limit=1).records
    metadata = reference[0].asset_materialization.metadata
    assert metadata["original seconds"].value > 0 and metadata["pruned seconds"].value > 0


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
    assert {method for method, _ in baselines} == set(RECOVERY_METHODS)  # PASER's own selection among them
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
    assert {m: counts[m] for m in AT_PASER_BUDGET} == dict.fromkeys(AT_PASER_BUDGET, budget)
    assert counts["full"] == scalar(database, "SELECT count(*) FROM selection WHERE variant = ?", [VARIANT])
    ranks = query(database, "SELECT method, min(rank), max(rank), count(*) FROM baseline_selections GROUP BY method")
    assert all((low, high) == (1, n) and n == counts[m] for m, low, high, n in ranks)
    checks = {e.check_name: e.passed for e in recovery.first.get_asset_check_evaluations()}
    assert checks.get("budget_met") is True


def test_random_tokens_matches_paser_training_tokens(recovery: Recovery) -> None:
    """Random rows up to PASER's training tokens: the totals differ by less than one sample's tokens."""
    tokens = dict(query(recovery.database, "SELECT method, train_tokens FROM recovered_adapters"))
    epochs = recovery.config.recovery.lora_epochs
    longest = recovery.config.scoring.max_tokens
    assert abs(tokens["random_tokens"] - tokens["paser"]) <= longest * epochs
    random_rows = scalar(recovery.database, "SELECT count(*) FROM baseline_selections WHERE method = 'random_tokens'")
    assert random_rows > 0
    # The same random order as `random`: one is a prefix of the other.
    sql = "SELECT sample_id FROM baseline_selections WHERE method = ? ORDER BY rank"
    by_tokens = [r[0] for r in query(recovery.database, sql, ["random_tokens"])]
    by_count = [r[0] for r in query(recovery.database, sql, ["random"])]
    shorter = min(len(by_tokens), len(by_count))
    assert by_tokens[:shorter] == by_count[:shorter]


def test_longest_takes_the_longest_responses(recovery: Recovery) -> None:
    sql = """SELECT length(p.output), b.sample_id IS NOT NULL FROM selection s JOIN recovery_pool p USING (sample_id)
    LEFT JOIN (SELECT sample_id FROM baseline_selections WHERE method = 'longest') b USING (sample_id)"""
    rows = query(recovery.database, sql)
    chosen = [n for n, picked in rows if picked]
    others = [n for n, picked in rows if not picked]
    # Tokens, not characters, decide; on this pool the two orders agree up to near-ties.
    assert sum(chosen) / len(chosen) > 1.2 * sum(others) / len(others)


def test_methods_select_differently(recovery: Recovery) -> None:
    sql = "SELECT sample_id FROM baseline_selections WHERE method = ?"
    selections = {m: frozenset(row[0] for row in query(recovery.database, sql, [m])) for m in BASELINES}
    assert selections["random"] != selections["longest"] != selections["ifd"]
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


def comparison(recovery: Recovery) -> pd.DataFrame:
    return frame(recovery.database, f"SELECT * FROM recovery_comparison WHERE variant = '{VARIANT}'")


def test_recovery_comparison_has_every_metric_for_every_arm(recovery: Recovery) -> None:
    table = comparison(recovery)
    arms = ["original", "pruned", *RECOVERY_METHODS]
    assert list(dict.fromkeys(table["method"])) == arms
    headline = {"heldout_nll", "heldout_nll_macro", "heldout_token_nll", "heldout_token_nll_macro", "ppl:tiny",
                "acc:qa", "acc_norm:qa", "acc:winogrande", "task_average"}  # fmt: skip
    for arm, group in table.groupby("method"):
        metrics = set(group["metric"])
        assert headline <= metrics, arm
        assert "acc_norm:winogrande" not in metrics  # partial evaluation has no acc_norm, as in the harness
        groups = metrics - headline  # per label (the demo pool has labels) and per band of response length
        assert all(m.startswith(("heldout_nll:family=", "heldout_nll:length=")) for m in groups), groups
        assert any(m.startswith("heldout_nll:length=") for m in groups)
        assert group["value"].map(math.isfinite).all()
    values = table.pivot(index="method", columns="metric", values="value")
    assert (values["ppl:tiny"] > 1).all()
    for arm in arms:  # the task average: acc_norm where a task has it, acc where it has not
        expected = (values.at[arm, "acc_norm:qa"] + values.at[arm, "acc:winogrande"]) / 2
        assert values.at[arm, "task_average"] == pytest.approx(expected)


def test_recovery_ratio_is_the_share_of_the_gap_closed(recovery: Recovery) -> None:
    table = comparison(recovery)
    values = table.pivot(index="method", columns="metric", values="value")
    ratios = table.pivot(index="method", columns="metric", values="recovery_ratio")
    gap = values.loc["original", "heldout_nll"] - values.loc["pruned", "heldout_nll"]
    assert abs(gap) > 1e-6
    for arm in RECOVERY_METHODS:
        expected = (values.at[arm, "heldout_nll"] - values.at["pruned", "heldout_nll"]) / gap
        assert ratios.at[arm, "heldout_nll"] == pytest.approx(expected)
    assert ratios.at["original", "heldout_nll"] == pytest.approx(1.0)
    assert ratios.at["pruned", "heldout_nll"] == pytest.approx(0.0)


def test_macro_average_weighs_every_source_label_equally(recovery: Recovery) -> None:
    sql = """SELECT CASE WHEN h.model = 'recovered' THEN h.method ELSE h.model END AS arm, p.family, avg(h.nll) AS nll
    FROM heldout_nll h JOIN recovery_pool p USING (sample_id) GROUP BY ALL"""
    per_family = frame(recovery.database, sql)
    table = comparison(recovery)
    values = table.pivot(index="method", columns="metric", values="value")
    assert per_family["family"].nunique() >= 2
    for arm, group in per_family.groupby("arm"):
        assert values.at[arm, "heldout_nll_macro"] == pytest.approx(group["nll"].mean())
        for row in group.itertuples():
            assert values.at[arm, f"heldout_nll:family={row.family}"] == pytest.approx(row.nll)
    # The labels have different sizes, so the macro and the overall mean differ.
    assert (values["heldout_nll_macro"] - values["heldout_nll"]).abs().max() > 1e-6


def test_the_token_weighted_held_out_nll_counts_every_token_once(recovery: Recovery) -> None:
    """heldout_token_nll = sum_i n_i NLL_i / sum_i n_i over the held-out rows, n_i the response tokens scored
    (the same as the scores' count), and its macro average over the labels."""
    sql = """SELECT CASE WHEN h.model = 'recovered' THEN h.method ELSE h.model END AS arm, p.family, h.nll, h.tokens,
    d.response_tokens FROM heldout_nll h JOIN recovery_pool p USING (sample_id)
    JOIN degradation_scores d ON d.sample_id = h.sample_id AND d.variant = h.variant"""
    rows = frame(recovery.database, sql)
    assert (rows["tokens"] == rows["response_tokens"]).all()
    assert rows["tokens"].nunique() > 1  # responses of different lengths, so the two averages differ
    values = comparison(recovery).pivot(index="method", columns="metric", values="value")
    for arm, group in rows.groupby("arm"):
        weighted = group["nll"] * group["tokens"]
        assert values.at[arm, "heldout_token_nll"] == pytest.approx(weighted.sum() / group["tokens"].sum())
        per_family = weighted.groupby(group["family"]).sum() / group["tokens"].groupby(group["family"]).sum()
        assert values.at[arm, "heldout_token_nll_macro"] == pytest.approx(per_family.mean())
    assert (values["heldout_token_nll"] - values["heldout_nll"]).abs().max() > 1e-6


def test_comparison_records_the_training_of_every_arm(recovery: Recovery) -> None:
    table = comparison(recovery).drop_duplicates("method").set_index("method")
    assert table.loc[["original", "pruned"], "train_tokens"].isna().all()
    adapters = dict(query(recovery.database, "SELECT method, train_tokens FROM recovered_adapters"))
    for arm in RECOVERY_METHODS:
        assert table.at[arm, "train_tokens"] == adapters[arm] > 0
        assert table.at[arm, "train_seconds"] > 0
    assert table.at["full", "train_samples"] > table.at["paser", "train_samples"]
    records = recovery.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=variant_key(VARIANT, "recovery_comparison")), limit=1
    ).records
    metadata = records[0].asset_materialization.metadata
    charts = [k for k, v in metadata.items() if k.startswith("recovery_ratio") and "base64," in str(v.value)]
    assert {"recovery_ratio heldout_nll", "recovery_ratio task_average", "recovery_ratio ppl:tiny"} <= set(charts)


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
    # The same windows and the same items for every model.
    texts = query(database, "SELECT DISTINCT text, windows, tokens FROM text_perplexity")
    windows = TEXT_TOKENS // WINDOW
    assert texts == [("tiny", windows, windows * (WINDOW - 1))]
    tasks = query(database, "SELECT task, count(*), min(items), max(items) FROM task_accuracy GROUP BY task ORDER BY 1")
    assert tasks == [("qa", len(expected), TASK_ITEMS, TASK_ITEMS), ("winogrande", len(expected), TASK_ITEMS,
                                                                      TASK_ITEMS)]  # fmt: skip


def test_pruning_changed_the_held_out_nll(recovery: Recovery) -> None:
    sql = "SELECT method, value FROM recovery_comparison WHERE metric = 'heldout_nll'"
    nll = dict(query(recovery.database, sql))
    assert abs(nll["pruned"] - nll["original"]) > 1e-4
    # A recovered model differs from the pruned one it started from (its adapter was trained).
    assert any(abs(nll[m] - nll["pruned"]) > 1e-6 for m in RECOVERY_METHODS)


def test_a_rerun_reuses_the_adapters_and_keeps_the_held_out_split(recovery: Recovery) -> None:
    recovered = [f"{VARIANT}/recovered_model/{method}" for method in RECOVERY_METHODS]
    assert sorted(n for n in recovery.second.materialized if asset_of(n) == "recovered_model") == sorted(recovered)
    assert sorted(n for n in recovery.first.materialized if asset_of(n) == "recovered_model") == sorted(recovered)
    second = recovered_metadata(recovery.instance)
    for method in RECOVERY_METHODS:
        assert second[method]["adapter"] == recovery.first_metadata[method]["adapter"]
        assert second[method]["seconds"] == recovery.first_metadata[method]["seconds"]  # the saved record
        assert second[method]["first_loss"] == recovery.first_metadata[method]["first_loss"]
        assert recovery.first_metadata[method]["trained_now"] is True and second[method]["trained_now"] is False
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


def test_distillation_trains_a_new_adapter_towards_the_original(recovery: Recovery, tmp_path: Path) -> None:
    """PASER_LORA_LOSS=distillation, on a copy of the database: the teacher is loaded, the adapter's recipe is
    new, and its loss is the KL from the original (which starts small, since LoRA starts as the identity)."""
    copy = PaserDuckDB(database=str(tmp_path / "paser.duckdb"))  # the file names the catalog: as the original
    shutil.copy(recovery.database.database, copy.database)
    model = Path(recovery.config.models.original_model)
    config = make_config(recovery.cache.parent, model, include_recovery=True, recovery_methods=["paser"],
                         lora_loss="distillation")  # fmt: skip
    instance = dg.DagsterInstance.ephemeral()
    run = run_graph(build_definitions(config, copy), instance, selection=f'key:"{VARIANT}/recovered_model/paser"')
    assert run.success, run.failures()
    assert any("loading the original model as the teacher" in m for m in run_messages(instance, run))
    sql = "SELECT path, recipe_hash FROM recovered_adapters WHERE variant = ? AND method = 'paser'"
    path, recipe = query(copy, sql, [VARIANT])[0]
    path_before, recipe_before = query(recovery.database, sql, [VARIANT])[0]
    assert recipe != recipe_before and path != path_before and Path(path, "adapter_model.safetensors").exists()
    assert run.materialized == [f"{VARIANT}/recovered_model/paser"]
    records = instance.fetch_materializations(variant_key(VARIANT, "recovered_model", "paser"), limit=1).records
    metadata = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
    assert metadata["loss"] == "distillation" and metadata["trained_now"] is True
    assert recovery.first_metadata["paser"]["loss"] == "response_nll"
    # A KL starts near 0 (the pruned model against its original); a response NLL near log(vocabulary).
    assert 0 <= metadata["first_loss"] < recovery.first_metadata["paser"]["first_loss"] / 2


def test_recovery_is_off_by_default(recovery: Recovery) -> None:
    """Runs last: the default configuration over the same database and instance has no recovery asset."""
    assert PaserConfig().execution.include_recovery is False
    config = make_config(recovery.cache.parent, Path(recovery.config.models.original_model))  # recovery not set
    defs = build_definitions(config, recovery.database)
    graph = defs.resolve_asset_graph()
    shown = {key for key in graph.get_all_asset_keys() if len(key.path) > 1 and key.path[1] in RECOVERY_ASSETS}
    assert not shown  # nothing to launch by "Materialize all", automation or a selection of the variant
    run = run_graph(defs, recovery.instance)
    assert run.success, run.failures()
    assert "holdout_split" in run.materialized and f"{VARIANT}/selection" in run.materialized
    assert not [name for name in run.materialized if asset_of(name) in RECOVERY_ASSETS]


def test_without_labels_or_tasks_the_comparison_groups_by_cluster_and_keeps_the_text() -> None:
    """A pool without source labels (Alpaca) and no tasks named: the macro average is over clusters."""
    arms = ["original", "pruned", "paser"]
    heldout = pd.DataFrame(
        {
            "arm": [a for a in arms for _ in range(3)],
            "sample_id": ["a", "b", "c"] * 3,
            "nll": [1.0, 1.0, 4.0, 3.0, 3.0, 6.0, 2.0, 2.0, 5.0],
            "tokens": [1, 3, 2] * 3,
            "cluster": [0, 0, 1] * 3,
            "family": [None] * 9,
        }
    )
    texts = pd.DataFrame({"arm": arms, "text": ["stdlib_docs"] * 3, "perplexity": [10.0, 30.0, 20.0]})
    tasks = pd.DataFrame(columns=["arm", "task", "items", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr"])
    training = pd.DataFrame({"arm": ["paser"], "train_samples": [2], "train_tokens": [100], "train_seconds": [1.5]})
    table = comparison_table(heldout, texts, tasks, training, arms)
    values = table.pivot(index="method", columns="metric", values="value")
    assert set(values.columns) == {
        "heldout_nll", "heldout_nll_macro", "heldout_token_nll", "heldout_token_nll_macro", "heldout_nll:cluster=0",
        "heldout_nll:cluster=1", "heldout_nll:length=1-3", "ppl:stdlib_docs"
    }  # fmt: skip
    assert values.at["paser", "heldout_nll:length=1-3"] == pytest.approx(3.0)  # every row has 1 to 3 tokens
    assert values.at["paser", "heldout_nll"] == pytest.approx(3.0)
    assert values.at["paser", "heldout_nll_macro"] == pytest.approx((2.0 + 5.0) / 2)  # clusters, not rows
    assert values.at["paser", "heldout_token_nll"] == pytest.approx((2 * 1 + 2 * 3 + 5 * 2) / 6)  # tokens, not rows
    assert values.at["paser", "heldout_token_nll_macro"] == pytest.approx((2.0 + 5.0) / 2)
    ratios = table.pivot(index="method", columns="metric", values="recovery_ratio")
    assert ratios.at["paser", "ppl:stdlib_docs"] == pytest.approx(0.5)
    assert table.loc[table["method"] == "paser", "train_tokens"].eq(100).all()
