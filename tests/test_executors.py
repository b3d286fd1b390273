"""Scoring shards through Dagster's multiprocess executor and through dagster-dask on a local Dask
cluster gives the same degradation_scores table as scoring in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from tiny_models import save_tiny_checkpoint

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.runner import run_graph

pytestmark = pytest.mark.system

SHARDS = 2
BEFORE_SCORES = " or ".join(
    f"key:{name}" for name in ("recovery_pool", "pruned_model", "original_model", "pruned_checkpoint")
)
VARIANT = "external"


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> dict[str, str]:
    root = tmp_path_factory.mktemp("executors")
    pruned = save_tiny_checkpoint(root / "pruned", seed=1)
    return {
        "PASER_DEMO_SIZE": "48",
        "PASER_ORIGINAL_MODEL": str(tiny_llama_dir),
        "PASER_PRUNED_MODEL": str(pruned),
        "PASER_SCORE_SHARDS": str(SHARDS),
        "PASER_MODEL_CACHE": str(root / "models"),
        "PASER_ORIGINAL_CACHE": "0",  # every shard runs both models, as a fresh cluster would
    }


def scores(database: str) -> list[tuple]:
    with duckdb.connect(database, read_only=True) as conn:
        catalog = conn.execute("SELECT current_database()").fetchall()[0][0]
        return conn.execute(f'SELECT * FROM "{catalog}".paser.degradation_scores ORDER BY ALL').fetchall()


def prepare(root: Path, setting: dict[str, str]) -> tuple[dict[str, str], dg.DagsterInstance]:
    """Everything but the scores, in-process, into a DuckDB file and an on-disk Dagster instance."""
    env = {**setting, "PASER_DB": str(root / "paser.duckdb"), "DAGSTER_HOME": str(root / "home")}
    (root / "home").mkdir(parents=True)
    config = PaserConfig.from_env(env)
    defs = build_definitions(config, PaserDuckDB(database=env["PASER_DB"]))
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    run = run_graph(defs, instance, selection=BEFORE_SCORES)
    assert run.success, run.failures()
    return env, instance


def materialize_shards(env: dict[str, str], cwd: Path) -> str:
    """The documented way to score shards on an executor: `dagster asset materialize` per partition."""
    logs = ""
    for shard in range(SHARDS):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "dagster",
                "asset",
                "materialize",
                "-m",
                "paser_assets.definitions",
                "--select",
                "degradation_scores",
                "--partition",
                f"{shard}|{VARIANT}",
            ],
            env={**os.environ, **env},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        logs += done.stdout + done.stderr
    return logs


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory, setting: dict[str, str]) -> list[tuple]:
    root = tmp_path_factory.mktemp("in-process")
    env = {**setting, "PASER_DB": str(root / "paser.duckdb")}
    defs = build_definitions(PaserConfig.from_env(env), PaserDuckDB(database=env["PASER_DB"]))
    run = run_graph(defs, dg.DagsterInstance.ephemeral(), selection=f"{BEFORE_SCORES} or key:degradation_scores")
    assert run.success, run.failures()
    rows = scores(env["PASER_DB"])
    assert {row[1] for row in rows} == set(range(SHARDS))  # both shards hold samples
    return rows


def test_multiprocess_executor_gives_the_in_process_table(tmp_path: Path, setting, in_process) -> None:
    env, instance = prepare(tmp_path, setting)
    logs = materialize_shards({**env, "PASER_EXECUTOR": "multiprocess"}, tmp_path)
    assert 'Executing step "degradation_scores" in subprocess' in logs
    assert scores(env["PASER_DB"]) == in_process
    runs = instance.get_runs()
    assert any(run.tags.get("dagster/partition") == f"1|{VARIANT}" for run in runs)


def test_dask_executor_on_a_local_cluster_gives_the_in_process_table(
    tmp_path: Path, setting, in_process, monkeypatch: pytest.MonkeyPatch
) -> None:
    distributed = pytest.importorskip("distributed")
    env, _ = prepare(tmp_path, setting)
    for name, value in env.items():  # the workers import paser_assets.definitions with these settings
        monkeypatch.setenv(name, value)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        materialize_shards({**env, "PASER_EXECUTOR": "dask", "PASER_DASK_ADDRESS": cluster.scheduler_address}, tmp_path)
        with distributed.Client(cluster) as client:
            prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(map(str, dask_scheduler.task_prefixes)))
    # The Dask scheduler ran the scoring steps as its tasks.
    assert any(prefix.endswith(".degradation_scores") for prefix in prefixes), prefixes
    assert scores(env["PASER_DB"]) == in_process
