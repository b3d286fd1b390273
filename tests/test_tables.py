"""The table declarations: consistent with DuckDB, with the asset graph and with docs/reference.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from reference_script import SCRIPT, reference_script

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.tables import (
    PER_VARIANT_TABLES,
    TABLES,
    Table,
    column_schema,
)


@pytest.fixture(scope="module")
def asset_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The names of the graph's assets: a shared asset's key, a variant's asset without its variant (and method)."""
    folder = tmp_path_factory.mktemp("defs")
    defs = build_definitions(PaserConfig(include_recovery=True), PaserDuckDB(database=str(folder / "paser.duckdb")))
    keys = defs.resolve_asset_graph().get_all_asset_keys()
    assert len({key.path[0] for key in keys if len(key.path) > 1}) == 1  # the default settings' one variant
    return {key.path[1] if len(key.path) > 1 else key.path[0] for key in keys}


def test_every_declared_type_is_spelled_as_duckdb_reports_it() -> None:
    # Existing tables are compared with the declaration by these strings, so they must be DuckDB's own.
    with duckdb.connect(":memory:") as conn:
        for table in TABLES.values():
            for column, sql_type in table.types.items():
                reported = conn.execute(f"SELECT typeof(CAST(NULL AS {sql_type}))").fetchone()[0]
                assert reported == sql_type, f"{table.name}.{column}: declare {reported}, not {sql_type}"


def test_every_writer_is_an_asset_and_an_assets_main_table_has_its_name(asset_names: set[str]) -> None:
    for table in TABLES.values():
        assert set(table.writers) <= asset_names, table.name
        if table.name in asset_names:
            assert table.writers == (table.name,), f"table {table.name} is the main table of asset {table.name}"
    assert TABLES["variants"].writers == ()  # the registry, written by `paser variants` and sync_variants


def test_the_renamed_tables_carry_their_assets_names(asset_names: set[str]) -> None:
    for old, new in [
        ("holdout", "holdout_split"),
        ("pruned_checkpoints", "pruned_model"),
        ("baseline_selection", "baseline_selections"),
    ]:
        assert old not in TABLES and new in TABLES and new in asset_names
    assert TABLES["recovered_adapters"].writers == ("recovered_model",)
    assert TABLES["recovered_adapters"].types == {
        "variant": "VARCHAR",
        "method": "VARCHAR",
        "path": "VARCHAR",
        "recipe_hash": "VARCHAR",
        "train_samples": "BIGINT",
        "train_tokens": "BIGINT",
        "train_seconds": "DOUBLE",
    }


def test_per_variant_tables_are_derived_from_the_declaration() -> None:
    assert PER_VARIANT_TABLES == tuple(name for name, table in TABLES.items() if table.per_variant)
    assert {"selection", "baseline_selections", "heldout_nll", "recovered_adapters", "variants"} <= set(
        PER_VARIANT_TABLES
    )
    assert {"recovery_pool", "score_cache", "embedding_cache"}.isdisjoint(PER_VARIANT_TABLES)
    for name in PER_VARIANT_TABLES:
        assert TABLES[name].types["variant"] == "VARCHAR", name
    with pytest.raises(ValueError, match="no variant column"):
        Table("broken", None, {"a": ("BIGINT", "x")}, per_variant=True, description="")


def test_the_declaration_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        TABLES["selection"].columns["extra"] = ("BIGINT", "sneaked in")  # type: ignore[index]
    assert "extra" not in TABLES["selection"].types


def test_column_schema_metadata_is_the_declaration() -> None:
    for name, table in TABLES.items():
        schema = column_schema(name)
        assert [(c.name, c.type, c.description) for c in schema.columns] == [
            (column, sql_type, description) for column, (sql_type, description) in table.columns.items()
        ]


def test_the_table_reference_is_up_to_date() -> None:
    script = reference_script()
    text = script.REFERENCE.read_text(encoding="utf-8")
    block = text.split(script.TABLES_START + "\n", 1)[1].split(script.TABLES_END, 1)[0]
    assert block == script.tables_markdown(), f"docs/reference.md's tables are out of date: run {script.UPDATE_COMMAND}"
    for name in TABLES:
        assert f"| `{name}` |" in block


def test_the_reference_script_checks_and_rewrites(tmp_path: Path) -> None:
    script = reference_script()
    assert script.main(["--check"]) == 0
    stale = tmp_path / "reference.md"
    stale.write_text(script.REFERENCE.read_text(encoding="utf-8").replace("| `recovery_pool` |", "| `pool` |", 1))
    assert script.main(["--check", "--path", str(stale)]) == 1
    assert script.main(["--path", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == script.REFERENCE.read_text(encoding="utf-8")
    assert subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True).returncode == 0
