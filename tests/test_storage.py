"""Typed writes: every table is stored with exactly its declared columns and types, whatever the frame holds.

All tests write real DuckDB files through :class:`PaserDuckDB`, whose connections have ``USE``d the PASER schema,
so the SQL here names tables bare, as the package does.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from declared_rows import example_rows

from paser_assets import storage
from paser_assets.cli import summary
from paser_assets.resources import PaserDuckDB
from paser_assets.tables import TABLES

ALL_TABLES = sorted(TABLES)


@pytest.fixture
def database(tmp_path: Path) -> PaserDuckDB:
    return PaserDuckDB(database=str(tmp_path / "warehouse.duckdb"))


def stored_types(database: PaserDuckDB, table: str) -> dict[str, str]:
    with database.get_connection(read_only=True) as conn:
        return storage.existing_columns(conn, table)


def rows_of(database: PaserDuckDB, table: str) -> list[tuple]:
    with database.get_connection(read_only=True) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY ALL").fetchall()


def selection_rows(variant: str, conflict_pairs: list[list[str]]) -> pd.DataFrame:
    """Rows of ``selection`` as the asset builds them, with the given conflict pairs per row."""
    count = len(conflict_pairs)
    return pd.DataFrame(
        {
            "variant": variant,
            "sample_id": [f"s{i}" for i in range(count)],
            "cluster": np.zeros(count, dtype=np.int64),
            "rank": np.arange(1, count + 1, dtype=np.int64),
            "ies": np.linspace(0.3, 0.1, count),
            "jsd": np.linspace(0.2, 0.1, count),
            "score": np.linspace(0.3, 0.1, count),
            "decision": ["concept_conflict" if pairs else "selected" for pairs in conflict_pairs],
            "conflict_pairs": conflict_pairs,
            "conflict_share": [0.5 if pairs else 0.0 for pairs in conflict_pairs],
            "refill_round": np.zeros(count, dtype=np.int64),
        }
    )


# --- every declared table and type, whatever the content -------------------------------------


@pytest.mark.parametrize("table", ALL_TABLES)
def test_no_rows_give_the_declared_types(database: PaserDuckDB, table: str) -> None:
    empty = pd.DataFrame({column: pd.Series([], dtype=object) for column in TABLES[table].columns})
    with database.write() as conn:
        storage.replace_table(conn, table, empty)
    assert stored_types(database, table) == TABLES[table].types
    assert rows_of(database, table) == []


@pytest.mark.parametrize("table", ALL_TABLES)
def test_all_null_columns_give_the_declared_types(database: PaserDuckDB, table: str) -> None:
    nulls = pd.DataFrame({column: [None, None] for column in TABLES[table].columns})
    with database.write() as conn:
        storage.replace_table(conn, table, nulls)
    assert stored_types(database, table) == TABLES[table].types
    assert rows_of(database, table) == [(None,) * len(TABLES[table].columns)] * 2


@pytest.mark.parametrize("table", [t for t in ALL_TABLES if any(s.endswith("[]") for s in TABLES[t].types.values())])
def test_empty_lists_give_the_declared_list_types(database: PaserDuckDB, table: str) -> None:
    frame = example_rows(TABLES[table])
    for column, sql_type in TABLES[table].types.items():
        if sql_type.endswith("[]"):
            frame[column] = [[] for _ in range(len(frame))]
    with database.write() as conn:
        storage.replace_table(conn, table, frame)
    assert stored_types(database, table) == TABLES[table].types
    with database.get_connection(read_only=True) as conn:
        lists = [c for c, t in TABLES[table].types.items() if t.endswith("[]")]
        assert conn.execute(f"SELECT {', '.join(lists)} FROM {table}").fetchall() == [tuple([] for _ in lists)] * 2


@pytest.mark.parametrize("table", ALL_TABLES)
def test_example_rows_round_trip_through_every_write(database: PaserDuckDB, table: str) -> None:
    frame = example_rows(TABLES[table], rows=3)
    with database.write() as conn:
        storage.append_rows(conn, table, frame.iloc[:1])
        storage.append_rows(conn, table, frame.iloc[1:])
    first = rows_of(database, table)
    assert len(first) == 3
    with database.write() as conn:
        storage.replace_table(conn, table, frame)
    assert rows_of(database, table) == first
    assert stored_types(database, table) == TABLES[table].types


def test_ints_in_a_double_column_stay_double(database: PaserDuckDB) -> None:
    frame = selection_rows("w50", [[], []]).assign(ies=[1, 2], jsd=[0, 0], conflict_share=[0, 1])
    assert frame["ies"].dtype.kind == "i"
    with database.write() as conn:
        storage.replace_partition(conn, "selection", {"variant": "w50"}, frame)
    assert stored_types(database, "selection")["ies"] == "DOUBLE"
    with database.get_connection(read_only=True) as conn:
        assert conn.execute("SELECT ies, conflict_share FROM selection ORDER BY ies").fetchall() == [
            (1.0, 0.0),
            (2.0, 1.0),
        ]


# --- the reproduced bug: a selection without conflicts, then one with --------------------------


def test_a_selection_without_conflicts_then_one_with_both_succeed(database: PaserDuckDB) -> None:
    with database.write() as conn:
        storage.replace_partition(conn, "selection", {"variant": "w50"}, selection_rows("w50", [[], []]))
    assert stored_types(database, "selection")["conflict_pairs"] == "VARCHAR[]"
    with database.write() as conn:
        storage.replace_partition(
            conn, "selection", {"variant": "nm24"}, selection_rows("nm24", [[], ["code | poem", "list | sort"]])
        )
    assert stored_types(database, "selection")["conflict_pairs"] == "VARCHAR[]"
    with database.get_connection(read_only=True) as conn:
        pairs = conn.execute("SELECT variant, conflict_pairs FROM selection ORDER BY variant, rank").fetchall()
    assert pairs == [("nm24", []), ("nm24", ["code | poem", "list | sort"]), ("w50", []), ("w50", [])]


def test_a_null_typed_table_left_by_an_older_version_is_migrated(database: PaserDuckDB) -> None:
    with database.write() as conn:  # what the old CREATE TABLE ... AS SELECT made of a conflict-free selection
        storage.replace_table(conn, "selection", selection_rows("w50", [[], []]))
        conn.execute("DROP TABLE selection")
        conn.register("old_rows", selection_rows("w50", [[], []]))
        conn.execute("CREATE TABLE selection AS SELECT * FROM old_rows")
        conn.unregister("old_rows")
    assert stored_types(database, "selection")["conflict_pairs"] == '"NULL"[]'
    before = rows_of(database, "selection")

    with database.write() as conn:
        storage.replace_partition(conn, "selection", {"variant": "nm24"}, selection_rows("nm24", [["a | b"]]))

    assert stored_types(database, "selection") == TABLES["selection"].types
    after = rows_of(database, "selection")
    assert [row for row in after if row[0] == "w50"] == before
    assert [row[8] for row in after if row[0] == "nm24"] == [["a | b"]]


# --- migrating tables of older versions ---------------------------------------------------------


def test_a_wrong_typed_table_is_migrated_without_losing_rows(database: PaserDuckDB) -> None:
    with database.write() as conn:  # an older layout: shard as DOUBLE, cost as VARCHAR, columns reordered
        conn.execute(
            "CREATE TABLE degradation_scores (sample_id VARCHAR, variant VARCHAR, shard DOUBLE, jsd DOUBLE, "
            "ies DOUBLE, cost VARCHAR, prompt_tokens INTEGER, response_tokens INTEGER, original_nll FLOAT, "
            "pruned_nll DOUBLE, truncated BOOLEAN)"
        )
        conn.execute(
            "INSERT INTO degradation_scores VALUES ('a', 'old', 0, 0.1, 0.01, '100', 4, 6, 1.5, 2.0, false), "
            "('b', 'old', 0, 0.2, 0.02, '400', 8, 12, 1.25, 2.5, NULL)"
        )
    fresh = example_rows(TABLES["degradation_scores"], variant="new", shard=0)
    with database.write() as conn:  # as the asset writes a variant's scores: all its shards at once
        storage.replace_partition(conn, "degradation_scores", {"variant": "new"}, fresh)

    assert stored_types(database, "degradation_scores") == TABLES["degradation_scores"].types
    with database.get_connection(read_only=True) as conn:
        old = conn.execute(
            "SELECT sample_id, shard, cost, prompt_tokens, original_nll, truncated FROM degradation_scores "
            "WHERE variant = 'old' ORDER BY sample_id"
        ).fetchall()
        assert conn.execute("SELECT count(*) FROM degradation_scores WHERE variant = 'new'").fetchone() == (2,)
    assert old == [("a", 0, 100, 4, 1.5, False), ("b", 0, 400, 8, 1.25, None)]


def test_a_missing_column_is_added_and_an_undeclared_one_dropped_keeping_the_rows(database: PaserDuckDB) -> None:
    with database.write() as conn:
        conn.execute("CREATE TABLE concept_graph (variant VARCHAR, concept_a VARCHAR, weight DOUBLE)")
        conn.execute("INSERT INTO concept_graph VALUES ('old', 'code', 1.0)")
    with database.write() as conn:
        storage.append_rows(conn, "concept_graph", example_rows(TABLES["concept_graph"], rows=1, variant="new"))
    assert stored_types(database, "concept_graph") == TABLES["concept_graph"].types
    assert rows_of(database, "concept_graph") == [("new", "concept_a-0", "concept_b-0", 0), ("old", "code", None, None)]


def test_an_impossible_cast_names_the_column_and_loses_no_row(database: PaserDuckDB) -> None:
    with database.write() as conn:
        conn.execute("CREATE TABLE capability_degradation (variant VARCHAR, cluster VARCHAR, budget BIGINT)")
        conn.execute("INSERT INTO capability_degradation VALUES ('old', '3', 10), ('old', 'three', 5)")
    with pytest.raises(ValueError) as error, database.write() as conn:
        storage.replace_partition(
            conn,
            "capability_degradation",
            {"variant": "new"},
            example_rows(TABLES["capability_degradation"], variant="new"),
        )
    message = str(error.value)
    assert "capability_degradation" in message and "cluster" in message and "'three'" in message
    assert "DROP TABLE capability_degradation" in message  # how to fix it
    with database.get_connection(read_only=True) as conn:
        assert conn.execute("SELECT * FROM capability_degradation ORDER BY ALL").fetchall() == [
            ("old", "3", 10),
            ("old", "three", 5),
        ]


# --- errors: the real one is reported, and the database stays usable ----------------------------


def test_an_error_inside_a_write_is_the_one_reported_and_the_next_write_succeeds(database: PaserDuckDB) -> None:
    with database.write() as conn:
        storage.replace_partition(conn, "selection", {"variant": "w50"}, selection_rows("w50", [[], ["a | b"]]))
    bad = selection_rows("nm24", [["c | d"]]).assign(cluster=["not a number"])
    with pytest.raises(duckdb.ConversionException) as error, database.write() as conn:
        storage.replace_partition(conn, "selection", {"variant": "nm24"}, bad)
    assert "not a number" in str(error.value)
    assert "aborted" not in str(error.value).lower()
    assert any("table selection" in note for note in error.value.__notes__)

    with database.write() as conn:  # a fresh write on a fresh connection works
        storage.replace_partition(conn, "selection", {"variant": "nm24"}, selection_rows("nm24", [["c | d"]]))
    with database.get_connection(read_only=True) as conn:
        assert conn.execute("SELECT variant, count(*) FROM selection GROUP BY variant ORDER BY variant").fetchall() == [
            ("nm24", 1),
            ("w50", 2),
        ]


def test_a_failed_write_on_the_same_connection_leaves_it_usable(database: PaserDuckDB) -> None:
    with database.get_connection() as conn:
        with pytest.raises(duckdb.ConversionException), storage.transaction(conn):
            storage.replace_table(conn, "clusters", example_rows(TABLES["clusters"]).assign(cluster=["x", "y"]))
        assert not storage.table_exists(conn, "clusters")  # rolled back, the table it created included
        with storage.transaction(conn):
            storage.replace_table(conn, "clusters", example_rows(TABLES["clusters"]))
        assert conn.execute("SELECT count(*) FROM clusters").fetchone() == (2,)


def test_an_error_after_a_write_rolls_back_every_table_of_the_block(database: PaserDuckDB) -> None:
    with database.write() as conn:
        storage.replace_table(conn, "recovery_pool", example_rows(TABLES["recovery_pool"]))
    before = rows_of(database, "recovery_pool")
    with pytest.raises(RuntimeError, match="the asset failed"), database.write() as conn:
        storage.replace_table(conn, "recovery_pool", example_rows(TABLES["recovery_pool"], rows=5))
        storage.replace_table(conn, "recovery_pool_rejected", example_rows(TABLES["recovery_pool_rejected"]))
        raise RuntimeError("the asset failed")
    assert rows_of(database, "recovery_pool") == before
    with database.get_connection(read_only=True) as conn:
        assert not storage.table_exists(conn, "recovery_pool_rejected")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda f: f.drop(columns=["conflict_share"]), "lacks ['conflict_share']"),
        (lambda f: f.assign(weight=1.0), "has undeclared ['weight']"),
        (lambda f: f.rename(columns={"rank": "position"}), "lacks ['rank'] and has undeclared ['position']"),
    ],
)
def test_a_frame_whose_columns_differ_is_refused_naming_them(database: PaserDuckDB, change, named: str) -> None:
    frame = change(selection_rows("w50", [[]]))
    for write in (
        lambda conn: storage.replace_table(conn, "selection", frame),
        lambda conn: storage.append_rows(conn, "selection", frame),
        lambda conn: storage.replace_partition(conn, "selection", {"variant": "w50"}, frame),
    ):
        with pytest.raises(ValueError, match="cannot write table selection") as error, database.write() as conn:
            write(conn)
        assert named in str(error.value)
    with database.get_connection(read_only=True) as conn:
        assert not storage.table_exists(conn, "selection")


def test_an_undeclared_table_is_refused(database: PaserDuckDB) -> None:
    with pytest.raises(ValueError, match=r"not declared in paser_assets/tables\.py"), database.write() as conn:
        storage.replace_table(conn, "scratch", pd.DataFrame({"a": [1]}))


# --- bare table names -----------------------------------------------------------------------------


@pytest.mark.parametrize(("file_name", "schema"), [("paser.duckdb", "paser"), ("runs.duckdb", "paser"), ("x.db", "x")])
def test_bare_table_names_resolve_in_the_configured_schema(tmp_path: Path, file_name: str, schema: str) -> None:
    database = PaserDuckDB(database=str(tmp_path / file_name), schema_name=schema)
    with database.write() as conn:
        storage.replace_table(conn, "clusters", example_rows(TABLES["clusters"], rows=3))
        conn.execute("CREATE OR REPLACE VIEW big_clusters AS SELECT * FROM clusters WHERE cluster > 0")
    with database.get_connection(read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM clusters").fetchone() == (3,)
        assert conn.execute("SELECT count(*) FROM big_clusters").fetchone() == (2,)
        assert conn.execute("SELECT current_schema()").fetchone() == (schema,)
        assert len(storage.read_table(conn, "clusters", "sample_id")) == 3
    assert len(database.read("clusters")) == 3
    with duckdb.connect(database.database, read_only=True) as raw:  # where the table really is
        catalog = Path(file_name).stem
        assert raw.execute(f'SELECT count(*) FROM "{catalog}"."{schema}".clusters').fetchone() == (3,)


def test_a_schema_beside_a_same_named_table_elsewhere_is_not_confused(tmp_path: Path) -> None:
    path = tmp_path / "paser.duckdb"
    with duckdb.connect(str(path)) as raw:  # a user's own table named like a PASER table, in schema main
        raw.execute("CREATE TABLE main.clusters AS SELECT 'mine' AS owner")
    database = PaserDuckDB(database=str(path))
    with pytest.raises(storage.SchemaNotFoundError), database.get_connection(read_only=True):
        pass
    with database.write() as conn:
        storage.replace_table(conn, "clusters", example_rows(TABLES["clusters"]))
    with database.get_connection(read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM clusters").fetchone() == (2,)
    with duckdb.connect(str(path), read_only=True) as raw:
        assert raw.execute("SELECT owner FROM main.clusters").fetchall() == [("mine",)]


def test_a_read_only_connection_to_a_file_without_the_schema_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "empty.duckdb"
    duckdb.connect(str(path)).close()
    database = PaserDuckDB(database=str(path), schema_name="results")
    with pytest.raises(LookupError) as error, database.get_connection(read_only=True):
        pass
    assert str(path) in str(error.value) and "'results'" in str(error.value)
    assert "nothing to summarize" in summary(database) and str(path) in summary(database)
    with duckdb.connect(str(path), read_only=True) as raw:  # the read-only attempt created nothing
        assert (
            raw.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'results'").fetchone()[0]
            == 0
        )


def test_a_missing_table_is_a_lookup_error_naming_it(database: PaserDuckDB) -> None:
    with pytest.raises(LookupError, match="table clusters does not exist yet"):
        database.read("clusters")


# --- the embedding fast path --------------------------------------------------------------------


@pytest.mark.system
def test_100k_embeddings_are_written_and_read_back_quickly(database: PaserDuckDB) -> None:
    rows, dims = 100_000, 384
    vectors = np.random.default_rng(0).standard_normal((rows, dims), dtype=np.float32)
    frame = pd.DataFrame({"sample_id": [f"s{i:06d}" for i in range(rows)], "embedding": list(vectors)})
    arrow = storage.to_arrow(frame, TABLES["instruction_embeddings"])
    assert arrow.schema.field("embedding").type == pa.list_(pa.float32())  # one flat buffer, no per-row conversion

    start = time.monotonic()
    with database.write() as conn:
        storage.replace_table(conn, "instruction_embeddings", frame)
    written = time.monotonic() - start
    back = database.read("instruction_embeddings")
    elapsed = time.monotonic() - start
    assert stored_types(database, "instruction_embeddings")["embedding"] == "FLOAT[]"
    np.testing.assert_array_equal(
        np.stack(back["embedding"].to_numpy()[[0, 54_321, rows - 1]]), vectors[[0, 54_321, -1]]
    )
    print(f"100k x 384 embeddings: written in {written:.1f} s, written and read in {elapsed:.1f} s")
    assert elapsed < 60, f"writing and reading 100k embeddings took {elapsed:.0f} s"


# --- folders published as one set


def folder_with(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_replace_folder_swaps_in_the_new_set_whole(tmp_path: Path, swap: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if swap == "two renames":  # a system or file system without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(storage, "_exchange", lambda staging, target: False)
    target = folder_with(tmp_path / "v1", {"a.json": "old a", "b.json": "old b", "stale.txt": "old"})
    staging = storage.staging_folder_beside(target)
    assert staging.parent == tmp_path and staging.name.startswith(".v1.")
    (staging / "a.json").write_text("new a")
    (staging / "b.json").write_text("new b")
    storage.replace_folder(staging, target)
    assert contents(target) == {"a.json": "new a", "b.json": "new b"}
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]  # neither the staging nor the old set is left


def test_replace_folder_creates_a_missing_target(tmp_path: Path) -> None:
    staging = storage.staging_folder_beside(tmp_path / "deep" / "v1")
    (staging / "a.json").write_text("a")
    storage.replace_folder(staging, tmp_path / "deep" / "v1")
    assert contents(tmp_path / "deep" / "v1") == {"a.json": "a"}
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["v1"]


def test_only_the_staging_folders_of_dead_processes_are_removed(tmp_path: Path) -> None:
    target = folder_with(tmp_path / "v1", {"a.json": "a"})
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = folder_with(tmp_path / f".v1.{finished.stdout.strip()}.abc.partial", {"a.json": "half"})
    ours = storage.staging_folder_beside(target)
    other_variant = folder_with(tmp_path / f".v10.{finished.stdout.strip()}.abc.partial", {"a.json": "x"})
    assert storage.remove_leftover_staging(target) == [dead]
    assert not dead.exists() and ours.is_dir() and other_variant.is_dir() and contents(target) == {"a.json": "a"}
