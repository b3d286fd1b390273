"""`paser variants remove` deletes everything of a variant, and nothing of any other.

The database holds rows for two variants in every table that ``paser_assets/tables.py`` declares per variant
(made from the declaration, so a table declared later is covered without changing this test), plus export and
adapter files on disk.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest
from declared_rows import example_rows

from paser_assets import storage
from paser_assets.per_variant import variant_key
from paser_assets.registry import remove_variant
from paser_assets.resources import PaserDuckDB
from paser_assets.tables import PER_VARIANT_TABLES, TABLES

VARIANTS = ("gone", "kept")
# Each variant's history in the instance: an observed checkpoint, a per-variant asset, a per-method one.
HISTORY = (("pruned_checkpoint",), ("selection",), ("recovered_model", "lora"))


def history_keys(variant: str) -> set[dg.AssetKey]:
    return {variant_key(variant, *names) for names in HISTORY}


def keys_with_history(instance: dg.DagsterInstance) -> set[dg.AssetKey]:
    return set(instance.get_asset_keys())


def variant_rows(database: PaserDuckDB, variant: str, skip: tuple[str, ...] = ()) -> dict[str, list[tuple]]:
    """Rows of ``variant`` in every per-variant table that exists (but ``skip``)."""
    with database.get_connection(read_only=True) as conn:
        return {
            table: conn.execute(f"SELECT * FROM {table} WHERE variant = ? ORDER BY ALL", [variant]).fetchall()
            for table in PER_VARIANT_TABLES
            if table not in skip and storage.table_exists(conn, table)
        }


def files_under(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


class Layout:
    """A database with both variants in every per-variant table, their export folders and adapters."""

    def __init__(self, root: Path) -> None:
        self.database = PaserDuckDB(database=str(root / "db" / "runs.duckdb"))
        self.export = root / "export"
        self.models = root / "models"
        with self.database.write() as conn:
            for table in PER_VARIANT_TABLES:
                for variant in VARIANTS:
                    storage.append_rows(conn, table, example_rows(TABLES[table], rows=3, variant=variant))
        for variant in VARIANTS:
            (self.export / variant).mkdir(parents=True)
            (self.export / variant / "selection.parquet").write_bytes(b"PAR1")
            adapter = self.models / "adapters" / variant / "paser-0123456789abcdef"
            adapter.mkdir(parents=True)
            (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 16)
        self.instance = dg.DagsterInstance.ephemeral()
        for variant in VARIANTS:
            for key in history_keys(variant):
                event = dg.AssetObservation(key) if key.path[1] == "pruned_checkpoint" else dg.AssetMaterialization(key)
                self.instance.report_runless_asset_event(event)
        self.instance.report_runless_asset_event(dg.AssetMaterialization(dg.AssetKey("selection")))  # not a variant


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path)


def test_removing_a_variant_deletes_its_rows_everywhere_and_its_files(layout: Layout) -> None:
    kept_rows = variant_rows(layout.database, "kept")
    assert set(kept_rows) == set(PER_VARIANT_TABLES) and all(kept_rows.values())
    kept_files = files_under(layout.export / "kept") | files_under(layout.models / "adapters" / "kept")

    removal = remove_variant(layout.instance, layout.database, "gone", layout.export, layout.models)

    assert removal.rows == {table: 3 for table in PER_VARIANT_TABLES}
    assert variant_rows(layout.database, "gone") == {table: [] for table in PER_VARIANT_TABLES}
    assert variant_rows(layout.database, "kept") == kept_rows
    assert removal.paths == [layout.export / "gone", layout.models / "adapters" / "gone"]
    assert not [p for p in layout.export.parent.rglob("*") if "gone" in p.parts]
    assert files_under(layout.export / "kept") | files_under(layout.models / "adapters" / "kept") == kept_files
    assert keys_with_history(layout.instance) == history_keys("kept") | {dg.AssetKey("selection")}
    assert "3 rows" in removal.describe() and str(layout.export / "gone") in removal.describe()

    again = remove_variant(layout.instance, layout.database, "gone", layout.export, layout.models)
    assert all(count == 0 for count in again.rows.values()) and again.paths == []


def test_symlinked_variant_folders_are_unlinked_not_followed(layout: Layout, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    for name in ("export", "adapters"):
        (elsewhere / name).mkdir(parents=True)
        (elsewhere / name / "precious.txt").write_text("not the variant's")
    export_folder = layout.export / "gone"
    for path in export_folder.iterdir():
        path.unlink()
    export_folder.rmdir()
    export_folder.symlink_to(elsewhere / "export", target_is_directory=True)
    adapters = layout.models / "adapters" / "gone"
    renamed = layout.models / "adapters" / "gone-real"
    adapters.rename(renamed)
    adapters.symlink_to(renamed, target_is_directory=True)

    removal = remove_variant(layout.instance, layout.database, "gone", layout.export, layout.models)

    assert not export_folder.exists() and not export_folder.is_symlink()
    assert not adapters.exists() and not adapters.is_symlink()
    assert removal.paths == [export_folder, adapters]
    for name in ("export", "adapters"):
        assert (elsewhere / name / "precious.txt").read_text() == "not the variant's"
    assert (renamed / "paser-0123456789abcdef" / "adapter_model.safetensors").exists()  # the link's target


def test_a_link_inside_a_deleted_folder_is_not_followed(layout: Layout, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious.txt").write_text("keep")
    (layout.export / "gone" / "shared").symlink_to(elsewhere, target_is_directory=True)

    remove_variant(layout.instance, layout.database, "gone", layout.export, layout.models)

    assert not (layout.export / "gone").exists()
    assert (elsewhere / "precious.txt").read_text() == "keep"


def test_files_are_deleted_only_after_the_rows_were(layout: Layout) -> None:
    # A table the delete cannot run on (an older layout without a variant column) fails the transaction.
    with duckdb.connect(layout.database.database) as raw:
        raw.execute('USE "runs"."paser"')
        raw.execute("DROP TABLE recovered_adapters")
        raw.execute("CREATE TABLE recovered_adapters (name VARCHAR)")
    rows_before = variant_rows(layout.database, "gone", skip=("recovered_adapters",))
    assert all(rows_before.values())

    with pytest.raises(duckdb.BinderException):
        remove_variant(layout.instance, layout.database, "gone", layout.export, layout.models)

    assert variant_rows(layout.database, "gone", skip=("recovered_adapters",)) == rows_before  # all rolled back
    assert (layout.export / "gone" / "selection.parquet").exists()
    assert (layout.models / "adapters" / "gone").is_dir()
    assert history_keys("gone") <= keys_with_history(layout.instance)  # nor is its history wiped
