"""Scoring a variant through Dagster's multiprocess executor, and through dagster-dask on a local Dask cluster
(whose workers then also score the shards), gives the same degradation_scores table as scoring in-process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from tiny_models import save_tiny_checkpoint

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.assets.scores import shard_of
from paser_assets.per_variant import variant_key
from paser_assets.runner import run_graph

pytestmark = pytest.mark.system

SHARDS = 2
VARIANT = "external"
SCORES = variant_key(VARIANT, "degradation_scores")
BEFORE_SCORES = " or ".join(
    f'key:"{name}"'
    for name in ("recovery_pool", f"{VARIANT}/pruned_model", "original_model", f"{VARIANT}/pruned_checkpoint")
)


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> dict[str, str]:
    root = tmp_path_factory.mktemp("executors")
    pruned = save_tiny_checkpoint(root / "pruned", seed=1)
    return {
        "PASER_DEMO_SIZE": "48",
        "PASER_ORIGINAL_MODEL": str(tiny_llama_dir),
        "PASER_PRUNED_MODEL": str(pruned),
        "PASER_SCORE_SHARDS": str(SHARDS),
        "PASER_SCORE_WORKERS": "0",  # the shards one after another in the step's process (but on a Dask executor)
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


def materialize_scores(env: dict[str, str], cwd: Path) -> str:
    """The variant's scores on an executor: `dagster asset materialize` of ``<variant>/degradation_scores``."""
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
            SCORES.to_user_string(),
        ],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory, setting: dict[str, str]) -> list[tuple]:
    root = tmp_path_factory.mktemp("in-process")
    env = {**setting, "PASER_DB": str(root / "paser.duckdb")}
    defs = build_definitions(PaserConfig.from_env(env), PaserDuckDB(database=env["PASER_DB"]))
    run = run_graph(
        defs, dg.DagsterInstance.ephemeral(), selection=f'{BEFORE_SCORES} or key:"{SCORES.to_user_string()}"'
    )
    assert run.success, run.failures()
    assert run.materialized == [f"{VARIANT}/degradation_scores", f"{VARIANT}/pruned_model", "recovery_pool"]
    rows = scores(env["PASER_DB"])
    assert {row[1] for row in rows} == set(range(SHARDS))  # both shards hold samples
    assert all(row[1] == shard_of(row[2], SHARDS) for row in rows)  # the table keeps each sample's shard
    return rows


def test_multiprocess_executor_gives_the_in_process_table(tmp_path: Path, setting, in_process) -> None:
    env, instance = prepare(tmp_path, setting)
    logs = materialize_scores({**env, "PASER_EXECUTOR": "multiprocess"}, tmp_path)
    step = SCORES.to_python_identifier()  # the step of external/degradation_scores
    assert f'Executing step "{step}" in subprocess' in logs
    assert scores(env["PASER_DB"]) == in_process
    records = instance.fetch_materializations(SCORES, limit=10).records
    assert len(records) == 1 and records[0].partition_key is None


def test_dask_executor_on_a_local_cluster_gives_the_in_process_table(
    tmp_path: Path, setting, in_process, monkeypatch: pytest.MonkeyPatch
) -> None:
    distributed = pytest.importorskip("distributed")
    env, _ = prepare(tmp_path, setting)
    with socket.socket() as probe:  # a free port, so that the workers can be told the scheduler's address
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**env, "PASER_EXECUTOR": "dask", "PASER_DASK_ADDRESS": f"tcp://127.0.0.1:{port}"}
    for name, value in env.items():  # the workers import paser_assets.definitions with these settings
        monkeypatch.setenv(name, value)
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1", scheduler_port=port
    ) as cluster:
        assert cluster.scheduler_address == env["PASER_DASK_ADDRESS"]
        materialize_scores(env, tmp_path)
        with distributed.Client(cluster) as client:
            prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(map(str, dask_scheduler.task_prefixes)))
    # The Dask scheduler ran the scoring step as its task, and the step handed it the shards (PASER_DASK_ADDRESS).
    assert any(prefix.endswith(f".{SCORES.to_python_identifier()}") for prefix in prefixes), prefixes
    assert "score_shard_on_worker" in prefixes, prefixes
    assert scores(env["PASER_DB"]) == in_process
