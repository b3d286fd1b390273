"""The `paser` command as a user runs it: a subprocess configured by PASER_* variables."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import paser_cli
import pytest

pytestmark = pytest.mark.system

FAULT_INJECTION = Path(__file__).with_name("fault_injection.py")


def run_paser(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return paser_cli.run_paser(args, {**os.environ, **env}, cwd)


def test_demo_materializes_and_prints_sql_summary(tmp_path: Path, tiny_llama_dir: Path) -> None:
    env = {
        "PASER_DB": str(tmp_path / "demo.duckdb"),
        "PASER_DEMO_SIZE": "64",
        "PASER_ORIGINAL_MODEL": str(tiny_llama_dir),
        "PASER_PRUNE_METHOD": "magnitude",
        "PASER_MODEL_CACHE": str(tmp_path / "models"),
        "DAGSTER_HOME": "",
    }
    result = run_paser(["demo"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "materialized 13 assets" in result.stdout
    assert "selection[magnitude-50]" in result.stdout
    # a random tiny model is a near-uniform guesser: the signal check says so, and the run still succeeds
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING ")]
    assert len(warnings) == 1, result.stderr[-3000:]
    assert warnings[0].startswith("WARNING degradation_signal on capability_degradation[magnitude-50]: ")
    assert "predicts about as well as chance" in warnings[0]
    assert "Clusters" in result.stdout and "SQL: SELECT cluster, size" in result.stdout
    with duckdb.connect(env["PASER_DB"], read_only=True) as conn:
        sizes = conn.execute("SELECT cluster, size FROM demo.paser.cluster_profiles ORDER BY cluster").fetchall()
    assert sizes and sum(size for _, size in sizes) > 50

    summary = run_paser(["summary"], env, tmp_path)
    assert summary.returncode == 0 and "Capability degradation" in summary.stdout


def test_bad_setting_exits_with_a_clear_message(tmp_path: Path) -> None:
    result = run_paser(
        ["demo"], {"PASER_DB": str(tmp_path / "x.duckdb"), "PASER_CLUSTERS": "lots", "DAGSTER_HOME": ""}, tmp_path
    )
    assert result.returncode == 2
    assert "PASER_CLUSTERS='lots'" in result.stderr
    assert "Traceback" not in result.stderr


def test_reprune_with_the_documented_refresh_command(tmp_path: Path, tiny_llama_dir: Path) -> None:
    from tiny_models import save_tiny_checkpoint

    external = save_tiny_checkpoint(tmp_path / "pruned", seed=1)
    env = {  # no DAGSTER_HOME: the CLI keeps its history in .dagster_home beside the database
        "PASER_DB": str(tmp_path / "data" / "paser.duckdb"),
        "PASER_DEMO_SIZE": "48",
        "PASER_ORIGINAL_MODEL": str(tiny_llama_dir),
        "PASER_PRUNED_MODEL": str(external),
        "PASER_MODEL_CACHE": str(tmp_path / "models"),
        "DAGSTER_HOME": "",
    }
    first = run_paser(["materialize"], env, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    home = tmp_path / "data" / ".dagster_home"
    assert first.stdout.splitlines()[0] == (
        f"paser: Dagster instance {home} (beside the database); database {env['PASER_DB']} (schema paser)"
    )
    assert "materialized 13 assets" in first.stdout

    unchanged = run_paser(["refresh"], env, tmp_path)
    assert unchanged.returncode == 0, unchanged.stderr[-3000:]
    assert "stale or missing after observing: nothing" in unchanged.stdout
    assert "materialized 0 assets" in unchanged.stdout

    def observed_versions(stdout: str) -> dict[str, str]:
        lines = [line.removeprefix("observed ") for line in stdout.splitlines() if line.startswith("observed ")]
        return dict(line.split(": ", 1) for line in lines)

    before = run_paser(["observe"], env, tmp_path)
    assert before.returncode == 0, before.stderr[-3000:]
    shutil.rmtree(external)
    save_tiny_checkpoint(external, seed=2)  # re-pruned in place
    # `paser observe` records the new checkpoint in the instance and materializes nothing (what the UI's Observe does)
    after = run_paser(["observe"], env, tmp_path)
    assert after.returncode == 0, after.stderr[-3000:]
    old, new = observed_versions(before.stdout), observed_versions(after.stdout)
    assert set(old) == set(new) == {"original_model", "pruned_checkpoint[external]"}
    assert old["original_model"] == new["original_model"]
    assert old["pruned_checkpoint[external]"] != new["pruned_checkpoint[external]"]
    assert "nothing was materialized" in after.stdout and "materialized 1" not in after.stdout
    expected = [
        "capability_degradation[external]",
        "concept_graph[external]",
        "degradation_scores[0|external]",
        "pruned_model[external]",
        "selection[external]",
        "selection_export[external]",
    ]
    dry = run_paser(["refresh", "--dry-run"], env, tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    listed = [line.strip() for line in dry.stdout.splitlines() if line.startswith("  ")]
    assert [line.split(": ", 1)[0] for line in listed] == expected
    assert "pruned_checkpoint[external]" in listed[expected.index("pruned_model[external]")]  # the reason
    result = run_paser(["refresh"], env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "materialized 6 assets" in result.stdout and ", ".join(expected) in result.stdout

    added = run_paser(["variants", "add", "nm24", "magnitude:2:4"], env, tmp_path)
    assert added.returncode == 0, added.stderr[-3000:]
    assert "materialized 6 assets" in added.stdout and "selection[nm24]" in added.stdout
    listing = run_paser(["variants", "list"], env, tmp_path)
    assert "external\tcheckpoint" in listing.stdout and "nm24\trecipe\tmagnitude:2:4" in listing.stdout

    removed = run_paser(["variants", "remove", "nm24"], env, tmp_path)
    assert removed.returncode == 0 and "removed variant nm24" in removed.stdout
    with duckdb.connect(env["PASER_DB"], read_only=True) as conn:
        variants = conn.execute("SELECT DISTINCT variant FROM paser.paser.selection").fetchall()
    assert variants == [("external",)]
    assert home.is_dir() and not (tmp_path / ".dagster_home").exists()
    # every run the commands launched is tagged with the database and the command that launched it
    runs = dg.DagsterInstance.from_config(str(home)).get_runs()
    assert {run.tags["paser/db"] for run in runs} == {str(Path(env["PASER_DB"]).resolve())}
    assert {run.tags["paser/command"] for run in runs} == {
        "materialize",
        "observe",
        "refresh",
        "refresh --dry-run",
        "variants add",
    }


def test_bad_variant_name_is_refused(tmp_path: Path) -> None:
    result = run_paser(
        ["variants", "add", "x'; DROP TABLE paser.selection; --", "wanda:0.5"],
        {"PASER_DB": str(tmp_path / "x.duckdb"), "DAGSTER_HOME": ""},
        tmp_path,
    )
    assert result.returncode == 2 and "invalid variant name" in result.stderr


def test_a_variant_whose_checkpoint_does_not_exist_is_refused_and_not_registered(tmp_path: Path) -> None:
    env = {"PASER_DB": str(tmp_path / "x.duckdb"), "DAGSTER_HOME": ""}
    missing = tmp_path / "no" / "such" / "ckpt"
    result = run_paser(["variants", "add", "v1", str(missing), "--no-materialize"], env, tmp_path)
    assert result.returncode == 2, result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        f"paser: variant 'v1' not registered: '{missing}': no such folder or file, and not a hub id of the form "
        "owner/name"
    )
    assert "Traceback" not in result.stderr and "registered variant" not in result.stdout
    listing = run_paser(["variants", "list"], env, tmp_path)
    assert "v1\t" not in listing.stdout


def test_the_standard_dagster_cli_selects_any_single_asset(tmp_path: Path) -> None:
    """`dagster asset materialize --select` works for every asset a user may name, the pool included."""
    (tmp_path / "home").mkdir()
    env = {
        **os.environ,
        "PASER_DB": str(tmp_path / "std.duckdb"),
        "PASER_DEMO_SIZE": "60",
        "DAGSTER_HOME": str(tmp_path / "home"),
    }
    dagster = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "paser_assets.definitions", "--select"]
    for selection in ("recovery_pool", "+key:cluster_profiles"):
        result = subprocess.run([*dagster, selection], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "RUN_SUCCESS" in result.stderr
    with duckdb.connect(env["PASER_DB"], read_only=True) as conn:
        rejected = conn.execute("SELECT count(*) FROM std.paser.recovery_pool_rejected").fetchall()[0][0]
        profiles = conn.execute("SELECT count(*) FROM std.paser.cluster_profiles").fetchall()[0][0]
    assert rejected >= 0 and profiles >= 2


def test_help_loads_no_heavy_package_and_names_the_settings(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from paser_assets.cli import main\n"
        "try:\n    main(['materialize', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('dagster', 'torch', 'transformers', 'duckdb') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
    for flag, (variable, _) in paser_cli_flags().items():
        assert flag in result.stdout and variable in result.stdout
    assert "paser settings" in result.stdout


def paser_cli_flags() -> dict[str, tuple[str, str]]:
    from paser_assets.cli import FLAGS

    return FLAGS


def test_flags_set_the_settings_they_name() -> None:
    from paser_assets.resources import PaserDuckDB
    from paser_assets.settings import environment_names

    known = {*environment_names().values(), *PaserDuckDB.environment_names().values()}
    assert {variable for variable, _ in paser_cli_flags().values()} <= known


def test_flags_reach_the_run_and_a_missing_database_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "x.duckdb"
    result = run_paser(["summary", "--db", str(missing)], {"DAGSTER_HOME": ""}, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"paser: no database at {missing}: run `paser materialize` first, or set PASER_DB"
    assert not missing.parent.exists()  # nothing created by looking
    listed = run_paser(["variants", "list", "--db", str(tmp_path / "v.duckdb")], {"DAGSTER_HOME": ""}, tmp_path)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert listed.stdout.splitlines()[0].endswith(f"database {tmp_path / 'v.duckdb'} (schema paser)")


def test_an_unknown_setting_variable_is_refused(tmp_path: Path) -> None:
    result = run_paser(["demo"], {"PASER_DB": str(tmp_path / "x.duckdb"), "PASER_BUDGETT": "0.1"}, tmp_path)
    assert result.returncode == 2
    assert "PASER_BUDGETT (did you mean PASER_BUDGET?)" in result.stderr and "Traceback" not in result.stderr


def _misuse_cases(tmp: Path) -> list[tuple[list[str], dict[str, str], str]]:
    sqlite = tmp / "other.db"
    sqlite.write_bytes(b"SQLite format 3\x00" + bytes(100))
    (tmp / "afile").write_text("x")
    db = str(tmp / "x.duckdb")
    return [
        (["materialize"], {"PASER_DB": db, "PASER_BUDGET": "inf"}, "PASER_BUDGET='inf'"),
        (["materialize"], {"PASER_DB": db, "PASER_BUDGET": "nan"}, "PASER_BUDGET='nan'"),
        (["materialize"], {"PASER_DB": db, "PASER_SEED": "-1"}, "PASER_SEED='-1'"),
        (["materialize"], {"PASER_DB": db, "PASER_PRUNE_NM": "4:2"}, "PASER_PRUNE_NM='4:2'"),
        (["materialize"], {"PASER_DB": db, "PASER_GRAPH_REGULARIZATION": "-1"}, "PASER_GRAPH_REGULARIZATION"),
        (["materialize"], {"PASER_DB": db, "PASER_DB_LOCK_TIMEOUT": "nan"}, "PASER_DB_LOCK_TIMEOUT='nan'"),
        (["materialize"], {"PASER_DB": str(tmp)}, "is a folder"),
        (["materialize"], {"PASER_DB": str(sqlite)}, "it is an SQLite database"),
        (["materialize"], {"PASER_DB": db, "PASER_EXPORT_DIR": str(tmp / "afile")}, "PASER_EXPORT_DIR="),
        (["materialize"], {"PASER_DB": db, "PASER_BUDGETT": "0.1"}, "did you mean PASER_BUDGET?"),
        (["materialize", "--select", "key:("], {"PASER_DB": db}, "is not a Dagster asset selection"),
        (["materialize", "--select", "key:nothing"], {"PASER_DB": db}, "matches no asset"),
        (["variants", "remove", "nothere"], {"PASER_DB": db}, "'nothere' is not registered"),
        (["summary"], {"PASER_DB": str(tmp / "missing.duckdb")}, "no database at"),
    ]


def test_misuse_is_one_clear_line_and_exit_code_2(tmp_path: Path) -> None:
    for args, env, expected in _misuse_cases(tmp_path):
        result = run_paser(args, {**env, "DAGSTER_HOME": ""}, tmp_path)
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        assert result.returncode == 2, (args, env, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (args, env, result.stderr[-2000:])
        assert message.startswith("paser: ") and expected in message, (args, env, message)


def test_a_full_disk_under_the_database_is_one_line_and_the_next_run_succeeds(tmp_path: Path) -> None:
    env = {**os.environ, "PASER_DB": str(tmp_path / "paser.duckdb"), "PASER_DEMO_SIZE": "24", "DAGSTER_HOME": ""}
    arguments = ["materialize", "--select", "recovery_pool"]
    command = [sys.executable, str(FAULT_INJECTION), "nospace:recovery_pool", *arguments]
    full = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert full.returncode == 1
    [failure] = [line for line in full.stderr.splitlines() if line.startswith("FAILED")]
    assert failure.startswith(f"FAILED recovery_pool: no space left on {tmp_path / 'paser.duckdb'} (writing /dev/full)")
    assert "Traceback" not in full.stderr and "Current transaction is aborted" not in full.stderr
    again = run_paser(arguments, env, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "materialized 1 assets" in again.stdout
