"""Concepts, selection, the SQL view, the export and the asset checks, materialized through Dagster with tiny models."""

from __future__ import annotations

import html
import json
import re
import shutil
import stat
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import dagster as dg
import datasets
import duckdb
import pandas as pd
import pytest
from check_runs import run_checks as run_checks_of

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets import report as report_module
from paser_assets.assets import selection as selection_assets
from paser_assets.assets.selection import EXPORT_FORMATS, safe_export_path
from paser_assets.per_variant import variant_key
from paser_assets.report import REPORT_NAME
from paser_assets.runner import run_graph as materialize

pytestmark = pytest.mark.system

VARIANT = "magnitude-50"  # the single variant of the pruning settings below
CHECK_NAMES = {"budget_met", "no_sample_selected_twice", "selected_samples_in_pool", "jsd_in_range"}
ALPACA = ["instruction", "input", "output"]
EXPORT = f'key:"{VARIANT}/selection_export"'  # quoted: a '-' ends an unquoted key in a Dagster selection


@dataclass
class Run:
    tmp: Path
    settings: dict
    config: PaserConfig
    database: PaserDuckDB
    defs: dg.Definitions
    instance: dg.DagsterInstance
    result: dg.ExecuteInProcessResult


def query(database: PaserDuckDB | str, sql: str) -> list[tuple]:
    path = database.database if isinstance(database, PaserDuckDB) else database
    with duckdb.connect(path, read_only=True) as conn:
        conn.execute("USE paser.paser")
        return conn.execute(sql).fetchall()


def execute(database: PaserDuckDB, sql: str) -> None:
    with duckdb.connect(database.database) as conn:
        conn.execute("USE paser.paser")
        conn.execute(sql)


def run_checks(defs: dg.Definitions, instance: dg.DagsterInstance | None = None) -> dict[str, dg.AssetCheckEvaluation]:
    """Execute only the four asset checks of the variant's selection and scores against what the database holds
    now."""
    evaluations = {}
    for asset in ("selection", "degradation_scores"):
        found = run_checks_of(defs, VARIANT, asset, instance)
        for evaluation in found.values():
            assert evaluation.asset_key == variant_key(VARIANT, asset)
            assert evaluation.metadata["variant"].value == VARIANT
        evaluations.update(found)
    return evaluations


def copy_database(run: Run, name: str) -> tuple[PaserDuckDB, dg.Definitions]:
    """The run's DuckDB file copied into a fresh folder (same file name, so the same catalog), with definitions."""
    folder = run.tmp / name
    folder.mkdir()
    target = folder / "paser.duckdb"
    shutil.copy(run.database.database, target)
    database = PaserDuckDB(database=str(target))
    # a fresh PaserConfig: model_copy(update=...) would not reach the values a Dagster resource hands out
    config = PaserConfig(**{**run.settings, "export_dir": str(folder / "export")})
    return database, build_definitions(config, database)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> Run:
    """The whole graph, once: magnitude-pruned tiny Llama (so JSD > 0), a 96-row demo pool, half of it as budget."""
    tmp = tmp_path_factory.mktemp("selection")
    (tmp / "db").mkdir()
    database = PaserDuckDB(database=str(tmp / "db" / "paser.duckdb"))
    settings = {
        "demo_size": 96,
        "budget": 0.5,
        "original_model": str(tiny_llama_dir),
        "prune_method": "magnitude",
        "model_cache_dir": str(tmp / "models"),
        "export_dir": str(tmp / "export"),
    }
    config = PaserConfig(**settings)
    defs = build_definitions(config, database)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(defs, instance=instance)
    assert result.success
    return Run(tmp, settings, config, database, defs, instance, result)


def selection_metadata(instance: dg.DagsterInstance) -> dict:
    event = instance.get_latest_materialization_event(variant_key(VARIANT, "selection"))
    assert event is not None
    return {key: value.value for key, value in event.asset_materialization.metadata.items()}


# -- the run


