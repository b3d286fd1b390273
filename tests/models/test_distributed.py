"""Scoring shards on a real Dask cluster: the same rows as in one process, and no worker opens the DuckDB file."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from paser_assets import PaserConfig, PaserDuckDB, build_definitions, storage
from paser_assets.models.distributed import ParquetScoreStore
from paser_assets.models.scoring import SampleScore
from paser_assets.runner import run_graph

pytestmark = pytest.mark.system

SCORES = ["degradation_scores", "capability_degradation"]


def _forbid_duckdb() -> int:
    """Run in each worker: any attempt to open a DuckDB database there fails and is counted."""
    import duckdb

    def refuse(*args, **kwargs):
        duckdb.refused_connections = getattr(duckdb, "refused_connections", 0) + 1
        raise PermissionError("a Dask worker must not open the DuckDB file")

    duckdb.connect = refuse
    return 0


def _refused() -> int:
    import duckdb

    return getattr(duckdb, "refused_connections", 0)


def _scores(root: Path, original: Path, instance: dg.DagsterInstance, **settings) -> tuple[pd.DataFrame, dict]:
    database = PaserDuckDB(database=str(root / "paser.duckdb"))
    config = PaserConfig(
        demo_size=48,
        original_model=str(original),
        variants={"mag50": "magnitude:0.5"},
        model_cache_dir=str(root / "models"),
        export_dir=str(root / "export"),
        **settings,
    )
    run = run_graph(build_definitions(config, database), instance)
    assert run.success, run.failures()
    with database.get_connection(read_only=True) as conn:
        table = storage.read_table(conn, "degradation_scores").sort_values("sample_id").reset_index(drop=True)
    event = next(e for e in run.get_asset_materialization_events() if e.asset_key.path[-1] == "degradation_scores")
    metadata = {k: v.value for k, v in event.event_specific_data.materialization.metadata.items()}
    return table, metadata


def test_two_dask_workers_score_the_same_rows_as_one_process_and_never_open_duckdb(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    from dask.distributed import Client, LocalCluster

    (tmp_path / "home").mkdir()
    (tmp_path / "home-dask").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        alone, facts = _scores(tmp_path / "in-process", tiny_llama_dir, instance, score_shards=2, score_workers=0)
        assert facts["scored_in"] == "this process"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
        dg.instance_for_test(temp_dir=str(tmp_path / "home-dask")) as instance,
    ):
        assert set(client.run(_forbid_duckdb).values()) == {0}
        spread, facts = _scores(
            tmp_path / "dask", tiny_llama_dir, instance, score_shards=2, dask_address=cluster.scheduler_address
        )
        refused = client.run(_refused)
    assert len(refused) == 2 and sum(refused.values()) == 0  # the guard was in place and never tripped
    assert facts["scored_in"] == f"the Dask cluster at {cluster.scheduler_address}"
    assert int(facts["scored_now"]) == len(spread) and not list((tmp_path / "dask" / "models" / "score_shards").rglob(
        "*.parquet"))  # fmt: skip
    assert sorted(set(spread["shard"])) == [0, 1]
    pd.testing.assert_frame_equal(spread, alone, check_exact=True)  # bit for bit: a shard's batches are the same


def test_parquet_store_keeps_each_commit_and_reads_them_back(tmp_path: Path) -> None:
    store = ParquetScoreStore(tmp_path)
    fields = list(SampleScore.__dataclass_fields__)

    def score(sample: str, jsd: float) -> SampleScore:
        values = {name: 0 for name in fields}
        values.update(sample_id=sample, jsd=jsd, truncated=False)
        return SampleScore(**values)

    store.append("key-1", [score("a", 0.1), score("b", 0.2)])
    store.append("key-1", [score("c", 0.3)])
    store.append("key-2", [score("a", 0.9)])
    frame = store.read("key-1")
    assert sorted(frame["sample_id"]) == ["a", "b", "c"]
    assert store.read("key-1", ["c"])["jsd"].tolist() == [0.3]
    assert store.read("key-2")["jsd"].tolist() == [0.9]
    assert not list(tmp_path.rglob("*.tmp"))
    store.clear("key-1")
    assert store.read("key-1").empty and len(store.read("key-2")) == 1
