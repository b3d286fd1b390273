"""Asset checks per variant (on ``<variant>/selection``...), the signal check, and the tags of the runner's runs.

Most tests read the two-variant database of ``two_variants.py`` (a trained tiny Llama, built-in variant
magnitude-50 plus nm24 added later). A test that breaks a table works on a copy, with definitions of its own.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import dagster as dg
import pytest
from check_runs import run_checks
from two_variants import ADDED, BUILT_IN, VARIANTS, TwoVariants

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.core.signal import UNIFORM_SHARE, assess_signal
from paser_assets.models.vocabulary import vocabulary_size
from paser_assets.per_variant import variant_key
from paser_assets.runner import COMMAND_TAG, DB_TAG, observe

pytestmark = pytest.mark.system

VARIANT_CHECKS = {
    "budget_met": "selection",
    "no_sample_selected_twice": "selection",
    "selected_samples_in_pool": "selection",
    "jsd_in_range": "degradation_scores",
    "degradation_signal": "capability_degradation",
}


def evaluations(runs) -> dict[tuple[str, str], dg.AssetCheckEvaluation]:
    """Every check evaluation of the runs, by check name and the variant of the asset it checked."""
    found: dict[tuple[str, str], dg.AssetCheckEvaluation] = {}
    for run in runs:
        for evaluation in run.get_asset_check_evaluations():
            variant, asset = evaluation.asset_key.path
            assert asset == VARIANT_CHECKS[evaluation.check_name], evaluation.asset_key
            key = (evaluation.check_name, variant)
            assert key not in found, f"{key} evaluated twice"
            found[key] = evaluation
    return found


def query(database: PaserDuckDB, sql: str, *parameters) -> list[tuple]:
    with database.get_connection(read_only=True) as conn:
        return conn.execute(sql, list(parameters)).fetchall()


def copy_of(data: TwoVariants, folder: Path) -> tuple[PaserDuckDB, dg.Definitions]:
    folder.mkdir()
    shutil.copy(data.database.database, folder / "copy.duckdb")
    database = PaserDuckDB(database=str(folder / "copy.duckdb"))
    config = PaserConfig(**{**data.settings, "export_dir": str(folder / "export")})
    return database, build_definitions(config, database)


def execute(database: PaserDuckDB, sql: str, *parameters) -> None:
    with database.write() as conn:
        conn.execute(sql, list(parameters))


# -- one result per variant


def test_each_check_is_evaluated_once_per_variant(two_variants: TwoVariants) -> None:
    found = evaluations(two_variants.runs)
    expected = {(name, variant) for name in VARIANT_CHECKS for variant in VARIANTS}
    assert set(found) == expected
    assert all(evaluation.passed for evaluation in found.values()), {
        key: evaluation.description for key, evaluation in found.items() if not evaluation.passed
    }
    # the second variant's checks ran in the `variants add` refresh, the first's in the materialize only
    assert {e.asset_key.path[0] for e in two_variants.runs[1].get_asset_check_evaluations()} == {ADDED}
    checks = two_variants.defs.resolve_asset_graph().asset_check_keys
    assert checks == {
        dg.AssetCheckKey(variant_key(variant, asset), name)
        for name, asset in VARIANT_CHECKS.items()
        for variant in VARIANTS
    }


def test_budget_met_reports_each_variants_own_budget(two_variants: TwoVariants) -> None:
    found = evaluations(two_variants.runs)
    budgets = dict(query(two_variants.database, "SELECT variant, sum(budget) FROM capability_degradation GROUP BY 1"))
    assert len(budgets) == 2 and sum(budgets.values()) > max(budgets.values())  # a sum would show
    for variant in VARIANTS:
        metadata = found["budget_met", variant].metadata
        selected = query(
            two_variants.database, "SELECT count(*) FROM selection WHERE variant = ? AND decision = 'selected'", variant
        )[0][0]
        assert metadata["variant"].value == variant
        assert metadata["budget"].value == budgets[variant]
        assert metadata["selected"].value == selected
        assert metadata["shortfall"].value == budgets[variant] - selected
    for variant in VARIANTS:
        jsd = found["jsd_in_range", variant].metadata
        (high,) = query(two_variants.database, "SELECT max(jsd) FROM degradation_scores WHERE variant = ?", variant)[0]
        assert jsd["max_jsd"].value == pytest.approx(high) and jsd["variant"].value == variant


def test_the_instance_keeps_each_variants_check_history_apart(two_variants: TwoVariants) -> None:
    instance = two_variants.instance
    storage = instance.event_log_storage
    for asset, check in [("selection", "budget_met"), ("capability_degradation", "degradation_signal")]:
        keys = {variant: dg.AssetCheckKey(variant_key(variant, asset), check) for variant in VARIANTS}
        latest = storage.get_latest_asset_check_execution_by_key(list(keys.values()))
        assert {variant: latest[key].status.value for variant, key in keys.items()} == dict.fromkeys(
            VARIANTS, "SUCCEEDED"
        )
        for variant, graph_run in zip(VARIANTS, two_variants.runs, strict=True):  # materialize, then variants add
            assert latest[keys[variant]].run_id in {result.run_id for result in graph_run.results}
        for variant, key in keys.items():  # each result is of its own variant's latest materialization
            filter_ = dg.AssetRecordsFilter(asset_key=variant_key(variant, asset))
            (materialization,) = instance.fetch_materializations(filter_, limit=1).records
            target = latest[key].evaluation.target_materialization_data
            assert target is not None and target.storage_id == materialization.storage_id
        assert not storage.get_latest_asset_check_execution_by_key([dg.AssetCheckKey(dg.AssetKey(asset), check)])


def test_a_broken_variant_fails_its_own_checks_and_not_the_others(two_variants: TwoVariants, tmp_path: Path) -> None:
    database, defs = copy_of(two_variants, tmp_path / "broken")
    execute(
        database,
        "INSERT INTO selection SELECT * FROM selection WHERE variant = ? AND decision = 'selected' "
        "ORDER BY sample_id LIMIT 1",
        ADDED,
    )
    broken, intact = run_checks(defs, ADDED, "selection"), run_checks(defs, BUILT_IN, "selection")
    assert {name: e.passed for name, e in broken.items()} == {
        "budget_met": False,  # one more selected than the budget
        "no_sample_selected_twice": False,
        "selected_samples_in_pool": True,
    }
    assert broken["no_sample_selected_twice"].metadata["duplicated_samples"].value == 1
    assert broken["budget_met"].metadata["shortfall"].value == -1
    assert all(e.passed for e in intact.values())
    assert intact["budget_met"].metadata["explanation"].value == "budget met exactly"


# -- the signal check


def test_the_signal_check_passes_on_a_trained_model_and_says_what_it_measured(two_variants: TwoVariants) -> None:
    found = evaluations(two_variants.runs)
    pruned = dict(query(two_variants.database, "SELECT variant, path FROM pruned_model"))
    for variant in VARIANTS:
        evaluation = found["degradation_signal", variant]
        metadata = {key: value.value for key, value in evaluation.metadata.items()}
        assert evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
        clusters = query(
            two_variants.database,
            "SELECT size, cds, jsd_std FROM capability_degradation WHERE variant = ? ORDER BY cluster",
            variant,
        )
        (nll,) = query(
            two_variants.database, "SELECT avg(pruned_nll) FROM degradation_scores WHERE variant = ?", variant
        )[0]
        vocabulary = vocabulary_size(pruned[variant])
        expected = assess_signal(*map(list, zip(*clusters, strict=True)), nll, vocabulary)
        assert metadata["vocabulary_size"] == vocabulary > 500
        assert metadata["uniform_nll"] == pytest.approx(math.log(vocabulary))
        assert metadata["mean_pruned_nll"] == pytest.approx(nll)
        assert nll < UNIFORM_SHARE * math.log(vocabulary)
        assert metadata["cds_spread"] == pytest.approx(expected.cds_spread)
        assert metadata["cds_spread"] > 2 * metadata["spread_standard_error"] > 0
        assert metadata["between_cluster_share"] == pytest.approx(expected.between_cluster_share)
        assert 0 < metadata["between_cluster_share"] < 1
    description = found["degradation_signal", BUILT_IN].description
    assert description.startswith("CDS separates the clusters")


def test_the_signal_check_warns_when_cds_and_nll_lose_their_meaning(two_variants: TwoVariants, tmp_path: Path) -> None:
    """nm24 made degenerate: every cluster's CDS alike, and a pruned NLL at ln(vocabulary)."""
    database, defs = copy_of(two_variants, tmp_path / "degenerate")
    (path,) = query(database, "SELECT path FROM pruned_model WHERE variant = ?", ADDED)[0]
    uniform = math.log(vocabulary_size(path))
    execute(database, "UPDATE capability_degradation SET cds = 0.05, jsd_std = 0.02 WHERE variant = ?", ADDED)
    execute(database, "UPDATE degradation_scores SET pruned_nll = ? WHERE variant = ?", uniform + 0.1, ADDED)
    degenerate = run_checks(defs, ADDED, "capability_degradation")["degradation_signal"]
    assert not degenerate.passed and degenerate.severity == dg.AssetCheckSeverity.WARN
    problems = degenerate.description.split("; ")
    assert len(problems) == 2
    assert problems[0].startswith("CDS does not separate the clusters: the most and least degraded differ by 0 nats")
    assert problems[1].startswith("the pruned model predicts about as well as chance")
    assert "untrained" not in problems[1]  # the original still predicts
    assert run_checks(defs, BUILT_IN, "capability_degradation")["degradation_signal"].passed

    execute(database, "UPDATE capability_degradation SET cds = ln(2) - 0.002 * cluster WHERE variant = ?", ADDED)
    saturated = run_checks(defs, ADDED, "capability_degradation")["degradation_signal"]
    assert "CDS is saturated" in saturated.description