def test_selection_assets_materialize(run: Run) -> None:
    materialized = {e.asset_key.to_user_string() for e in run.result.get_asset_materialization_events()}
    per_variant = {f"{VARIANT}/{name}" for name in ("selection", "concept_graph", "selection_export")}
    assert {"sample_concepts", *per_variant} <= materialized
    pool = query(run.database, "SELECT count(*) FROM recovery_pool")[0][0]
    pool -= query(run.database, "SELECT count(*) FROM holdout_split")[0][0]  # the held-out split is not selectable
    budget = query(run.database, "SELECT sum(budget) FROM capability_degradation")[0][0]
    assert budget == (pool + 1) // 2  # half the selectable pool, rounded half up
    # every selectable candidate gets exactly one decision
    assert query(run.database, "SELECT count(*), count(DISTINCT sample_id) FROM selection")[0] == (pool, pool)
    metadata = selection_metadata(run.instance)
    assert metadata["budget"] == budget
    assert metadata["selected"] + metadata["shortfall"] == budget
    assert metadata["conflict_tolerance"] == 0.25


def test_concepts_table_holds_bounded_distinct_concepts(run: Run) -> None:
    rows = query(run.database, "SELECT concepts, n_concepts FROM sample_concepts")
    assert rows and all(len(concepts) == n <= run.config.selection.concepts_per_sample for concepts, n in rows)
    assert sum(n > 0 for _, n in rows) > 0.9 * len(rows)
    assert all(len(set(concepts)) == len(concepts) for concepts, _ in rows)


def test_concept_graph_counts_cooccurrences_of_selected_samples(run: Run) -> None:
    selected = query(
        run.database,
        "SELECT k.concepts FROM selection s JOIN sample_concepts k USING (sample_id) WHERE s.decision = 'selected'",
    )
    expected = Counter(pair for (concepts,) in selected for pair in combinations(sorted(set(concepts)), 2))
    graph = query(run.database, "SELECT concept_a, concept_b, cooccurrences FROM concept_graph")
    assert {(a, b): n for a, b, n in graph} == dict(expected)
    assert all(a < b for a, b, _ in graph)


def test_view_lists_the_selected_rows_with_their_text(run: Run) -> None:
    selected = query(run.database, "SELECT count(*) FROM selection WHERE decision = 'selected'")[0][0]
    assert selected > 0
    rows = query(
        run.database,
        "SELECT v.sample_id, v.instruction, v.output, p.instruction, p.output, v.jsd, d.jsd "
        "FROM selected_instructions v JOIN recovery_pool p USING (sample_id) "
        "JOIN degradation_scores d USING (sample_id)",
    )
    assert len(rows) == selected
    assert len({row[0] for row in rows}) == selected
    for _, instruction, output, pool_instruction, pool_output, jsd, scored_jsd in rows:
        assert instruction and output
        assert (instruction, output) == (pool_instruction, pool_output)
        assert jsd == scored_jsd and jsd > 0
    ids_from_selection = {
        r[0] for r in query(run.database, "SELECT sample_id FROM selection WHERE decision = 'selected'")
    }
    assert {row[0] for row in rows} == ids_from_selection


# -- the export


def view_records(run: Run) -> list[dict[str, str]]:
    return view_records_of(run.database)


def view_records_of(database: PaserDuckDB) -> list[dict[str, str]]:
    rows = query(database, "SELECT instruction, input, output FROM selected_instructions ORDER BY cluster, rank")
    return [dict(zip(ALPACA, row, strict=True)) for row in rows]


def test_export_round_trips_through_datasets(run: Run) -> None:
    expected = view_records(run)
    folder = Path(run.config.selection.export_dir) / VARIANT
    cache = run.tmp / "hf-cache"
    parquet = datasets.load_dataset(
        "parquet", data_files=str(folder / "selection.parquet"), split="train", cache_dir=str(cache)
    )
    jsonl = datasets.load_dataset(
        "json", data_files=str(folder / "selection.jsonl"), split="train", cache_dir=str(cache)
    )
    assert set(ALPACA) <= set(parquet.column_names)
    assert jsonl.column_names == ALPACA
    assert [{key: row[key] for key in ALPACA} for row in parquet] == expected
    assert [dict(row) for row in jsonl] == expected
    assert len(expected) == selection_metadata(run.instance)["selected"]


def test_json_export_is_an_alpaca_array(run: Run) -> None:
    records = json.loads(
        (Path(run.config.selection.export_dir) / VARIANT / "selection.json").read_text(encoding="utf-8")
    )
    assert isinstance(records, list)
    assert all(list(record) == ALPACA for record in records)
    assert records == view_records(run)


