"""The `paser` command as a user runs it: a subprocess configured by PASER_* variables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb


def run_paser(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paser_assets.cli", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


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
    assert "Clusters" in result.stdout and "SQL: SELECT cluster, size" in result.stdout
    with duckdb.connect(env["PASER_DB"], read_only=True) as conn:
        sizes = conn.execute("SELECT cluster, size FROM demo.paser.cluster_profiles ORDER BY cluster").fetchall()
    assert sizes and sum(size for _, size in sizes) > 50

    summary = run_paser(["summary"], env, tmp_path)
    assert summary.returncode == 0 and "Capability degradation" in summary.stdout


def test_bad_setting_exits_with_a_clear_message(tmp_path: Path) -> None:
    result = run_paser(["demo"], {"PASER_DB": str(tmp_path / "x.duckdb"), "PASER_CLUSTERS": "lots"}, tmp_path)
    assert result.returncode == 2
    assert "PASER_CLUSTERS='lots'" in result.stderr
    assert "Traceback" not in result.stderr