# -- run tags: which database, which command


def test_every_run_is_tagged_with_the_database_and_the_command(two_variants: TwoVariants) -> None:
    path = str(Path(two_variants.database.database).resolve())
    materialize, added = two_variants.runs
    for graph_run, command in [(materialize, "materialize"), (added, "variants add")]:
        for result in graph_run.results:
            tags = two_variants.instance.get_run_by_id(result.run_id).tags
            assert (tags[DB_TAG], tags[COMMAND_TAG]) == (path, command)
    tagged = two_variants.instance.get_runs(filters=dg.RunsFilter(tags={DB_TAG: path, COMMAND_TAG: "variants add"}))
    assert {run.run_id for run in tagged} == {result.run_id for result in added.results}
    assert {run.tags.get("dagster/partition") for run in tagged} == {None}  # no asset is partitioned


def test_runs_on_two_databases_in_one_instance_are_told_apart(tiny_llama_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        paths = {}
        for name in ("a", "b"):
            database = PaserDuckDB(database=str(tmp_path / name / "paser.duckdb"))
            defs = build_definitions(
                PaserConfig(original_model=str(tiny_llama_dir), pruned_model=str(tiny_llama_dir)), database
            )
            assert observe(defs, instance).success
            paths[name] = str(Path(database.database).resolve())
        for name, path in paths.items():
            runs = instance.get_runs(filters=dg.RunsFilter(tags={DB_TAG: path}))
            assert len(runs) == 1 and runs[0].tags[COMMAND_TAG] == "observe", name
