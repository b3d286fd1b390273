"""Re-pruning recomputes exactly what depends on the pruned model; variants sit side by side.

These tests use a real on-disk Dagster instance (sqlite in a temporary DAGSTER_HOME), a real
DuckDB file and tiny Llama checkpoints; the "re-prune" rewrites a checkpoint folder on disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
from declared_rows import example_rows

from paser_assets import PaserConfig, PaserDuckDB, build_definitions, storage
from paser_assets.models.pruning import PruneRecipe
from paser_assets.per_variant import variant_asset_names
from paser_assets.registry import add_variant, remove_variant
from paser_assets.runner import observe, refresh, run_graph
from paser_assets.tables import PER_VARIANT_TABLES, TABLES
from paser_assets.variants import Variant

pytestmark = pytest.mark.system

SHARED = {
    "recovery_pool",
    "instruction_embeddings",
    "manifold",
    "clusters",
    "cluster_profiles",
    "sample_concepts",
    "holdout_split",
}
PER_VARIANT = {
    "pruned_model",
    "degradation_scores",
    "capability_degradation",
    "selection",
    "concept_graph",
    "selection_export",
}


def per_variant(variant: str) -> set[str]:
    """The assets of one variant, as the UI names them."""
    return {f"{variant}/{asset}" for asset in PER_VARIANT}


def save_checkpoint(folder: Path, seed: int) -> Path:
    from tiny_models import save_tiny_checkpoint  # the tests folder is on sys.path under pytest

    if folder.exists():
        shutil.rmtree(folder)
    return save_tiny_checkpoint(folder, seed=seed)


def materialized_since(instance: dg.DagsterInstance, after_storage_id: int) -> list[str]:
    """Asset materializations recorded in the instance's event log after a storage id."""
    names = []
    for key in instance.get_asset_keys():
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, after_storage_id=after_storage_id), limit=1000
        ).records
        names.extend(key.to_user_string() for _ in records)
    return sorted(names)


def last_storage_id(instance: dg.DagsterInstance) -> int:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("recovery_pool")), limit=1)
    ids = [r.storage_id for r in records.records]
    for key in instance.get_asset_keys():
        latest = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1).records
        ids.extend(r.storage_id for r in latest)
    return max(ids, default=0)


def variant_rows(database: PaserDuckDB, variant: str) -> dict[str, list[tuple]]:
    """The variant's rows in every table declared per variant that exists."""
    with database.get_connection(read_only=True) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} WHERE variant = ? ORDER BY ALL", [variant]).fetchall()
            for table in PER_VARIANT_TABLES
            if storage.table_exists(conn, table)
        }


# The recovery group is not materialized here (LoRA on a CPU is slow): its tables get rows made from their
# declarations instead, and each variant an adapter file where recovered_model would save it.
RECOVERY_WRITERS = set(variant_asset_names(recovery=True))
RECOVERY_TABLES = [name for name in PER_VARIANT_TABLES if set(TABLES[name].writers) & RECOVERY_WRITERS]


def add_recovery_results(setup: Setup, variant: str) -> None:
    with setup.database.write() as conn:
        for table in RECOVERY_TABLES:
            storage.append_rows(conn, table, example_rows(TABLES[table], variant=variant))
    adapter = setup.root / "models" / "adapters" / variant / "paser-0123456789abcdef"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16)


class Setup:
    def __init__(self, root: Path, original: Path, variants: dict[str, str]) -> None:
        self.root = root
        self.database = PaserDuckDB(database=str(root / "paser.duckdb"))
        self.config = PaserConfig(
            demo_size=64,
            original_model=str(original),
            variants=variants,
            model_cache_dir=str(root / "models"),
            export_dir=str(root / "export"),
        )
        self.defs = build_definitions(self.config, self.database)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory):
    """A real on-disk Dagster instance, as `dagster dev` would use with DAGSTER_HOME set."""
    root = tmp_path_factory.mktemp("dagster_home")
    with dg.instance_for_test(temp_dir=str(root)) as instance:
        yield instance


@pytest.fixture(scope="module")
def two_variants(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path, home: dg.DagsterInstance):
    root = tmp_path_factory.mktemp("incremental")
    external = save_checkpoint(root / "external-checkpoint", seed=1)
    setup = Setup(root, tiny_llama_dir, {"mag50": "magnitude:0.5", "ext": str(external)})
    run = run_graph(setup.defs, home)
    assert run.success, run.failures()
    return setup, external


def test_first_run_materializes_everything_for_every_variant(two_variants, home) -> None:
    everything = materialized_since(home, 0)
    expected = SHARED | per_variant("mag50") | per_variant("ext")
    assert set(everything) == expected


def test_reprune_recomputes_exactly_the_model_dependent_assets(two_variants, home) -> None:
    setup, external = two_variants
    before = last_storage_id(home)
    save_checkpoint(external, seed=7)  # the user re-prunes: new weights in the same folder

    run, stale = refresh(setup.defs, home)

    assert run.success, run.failures()
    expected = sorted(per_variant("ext"))
    assert stale == expected
    assert materialized_since(home, before) == expected  # read back from the instance's event log

    # Observing the unchanged checkpoint again finds nothing to do.
    before = last_storage_id(home)
    run, stale = refresh(setup.defs, home)
    assert run.success and stale == []
    assert materialized_since(home, before) == []
    assert "ext/pruned_checkpoint" in run.observed