def test_export_folder_holds_only_the_finished_files_readable_by_others(run: Run) -> None:
    folder = Path(run.config.selection.export_dir) / VARIANT
    expected = [*(f"selection.{fmt}" for fmt in EXPORT_FORMATS), REPORT_NAME]
    assert sorted(path.name for path in folder.iterdir()) == sorted(expected)
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name
    event = run.instance.get_latest_materialization_event(variant_key(VARIANT, "selection_export"))
    event = event.asset_materialization
    for fmt in EXPORT_FORMATS:
        assert Path(event.metadata[f"{fmt}_path"].value) == (folder / f"selection.{fmt}").resolve()


def export_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def exported_records(folder: Path) -> dict[str, list[dict]]:
    """The records of each file of an export."""
    return {
        "json": json.loads((folder / "selection.json").read_text(encoding="utf-8")),
        "jsonl": [json.loads(line) for line in (folder / "selection.jsonl").read_text(encoding="utf-8").splitlines()],
        "parquet": pd.read_parquet(folder / "selection.parquet")[ALPACA].to_dict(orient="records"),
    }


def test_a_failure_between_the_export_files_keeps_the_previous_set(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    database, defs = copy_database(run, "export-set")
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(defs, selection=EXPORT, instance=instance).success
    folder = run.tmp / "export-set" / "export" / VARIANT
    previous = export_files(folder)
    # Another selection (three samples fewer), whose export fails once its JSON and JSONL files are written.
    execute(
        database,
        "UPDATE selection SET decision = 'concept_conflict' WHERE sample_id IN "
        "(SELECT sample_id FROM selection WHERE decision = 'selected' ORDER BY sample_id LIMIT 3)",
    )
    written = []

    def failing_parquet(rows: pd.DataFrame, path: Path) -> None:
        written.extend(sorted(p.name for p in path.parent.iterdir()))
        raise RuntimeError("the Parquet writer broke")

    monkeypatch.setitem(selection_assets.EXPORT_WRITERS, "parquet", failing_parquet)
    failed = materialize(defs, selection=EXPORT, instance=instance)
    assert not failed.success and "the Parquet writer broke" in " ".join(failed.failures())
    assert written == ["selection.json", "selection.jsonl"]  # the failure came between files
    assert export_files(folder) == previous
    assert [p.name for p in folder.parent.iterdir()] == [VARIANT]  # the failed run's staging folder is gone

    monkeypatch.undo()
    assert materialize(defs, selection=EXPORT, instance=instance).success
    records = exported_records(folder)
    assert records["json"] == records["jsonl"] == records["parquet"]
    assert records["json"] == view_records_of(database)
    assert len(records["json"]) == len(json.loads(previous["selection.json"])) - 3
    assert [p.name for p in folder.parent.iterdir()] == [VARIANT]


def failed_export(defs: dg.Definitions, instance: dg.DagsterInstance) -> str:
    """The one failure of a selection_export run that must fail."""
    failed = materialize(defs, selection=EXPORT, instance=instance)
    assert not failed.success
    [failure] = failed.failures()
    return failure


def no_space_under(export: Path, kept: str) -> str:
    step = variant_key(VARIANT, "selection_export").to_user_string()  # the asset, not its step's name
    return (
        f"{step}: no space left on {export}: free space on that disk, or set PASER_EXPORT_DIR to a place "
        f"on another one; {kept}"
    )


def test_a_full_disk_under_the_export_is_named_and_the_next_run_succeeds(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    database, defs = copy_database(run, "export-full")
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(defs, selection=EXPORT, instance=instance).success
    export = run.tmp / "export-full" / "export"
    previous = export_files(export / VARIANT)

    def parquet_on_a_full_disk(rows: pd.DataFrame, path: Path) -> None:
        rows.to_parquet("/dev/full", index=False)  # Arrow's own error for a full disk

    monkeypatch.setitem(selection_assets.EXPORT_WRITERS, "parquet", parquet_on_a_full_disk)
    assert failed_export(defs, instance) == no_space_under(
        export, f"the previous export of {VARIANT} is kept as it was"
    )
    assert export_files(export / VARIANT) == previous
    assert [p.name for p in export.iterdir()] == [VARIANT]

    monkeypatch.undo()
    assert materialize(defs, selection=EXPORT, instance=instance).success
    assert exported_records(export / VARIANT)["parquet"] == view_records_of(database)


def test_a_full_disk_under_the_report_is_named_and_the_export_is_kept(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    database, defs = copy_database(run, "report-full")
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(defs, selection=EXPORT, instance=instance).success
    export = run.tmp / "report-full" / "export"

    def report_on_a_full_disk(path: Path, text: str) -> None:
        Path("/dev/full").write_text(text, encoding="utf-8")

    monkeypatch.setattr(report_module, "write_text_atomically", report_on_a_full_disk)
    assert failed_export(defs, instance) == no_space_under(
        export, f"the export of {VARIANT} is written, without its report.html"
    )
    assert exported_records(export / VARIANT)["parquet"] == view_records_of(database)
    assert not (export / VARIANT / REPORT_NAME).exists()


def latest_metadata(instance: dg.DagsterInstance, key: str) -> dict:
    """The metadata of the latest materialization of ``key`` (as the UI names it: ``<variant>/<asset>``)."""
    event = instance.get_latest_materialization_event(dg.AssetKey.from_user_string(key))
    assert event is not None, key
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def test_report_beside_the_export_names_the_variant_and_k_and_is_linked(run: Run) -> None:
    report = Path(run.config.selection.export_dir) / VARIANT / REPORT_NAME
    assert Path(latest_metadata(run.instance, f"{VARIANT}/selection_export")["report_path"]) == report.resolve()
    page = report.read_text(encoding="utf-8")
    ((k, criterion),) = query(run.database, "SELECT k, criterion FROM cluster_spectrum WHERE chosen")
    assert (
        k
        == latest_metadata(run.instance, "clusters")["n_clusters"]
        == len(query(run.database, "SELECT DISTINCT cluster FROM clusters"))
    )
    assert f"PASER selection report: {VARIANT}" in page
    assert f"k = {k}: {criterion}" in page
    # one variant, no recovery run: map, CDS and budget, eigengap, JSD histogram
    assert page.count('<img src="data:image/png;base64,') == page.count("<img") == 4
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    # clusters are labelled by their keyphrases from cluster_profiles, the same labels the UI's charts use
    cluster, phrases = query(run.database, "SELECT cluster, top_keyphrases FROM cluster_profiles ORDER BY cluster")[0]
    assert html.escape(f"{cluster}: {', '.join(phrases[:3])}") in page
    selected = query(run.database, "SELECT count(*) FROM selection WHERE decision = 'selected'")[0][0]
    assert f"<dt>selected</dt><dd>{selected:,} " in page


def test_the_ui_shows_the_labelled_map_the_eigengap_and_the_cds_chart(run: Run) -> None:
    image = "data:image/png;base64,"
    assert latest_metadata(run.instance, "cluster_profiles")["cluster_map"].startswith(f"![cluster map]({image}")
    assert latest_metadata(run.instance, "clusters")["eigengap"].startswith(f"![eigengap]({image}")
    cds = latest_metadata(run.instance, f"{VARIANT}/capability_degradation")["cds_per_cluster"]
    assert cds.startswith(f"![CDS and budget per cluster]({image}")
    # a single variant: no comparison chart of variants
    assert "cds_by_variant" not in latest_metadata(run.instance, f"{VARIANT}/capability_degradation")


@pytest.mark.parametrize("name", ["../x", "a/b", "/etc/passwd", "..", "", ".", "a/../../x"])
def test_safe_export_path_refuses_names_outside_the_folder(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="export"):
        safe_export_path(tmp_path / "export", name)


@pytest.mark.parametrize("name", ["selection.json", "./x.parquet", "a/../x"])
def test_safe_export_path_keeps_names_inside_the_folder(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "export"
    path = safe_export_path(folder, name)
    assert path.parent == folder.resolve() and path.is_absolute()


# -- asset checks


def test_asset_checks_pass_on_the_run(run: Run) -> None:
    evaluations = run_checks(run.defs, run.instance)
    assert set(evaluations) == CHECK_NAMES
    assert {name: e.passed for name, e in evaluations.items()} == dict.fromkeys(CHECK_NAMES, True)
    budget_met = evaluations["budget_met"].metadata
    assert budget_met["shortfall"].value == selection_metadata(run.instance)["shortfall"]
    assert evaluations["jsd_in_range"].metadata["outside_range"].value == 0


BREAKAGES = {
    "duplicate": (
        "INSERT INTO selection SELECT * FROM selection WHERE decision = 'selected' ORDER BY sample_id LIMIT 1",
        {"no_sample_selected_twice": 1, "budget_met": None},  # one more selected than the budget, too
        ("no_sample_selected_twice", "duplicated_samples", 1),
    ),
    "not_in_pool": (
        "INSERT INTO selection SELECT variant, 'not-in-the-pool', cluster, 999, ies, jsd, score, decision, "
        "conflict_pairs, conflict_share, refill_round FROM selection WHERE decision = 'selected' "
        "ORDER BY sample_id LIMIT 1",
        {"selected_samples_in_pool": 1, "budget_met": None},
        ("selected_samples_in_pool", "missing_from_pool", 1),
    ),
    "jsd_above_ln2": (
        "UPDATE degradation_scores SET jsd = 0.8 WHERE sample_id = (SELECT min(sample_id) FROM degradation_scores)",
        {"jsd_in_range": 1},
        ("jsd_in_range", "max_jsd", 0.8),
    ),
    "unexplained_shortfall": (
        "UPDATE selection SET decision = 'budget_full', refill_round = -1 WHERE sample_id IN "
        "(SELECT sample_id FROM selection WHERE decision = 'selected' ORDER BY sample_id LIMIT 3)",
        {"budget_met": 1},
        ("budget_met", "shortfall", 3),
    ),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_asset_checks_catch_broken_tables(run: Run, case: str) -> None:
    sql, failing, (check, key, value) = BREAKAGES[case]
    database, defs = copy_database(run, f"broken-{case}")
    execute(database, sql)
    evaluations = run_checks(defs)
    assert {name: e.passed for name, e in evaluations.items()} == {name: name not in failing for name in CHECK_NAMES}
    assert evaluations[check].metadata[key].value == pytest.approx(value)
    # the run's own database is untouched
    assert all(e.passed for e in run_checks(run.defs).values())


def test_budget_met_explains_a_shortfall_when_every_candidate_was_considered(run: Run) -> None:
    # all unvisited candidates turned into conflicts and three selections undone: a shortfall with an explanation
    database, defs = copy_database(run, "explained-shortfall")
    execute(
        database,
        "UPDATE selection SET decision = 'concept_conflict' WHERE decision = 'budget_full' OR sample_id IN "
        "(SELECT sample_id FROM selection WHERE decision = 'selected' ORDER BY sample_id LIMIT 3)",
    )
    evaluation = run_checks(defs)["budget_met"]
    assert evaluation.passed
    assert evaluation.metadata["shortfall"].value == 3
    assert "every candidate was considered" in evaluation.metadata["explanation"].value


# -- strict and tolerant selection on the same scores


def test_strict_and_tolerant_selection_on_the_same_scores(run: Run) -> None:
    database, _ = copy_database(run, "tolerance")
    scores_before = query(database, "SELECT * FROM degradation_scores ORDER BY sample_id")
    outcomes = {}
    instance = dg.DagsterInstance.ephemeral()
    for tolerance in (0.0, 1.0):
        defs = build_definitions(PaserConfig(**{**run.settings, "conflict_tolerance": tolerance}), database)
        result = materialize(defs, selection=f'key:"{VARIANT}/selection"', instance=instance)  # with concept_graph
        assert result.success
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert materialized == {f"{VARIANT}/selection", f"{VARIANT}/concept_graph"}
        decisions = dict(query(database, "SELECT decision, count(*) FROM selection GROUP BY decision"))
        conflicts = query(
            database, "SELECT conflict_pairs, conflict_share FROM selection WHERE decision = 'concept_conflict'"
        )
        outcomes[tolerance] = (selection_metadata(instance), decisions, conflicts)
        assert all(e.passed for e in run_checks(defs).values())
    assert query(database, "SELECT * FROM degradation_scores ORDER BY sample_id") == scores_before

    tolerant, tolerant_decisions, tolerant_conflicts = outcomes[1.0]
    strict, strict_decisions, strict_conflicts = outcomes[0.0]
    assert tolerant["conflict_tolerance"] == 1.0 and strict["conflict_tolerance"] == 0.0
    assert tolerant["selected"] == tolerant["budget"] and tolerant["shortfall"] == 0
    assert tolerant_conflicts == [] and "concept_conflict" not in tolerant_decisions
    assert tolerant["refill_rounds"] == 0 and tolerant["acceptance_rate"] == 1.0
    assert strict["acceptance_rate"] <= tolerant["acceptance_rate"]
    assert strict["budget"] == tolerant["budget"]
    assert sum(strict_decisions.values()) == sum(tolerant_decisions.values())  # the same candidates
    considered = strict_decisions.get("selected", 0) + len(strict_conflicts)
    assert strict["acceptance_rate"] == pytest.approx(strict_decisions["selected"] / considered, abs=1e-4)
    # a strict rejection names at least one conflicting pair
    assert all(pairs and share > 0 for pairs, share in strict_conflicts)
