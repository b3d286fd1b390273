"""The DuckDB resource's settings from the environment (the pipeline's settings: tests/test_settings.py)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
from fault_injection import disk_full_inside_writes_of, fill_the_disk

from paser_assets import build_definitions, storage
from paser_assets.resources import PaserConfig, PaserDuckDB, SettingError, parse_field_map
from paser_assets.runner import GraphRun, run_graph


def test_database_defaults_without_environment() -> None:
    database = PaserDuckDB.from_env({})
    assert database.database == "paser.duckdb" and database.schema_name == "paser"
    assert PaserDuckDB.from_env({"PASER_DB": "x.duckdb", "PASER_DB_LOCK_TIMEOUT": "5"}).lock_timeout_s == 5.0


def test_field_map_syntax_errors() -> None:
    with pytest.raises(SettingError, match="pool_field=source_field"):
        parse_field_map("output")
    with pytest.raises(SettingError):
        parse_field_map("=answer")


@pytest.mark.parametrize("schema", ["paser; DROP TABLE x", 'paser"', "1abc", "a-b", "x" * 64, "main.paser"])
def test_schema_names_are_validated(schema: str) -> None:
    with pytest.raises(SettingError, match="schema"):
        PaserDuckDB.from_env({"PASER_SCHEMA": schema})


def test_database_paths_are_checked_before_any_work(tmp_path: Path) -> None:
    sqlite = tmp_path / "other.db"
    connection = sqlite3.connect(sqlite)
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    connection.close()
    text = tmp_path / "notes.duckdb"
    text.write_text("not a database at all")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = {
        str(tmp_path): "is a folder",
        str(sqlite): "is not a DuckDB database (it is an SQLite database)",
        str(text): "is not a DuckDB database",
        str(blocker / "paser.duckdb"): "is a file, not a folder",
    }
    for value, message in cases.items():
        with pytest.raises(SettingError, match=re.escape(f"PASER_DB={value!r}")) as error:
            PaserDuckDB.from_env({"PASER_DB": value})
        assert message in str(error.value) and "\n" not in str(error.value)
    empty = tmp_path / "empty.duckdb"
    empty.touch()  # DuckDB refuses an empty file too
    with pytest.raises(SettingError, match="is not a DuckDB database \\(it is empty\\)"):
        PaserDuckDB.from_env({"PASER_DB": str(empty)})
    real = tmp_path / "real.duckdb"
    duckdb.connect(str(real)).close()
    assert PaserDuckDB.from_env({"PASER_DB": str(real)}).database == str(real)
    assert PaserDuckDB.from_env({"PASER_DB": str(tmp_path / "new" / "p.duckdb")})  # to be created


def test_folder_settings_may_not_name_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "export"
    blocker.write_text("x")
    for variable in ("PASER_EXPORT_DIR", "PASER_MODEL_CACHE"):
        with pytest.raises(SettingError, match=f"{variable}=.*is a file, not a folder"):
            PaserConfig.from_env({variable: str(blocker)})


# --- a full disk under the DuckDB file


def pool_rows(database: PaserDuckDB) -> list[tuple]:
    with database.get_connection(read_only=True) as conn:
        return conn.execute("SELECT * FROM recovery_pool ORDER BY sample_id").fetchall()


def materialize_pool(database: PaserDuckDB, demo_size: int) -> GraphRun:
    defs = build_definitions(PaserConfig(demo_size=demo_size), database)
    return run_graph(defs, dg.DagsterInstance.ephemeral(), "key:recovery_pool")


def test_a_full_disk_under_the_database_is_named_and_rolled_back(tmp_path: Path, monkeypatch) -> None:
    database = PaserDuckDB(database=str(tmp_path / "paser.duckdb"))
    assert materialize_pool(database, 24).success
    before = pool_rows(database)

    with monkeypatch.context() as patched:
        for name, write in disk_full_inside_writes_of("recovery_pool").items():
            patched.setattr(storage, name, write)
        failed = materialize_pool(database, 40)
    assert not failed.success
    [failure] = failed.failures()
    assert failure.startswith(f"recovery_pool: no space left on {database.database} (writing /dev/full): ")
    assert "set PASER_DB to a place on another one; any unfinished write was rolled back" in failure
    assert "\n" not in failure and "Current transaction is aborted" not in failure
    assert pool_rows(database) == before  # rolled back: the 24-row pool, not a part of the 40-row one

    again = materialize_pool(database, 40)  # the disk has room again: the same database takes the write
    assert again.success, again.failures()
    assert len(pool_rows(database)) > len(before)


def test_disk_full_recognises_what_each_writer_raises(tmp_path: Path) -> None:
    """Genuine errors of a write to /dev/full, which always reports a full disk: Python's, Arrow's and
    DuckDB's (in a transaction, and the "aborted" error that a later statement gets)."""
    errors: list[BaseException] = []
    try:
        with open("/dev/full", "w") as handle:
            handle.write("x" * 100_000)
    except OSError as error:
        errors.append(error)
    try:
        pd.DataFrame({"n": range(100_000)}).to_parquet("/dev/full")
    except OSError as error:
        errors.append(error)
    with duckdb.connect() as conn:
        conn.execute("BEGIN TRANSACTION")
        try:
            fill_the_disk(conn)
        except duckdb.Error as error:
            errors.append(error)
    assert len(errors) == 3 and all(storage.disk_full(error) for error in errors)
    assert "(writing /dev/full)" in storage.no_space_message(errors[2], tmp_path / "p.duckdb", "PASER_DB", "ok")
    assert not storage.disk_full(duckdb.IOException('Could not write file "/x": Permission denied'))
    assert not storage.disk_full(PermissionError(13, "Permission denied"))
