"""Names from config never reach SQL or the file system unchecked; values are bound, exports stay in their folder.

Schema, table and variant names are interpolated into SQL (quoted identifiers) and into export paths, so each is
validated against a strict pattern; injection strings, look-alike letters, over-long and empty names are refused.
Field names of the input and variant names used as values are data: they are only dict keys or bound parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from paser_assets import PaserConfig, PaserDuckDB, build_definitions, storage
from paser_assets.assets.selection import export_records, safe_export_path
from paser_assets.models.pruning import PruneRecipe
from paser_assets.per_variant import variant_key
from paser_assets.registry import register_variants, remove_variant
from paser_assets.resources import SettingError
from paser_assets.variants import Variant, VariantError, parse_variant_spec, parse_variants, validate_variant_name

# Refused everywhere: SQL and path injection, whitespace, look-alike letters (Cyrillic 'а', fullwidth letters,
# a zero-width space, an accented letter), a trailing newline (which `$` in a regex would let through), empty.
INJECTIONS = [
    "paser; DROP TABLE x",
    'x"; --',
    "x'; DROP TABLE recovery_pool; --",
    '"paser"',
    "../etc",
    "a/b",
    "a.b",
    "a b",
    "tab\tname",
    "paser\n",
    "p\u0430ser",  # Cyrillic a
    "\uff50\uff41\uff53\uff45\uff52",  # fullwidth 'paser'
    "paser\u200b",
    "caf\u00e9",
    "",
    "-leading-dash",
]
SQL_IDENTIFIER_ONLY = ["a-b", "1abc"]  # fine as variant names (not SQL identifiers), refused as schema/table names


# --- schema names ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*INJECTIONS, *SQL_IDENTIFIER_ONLY, "x" * 64])
def test_schema_names_are_refused_by_the_resource(name: str) -> None:
    with pytest.raises(ValueError, match="schema name"):
        PaserDuckDB(database=":memory:", schema_name=name)


@pytest.mark.parametrize("name", [n for n in [*INJECTIONS, *SQL_IDENTIFIER_ONLY, "x" * 64, "  "] if n])
def test_schema_names_are_refused_from_the_environment(name: str) -> None:
    # (An empty PASER_SCHEMA means "unset": the default schema; a blank one is refused.)
    with pytest.raises(SettingError, match="PASER_SCHEMA"):
        PaserDuckDB.from_env({"PASER_SCHEMA": name})


def test_valid_schema_names_up_to_63_characters_are_accepted() -> None:
    for name in ["paser", "_private", "Paser_2", "x" * 63]:
        assert PaserDuckDB(database=":memory:", schema_name=name).schema_name == name
    assert PaserDuckDB.from_env({"PASER_SCHEMA": ""}).schema_name == "paser"  # empty means unset


# --- table names (storage) -------------------------------------------------------------------


@pytest.fixture
def conn():
    connection = duckdb.connect(":memory:")
    connection.execute("CREATE SCHEMA paser")
    connection.execute("CREATE TABLE paser.x AS SELECT 1 AS a")
    storage.use_schema(connection, "paser", create=False)
    yield connection
    connection.close()


def tables(conn) -> list[tuple]:
    return conn.execute("SELECT table_schema, table_name FROM information_schema.tables ORDER BY ALL").fetchall()


@pytest.mark.parametrize("name", [*INJECTIONS, *SQL_IDENTIFIER_ONLY, "x" * 64])
def test_table_and_schema_identifiers_are_refused(conn, name: str) -> None:
    with pytest.raises(ValueError, match="invalid table name"):
        storage.validate_identifier(name, "table name")
    with pytest.raises(ValueError, match="invalid table name"):
        storage.declared(name)
    with pytest.raises(ValueError, match="invalid table name"):
        storage.read_table(conn, name)
    with pytest.raises(ValueError, match="invalid schema name"):
        storage.use_schema(conn, name, create=True)
    assert conn.execute("SELECT current_schema()").fetchone() == ("paser",)


@pytest.mark.parametrize("name", ['x"; DROP TABLE paser.x; --', "x; DROP TABLE paser.x", "y' OR '1'='1"])
def test_writing_a_table_with_an_injected_name_changes_nothing(conn, name: str) -> None:
    before = tables(conn)
    with pytest.raises(ValueError, match="invalid table name"):
        storage.replace_table(conn, name, pd.DataFrame({"a": [2]}))
    with pytest.raises(ValueError, match="invalid table name"):
        storage.append_rows(conn, name, pd.DataFrame({"a": [2]}))
    with pytest.raises(ValueError, match="invalid table name"):
        storage.replace_partition(conn, name, {"a": 2}, pd.DataFrame({"a": [2]}))
    assert tables(conn) == before
    assert conn.execute("SELECT a FROM paser.x").fetchall() == [(1,)]


def test_table_lookup_binds_names_as_values(conn) -> None:
    # Interpolated into SQL, "' OR '1'='1" would make this true for any table.
    assert storage.table_exists(conn, "x")
    assert not storage.table_exists(conn, "nope' OR '1'='1")
    assert not storage.existing_columns(conn, "nope' OR '1'='1")


def test_partition_values_are_bound_not_interpolated(conn) -> None:
    def rows(variants: list[str], rank: int) -> pd.DataFrame:
        return pd.DataFrame({"variant": variants, "method": "random", "rank": rank, "sample_id": "s"})

    storage.replace_table(conn, "baseline_selections", rows(["a", "b"], 1))
    evil = "a' OR '1'='1"
    storage.replace_partition(conn, "baseline_selections", {"variant": evil}, rows([evil], 3))
    assert conn.execute("SELECT variant, rank FROM paser.baseline_selections ORDER BY ALL").fetchall() == [
        ("a", 1),
        (evil, 3),
        ("b", 1),
    ]


# --- variant names ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*INJECTIONS, "v" * 65])
def test_variant_names_are_refused(name: str) -> None:
    with pytest.raises(VariantError, match="invalid variant name"):
        validate_variant_name(name)
    with pytest.raises(VariantError, match="invalid variant name"):
        Variant(name, recipe=PruneRecipe())
    with pytest.raises(ValueError, match="invalid variant name"):
        PaserConfig(variants={name: "wanda:0.5"})


@pytest.mark.parametrize("name", [*INJECTIONS, "v" * 65])
def test_variant_names_are_refused_in_variant_lists(name: str) -> None:
    # Names holding ';' or '=' split differently; whichever part is bad, the whole list is refused.
    with pytest.raises(VariantError):
        parse_variants(f"ok=wanda:0.5; {name}=magnitude:0.5")
    with pytest.raises(SettingError, match="PASER_VARIANTS"):
        PaserConfig.from_env({"PASER_VARIANTS": f"ok=wanda:0.5; {name}=magnitude:0.5"})


def test_valid_variant_names_are_accepted() -> None:
    names = ["wanda50", "mag-2-4", "1st_try", "v" * 64]
    assert [v.name for v in parse_variants("; ".join(f"{n}=magnitude:0.5" for n in names))] == names
    config = PaserConfig.from_env({"PASER_VARIANTS": "wanda50=wanda:0.5; mag-2-4=magnitude:2:4"})
    assert config.models.variants == {"wanda50": "wanda:0.5", "mag-2-4": "magnitude:2:4"}


def test_removing_an_injected_variant_name_touches_no_other_variant(tmp_path: Path) -> None:
    database = PaserDuckDB(database=str(tmp_path / "paser.duckdb"))
    register_variants(database, [parse_variant_spec("keep", "magnitude:0.5")])
    export_dir, models = tmp_path / "export", tmp_path / "models"
    (export_dir / "keep").mkdir(parents=True)
    (export_dir / "keep" / "selection.json").write_text("[]")
    (models / "adapters" / "keep").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    instance = dg.DagsterInstance.ephemeral()
    kept_history = {variant_key("keep", "selection"), variant_key("keep", "recovered_model", "paser")}
    for key in kept_history:
        instance.report_runless_asset_event(dg.AssetMaterialization(key))
    for name in ["keep' OR '1'='1", "../outside", "..", ".", "../export", "%", "*"]:
        removal = remove_variant(instance, database, name, export_dir, models)
        assert all(count == 0 for count in removal.rows.values()), (name, removal)
        assert removal.paths == [], (name, removal)
    with database.get_connection() as connection:
        assert connection.execute("SELECT variant FROM variants").fetchall() == [("keep",)]
    assert (export_dir / "keep" / "selection.json").exists() and (models / "adapters" / "keep").is_dir()
    assert (outside / "precious.txt").read_text() == "keep me"
    assert set(instance.get_asset_keys()) == kept_history  # the variant's history in the instance, too


# --- field map: odd source field names are data ----------------------------------------------


def test_field_named_like_sql_injection_maps_through_and_lands_as_data(tmp_path: Path) -> None:
    odd = "output'; DROP TABLE recovery_pool; --"
    payload = "'); DROP TABLE recovery_pool_rejected; --"
    path = tmp_path / "odd.jsonl"
    path.write_text(
        json.dumps({"instruction": 'Say "x"; --', odd: payload})
        + "\n"
        + json.dumps({"instruction": "No output."})
        + "\n",
        encoding="utf-8",
    )
    config = PaserConfig.from_env({"PASER_DATASET": str(path), "PASER_FIELD_MAP": f"output={odd}"})
    assert config.pool.field_map == {"output": odd}
    database = PaserDuckDB(database=str(tmp_path / "paser.duckdb"))
    defs = build_definitions(config, database)
    result = dg.materialize(
        [defs.get_assets_def("recovery_pool")],
        resources=defs.resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert result.success
    with database.get_connection(read_only=True) as connection:
        pool = connection.execute("SELECT instruction, output FROM recovery_pool").fetchall()
        rejected = connection.execute("SELECT source_row, reason, detail FROM recovery_pool_rejected").fetchall()
        names = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'paser' ORDER BY ALL"
        ).fetchall()
    assert pool == [('Say "x"; --', payload)]
    assert rejected == [(2, "missing_output", f"no output field (looked for: {odd})")]
    assert names == [("recovery_pool",), ("recovery_pool_rejected",)]


# --- export paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "/etc/passwd", "a/b", "a/../../b", "", ".", "..", "./"])
def test_export_names_that_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    with pytest.raises(ValueError, match="would leave the export folder"):
        safe_export_path(folder, name)


def test_plain_export_names_stay_in_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    assert safe_export_path(folder, "wanda-50") == folder.resolve() / "wanda-50"
    assert safe_export_path(folder, "selection.parquet") == folder.resolve() / "selection.parquet"


def test_symlinks_inside_the_export_folder_cannot_lead_outside(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (folder / "evil_dir").symlink_to(outside, target_is_directory=True)
    (folder / "evil_file.json").symlink_to(outside / "victim.json")  # dangling: the target does not exist yet
    for name in ["evil_dir", "evil_file.json"]:
        with pytest.raises(ValueError, match="would leave the export folder"):
            safe_export_path(folder, name)


def test_export_does_not_write_through_a_symlinked_file(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    variant_folder = folder / "v1"
    variant_folder.mkdir(parents=True)
    victim = tmp_path / "victim.json"
    victim.write_text("original")
    (variant_folder / "selection.json").symlink_to(victim)
    rows = pd.DataFrame({"instruction": ["i"], "input": [""], "output": ["o"]})
    with pytest.raises(ValueError, match="would leave the export folder"):
        export_records(rows, safe_export_path(folder, "v1"))
    assert victim.read_text() == "original"


def test_a_symlinked_export_folder_itself_is_the_configured_place(tmp_path: Path) -> None:
    # The configured folder may itself be a link (e.g. to a bigger disk); names inside it are fine.
    real = tmp_path / "big_disk"
    real.mkdir()
    link = tmp_path / "export"
    link.symlink_to(real, target_is_directory=True)
    paths = export_records(pd.DataFrame({"instruction": ["i"], "input": [""], "output": ["o"]}), link / "v1")
    assert json.loads((real / "v1" / "selection.json").read_text()) == [
        {"instruction": "i", "input": "", "output": "o"}
    ]
    assert all(path.parent == real.resolve() / "v1" for path in paths.values())