def test_adding_a_variant_computes_only_it_and_keeps_the_others_byte_for_byte(tiny_llama_dir: Path, tmp_path: Path):
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        setup = Setup(tmp_path, tiny_llama_dir, {"mag50": "magnitude:0.5"})
        assert run_graph(setup.defs, instance).success
        add_recovery_results(setup, "mag50")
        first = variant_rows(setup.database, "mag50")
        assert set(first) == set(PER_VARIANT_TABLES) and all(first.values())
        before = last_storage_id(instance)

        add_variant(setup.database, Variant("nm24", recipe=PruneRecipe(method="magnitude", n_m=(2, 4))))
        defs = build_definitions(setup.config, setup.database)  # the new variant's assets, from the registry
        assert dg.AssetKey(["nm24", "selection"]) in defs.resolve_asset_graph().materializable_asset_keys
        run, missing = refresh(defs, instance)  # what `paser variants add` runs

        assert run.success, run.failures()
        expected = sorted(per_variant("nm24"))
        assert missing == expected
        assert materialized_since(instance, before) == expected
        # The new variant was scored from the original's cached outputs: only its pruned model ran.
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(["nm24", "degradation_scores"])), limit=1
        ).records
        metadata = records[0].asset_materialization.metadata
        assert int(metadata["scored_from_cached_original_outputs"].value) == int(metadata["scored_now"].value) > 0
        assert variant_rows(setup.database, "mag50") == first
        add_recovery_results(setup, "nm24")
        second = variant_rows(setup.database, "nm24")
        assert set(second) == set(PER_VARIANT_TABLES) and all(second.values())
        assert (tmp_path / "export" / "nm24" / "selection.parquet").exists()

        # Removing the new variant deletes its rows in every per-variant table and its files, nothing else.
        removal = remove_variant(instance, setup.database, "nm24", tmp_path / "export", tmp_path / "models")
        assert removal.rows == {table: len(rows) for table, rows in second.items()}
        assert variant_rows(setup.database, "nm24") == {table: [] for table in PER_VARIANT_TABLES}
        assert variant_rows(setup.database, "mag50") == first
        assert removal.paths == [tmp_path / "export" / "nm24", tmp_path / "models" / "adapters" / "nm24"]
        assert not [path for path in tmp_path.rglob("*") if "nm24" in path.name]
        assert (tmp_path / "export" / "mag50" / "selection.parquet").exists()
        assert (tmp_path / "models" / "adapters" / "mag50" / "paser-0123456789abcdef").is_dir()
        assert not [key for key in instance.get_asset_keys() if key.path[0] == "nm24"]  # its history is wiped
        graph = build_definitions(setup.config, setup.database).resolve_asset_graph()
        assert {key.path[0] for key in graph.get_all_asset_keys() if len(key.path) > 1} == {"mag50"}


def test_automation_requests_the_changed_variant_only(tiny_llama_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        external = save_checkpoint(tmp_path / "ckpt", seed=3)
        setup = Setup(tmp_path, tiny_llama_dir, {"mag50": "magnitude:0.5", "ext": str(external)})
        assert run_graph(setup.defs, instance).success
        first = dg.evaluate_automation_conditions(defs=setup.defs, instance=instance)
        assert requested_names(first, setup.defs) == set()  # everything is up to date

        save_checkpoint(external, seed=11)
        assert observe(setup.defs, instance).success
        second = dg.evaluate_automation_conditions(defs=setup.defs, instance=instance, cursor=first.cursor)
        assert requested_names(second, setup.defs) == per_variant("ext")  # nothing of mag50, nothing shared


def requested_names(result: dg.EvaluateAutomationConditionsResult, defs: dg.Definitions) -> set[str]:
    """The materializable assets one evaluation requested (not the checkpoint observations)."""
    graph = defs.resolve_asset_graph()
    return {key.to_user_string() for key in graph.materializable_asset_keys if result.get_num_requested(key)}


FIRST_RUN = """
import sys
from paser_assets.runner import default_instance
default_instance(sys.argv[1]).get_runs(limit=1)
"""


def test_commands_started_together_on_a_fresh_folder_create_one_instance(tmp_path: Path) -> None:
    """Four first runs at once: without the creation lock 6 tries in 6 failed (SQLite's 'table ... already exists',
    alembic's 'more than one head')."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    for attempt in range(3):
        database = tmp_path / f"try{attempt}" / "paser.duckdb"
        database.parent.mkdir()
        started = [
            subprocess.Popen(
                [sys.executable, "-c", FIRST_RUN, str(database)], env=env, stderr=subprocess.PIPE, text=True
            )
            for _ in range(4)
        ]
        errors = [process.communicate()[1] for process in started]
        assert [process.returncode for process in started] == [0] * 4, errors
        assert (database.parent / ".dagster_home" / "history" / "runs.db").exists()
