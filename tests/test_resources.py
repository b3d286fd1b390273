"""The DuckDB resource's settings from the environment (the pipeline's settings: tests/test_settings.py)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import duckdb
import pytest

from paser_assets.resources import PaserConfig, PaserDuckDB, SettingError, parse_field_map


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
