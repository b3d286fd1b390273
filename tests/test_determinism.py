"""Two runs of the whole graph with the same seed and inputs give identical tables and exports, row by row."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest
from paser_cli import run_paser

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.runner import run_graph

pytestmark = pytest.mark.system

VARIANT = "magnitude-50"
# Columns that legitimately differ between two runs in two folders: pruned_model.path is the folder the
# pruned checkpoint was written to, inside each run's own model cache (tmp_path/<run>/models). Its content is
# compared through the table's content_hash column (a hash of the checkpoint files), which is not excluded.
RUN_SPECIFIC_COLUMNS = {("pruned_model", "path")}


def settings(root: Path, tiny_llama_dir: Path) -> dict[str, str]:
    """The run's settings as PASER_* variables: its own DuckDB file, model cache and export folder."""
    return {
        "PASER_DB": str(root / "run.duckdb"),
        "PASER_DEMO_SIZE": "64",
        "PASER_SEED": "0",
        "PASER_ORIGINAL_MODEL": str(tiny_llama_dir),
        "PASER_PRUNE_METHOD": "magnitude",
        "PASER_MODEL_CACHE": str(root / "models"),
        "PASER_EXPORT_DIR": str(root / "export"),
    }


def run_in_process(root: Path, tiny_llama_dir: Path) -> Path:
    """Materialize the whole graph in this process with ``run_graph``."""
    root.mkdir(parents=True)
    env = settings(root, tiny_llama_dir)
    defs = build_definitions(PaserConfig.from_env(env), PaserDuckDB.from_env(env))
    result = run_graph(defs, dg.DagsterInstance.ephemeral())
    assert result.success, result.failures()
    assert f"{VARIANT}/selection_export" in result.materialized
    return root


def run_in_subprocess(root: Path, tiny_llama_dir: Path) -> Path:
    """The same, as a user would in another process (``paser materialize``), with another hash seed: a result
    that depended on the iteration order of a set or dict of strings would differ from the in-process run."""
    root.mkdir(parents=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PASER_")}
    hash_seed = str(int(os.environ.get("PYTHONHASHSEED", "0") or 0) + 1)
    env.update(settings(root, tiny_llama_dir), DAGSTER_HOME="", PYTHONHASHSEED=hash_seed)
    result = run_paser(["materialize"], env, root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{VARIANT}/selection_export" in result.stdout
    return root


def snapshot(db: Path) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every table and view of schema ``paser``: its compared columns and all of its rows, sorted."""
    tables: dict[str, tuple[list[str], list[tuple]]] = {}
    with duckdb.connect(str(db), read_only=True) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_catalog = current_database() AND table_schema = 'paser' ORDER BY table_name"
            ).fetchall()
        ]
        for name in names:
            columns = [
                row[0]
                for row in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_catalog = current_database() "
                    "AND table_schema = 'paser' AND table_name = ? ORDER BY ordinal_position",
                    [name],
                ).fetchall()
                if (name, row[0]) not in RUN_SPECIFIC_COLUMNS
            ]
            select = ", ".join(f'"{column}"' for column in columns)
            tables[name] = (columns, conn.execute(f'SELECT {select} FROM paser."{name}" ORDER BY ALL').fetchall())
    return tables


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("determinism")
    return run_in_process(base / "first", tiny_llama_dir), run_in_subprocess(base / "second", tiny_llama_dir)


def test_every_table_is_identical_row_by_row(two_runs) -> None:
    first, second = (snapshot(root / "run.duckdb") for root in two_runs)
    expected = {
        "recovery_pool",
        "recovery_pool_rejected",
        "instruction_embeddings",
        "embedding_cache",
        "manifold",
        "clusters",
        "cluster_profiles",
        "sample_concepts",
        "pruned_model",
        "degradation_scores",
        "score_cache",
        "capability_degradation",
        "selection",
        "concept_graph",
        "selected_instructions",
        "variants",
    }
    assert expected <= set(first), sorted(first)
    assert set(first) == set(second)
    for name in sorted(first):
        columns, rows = first[name]
        assert second[name][0] == columns, name
        if name != "recovery_pool_rejected":  # the demo pool has no bad rows
            assert rows, f"{name} is empty: nothing would be compared"
        assert second[name][1] == rows, f"table {name} differs between two runs with the same seed"
    # the excluded column really is run-specific, while the checkpoint content is the same
    paths, hashes = zip(*(pruned_checkpoint(root / "run.duckdb") for root in two_runs), strict=True)
    assert paths[0] != paths[1] and hashes[0] == hashes[1]


def pruned_checkpoint(db: Path) -> tuple[str, str]:
    with duckdb.connect(str(db), read_only=True) as conn:
        ((path, content_hash),) = conn.execute("SELECT path, content_hash FROM paser.pruned_model").fetchall()
    return path, content_hash


def test_exports_are_identical(two_runs) -> None:
    folders = [root / "export" / VARIANT for root in two_runs]
    for name in ["selection.json", "selection.jsonl"]:
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), name
    tables = [pq.read_table(folder / "selection.parquet") for folder in folders]
    assert tables[0].num_rows > 0
    assert tables[0].equals(tables[1], check_metadata=True)
    assert (folders[0] / "selection.parquet").read_bytes() == (folders[1] / "selection.parquet").read_bytes()


def test_another_seed_gives_another_demo_pool(tmp_path: Path, two_runs) -> None:
    def pool(seed: int, db: Path) -> list[tuple]:
        database = PaserDuckDB(database=str(db))
        defs = build_definitions(PaserConfig(demo_size=64, seed=seed), database)
        result = dg.materialize(
            [defs.get_assets_def("recovery_pool")], resources=defs.resources, instance=dg.DagsterInstance.ephemeral()
        )
        assert result.success
        with duckdb.connect(str(db), read_only=True) as conn:
            return conn.execute("SELECT * FROM paser.recovery_pool ORDER BY ALL").fetchall()

    same = pool(0, tmp_path / "seed0.duckdb")
    assert same == snapshot(two_runs[0] / "run.duckdb")["recovery_pool"][1]
    other = pool(1, tmp_path / "seed1.duckdb")
    assert other and other != same
    assert {row[0] for row in other} != {row[0] for row in same}  # different samples, not just reordered
