"""New database files are created in a storage format that DuckDB 1.x (the `duckdb` shell of duckdb-cli) reads."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from declared_rows import example_rows

from paser_assets import storage
from paser_assets.resources import PaserDuckDB
from paser_assets.tables import TABLES


def storage_version(path: Path) -> str:
    """The storage format DuckDB reports for the file, e.g. 'v1.4.0+' (DuckDB 2 reports 'v2.0.0+' for its own)."""
    with duckdb.connect() as conn:
        conn.execute(f"ATTACH '{path}' AS probe (READ_ONLY)")
        query = "SELECT tags['storage_version'] FROM duckdb_databases() WHERE database_name = 'probe'"
        return conn.execute(query).fetchone()[0]


@pytest.mark.skipif(int(duckdb.__version__.split(".")[0]) < 2, reason="DuckDB 1.x writes a 1.x format anyway")
def test_a_new_file_keeps_the_duckdb_1_format_through_every_write(tmp_path: Path) -> None:
    database = PaserDuckDB(database=str(tmp_path / "db" / "runs.duckdb"))
    with database.write() as conn:
        for name, table in TABLES.items():
            storage.replace_table(conn, name, example_rows(table, rows=3))
    with database.get_connection() as conn:  # a second write session, and a checkpoint of everything
        conn.execute("CHECKPOINT")
    assert storage_version(Path(database.database)) == f"{storage.STORAGE_VERSION}+"
    with database.get_connection(read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM selection").fetchone()[0] == 3

    # What DuckDB 2 writes by default, for contrast: the format this guards against.
    with duckdb.connect(str(tmp_path / "default.duckdb")) as conn:
        conn.execute("CREATE TABLE t AS SELECT 1 AS x")
    assert storage_version(tmp_path / "default.duckdb") != f"{storage.STORAGE_VERSION}+"


def test_a_file_created_elsewhere_keeps_its_format(tmp_path: Path) -> None:
    """An existing file is opened as it is: DuckDB cannot lower a file's format, and nothing tries to."""
    path = tmp_path / "latest.duckdb"
    with duckdb.connect(str(path)) as conn:
        conn.execute("CREATE TABLE t AS SELECT 1 AS x")
    before = storage_version(path)
    database = PaserDuckDB(database=str(path))
    with database.write() as conn:
        storage.replace_table(conn, "clusters", example_rows(TABLES["clusters"]))
    assert storage_version(path) == before


@pytest.mark.skipif(shutil.which("duckdb") is None, reason="the duckdb shell (pip install duckdb-cli) is not installed")
def test_the_duckdb_shell_reads_a_new_file(tmp_path: Path) -> None:
    import subprocess

    database = PaserDuckDB(database=str(tmp_path / "runs.duckdb"))
    with database.write() as conn:
        storage.replace_table(conn, "clusters", example_rows(TABLES["clusters"], rows=4))
    shell = subprocess.run(
        ["duckdb", "-readonly", "-csv", database.database, "-c", "SET schema = 'paser'; SELECT count(*) FROM clusters"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout.split() == ["count_star()", "4"]
