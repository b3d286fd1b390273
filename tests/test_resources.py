"""The DuckDB resource's settings from the environment (the pipeline's settings: tests/test_settings.py)."""

from __future__ import annotations

import pytest

from paser_assets.resources import PaserDuckDB, SettingError, parse_field_map


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
