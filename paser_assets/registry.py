"""The variant registry: which pruned variants exist and what each one is, in the DuckDB table ``variants``.

The definitions hold one asset graph per variant (:mod:`paser_assets.per_variant`): the registered variants
and the configured ones (``PASER_VARIANTS``, or the single variant of ``PASER_PRUNED_MODEL`` / the pruning
settings), which :func:`sync_variants` registers. :func:`remove_variant` deletes everything of a variant (its
rows in every table declared per variant, its export and adapter files, its assets' history in the Dagster
instance) and nothing of any other.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd

from paser_assets import storage
from paser_assets.models.pruning import PruneRecipe
from paser_assets.per_variant import VariantNameError, check_group_names, variant_asset_names, variant_key
from paser_assets.resources import PaserConfig, PaserDuckDB
from paser_assets.tables import PER_VARIANT_TABLES
from paser_assets.variants import Variant, VariantError, configured_variants, parse_variant_spec, validate_variant_name

REGISTRY_TABLE = "variants"
PRUNED_TABLE = "pruned_model"


def _registry_frame(variants: Iterable[Variant]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"variant": v.name, "kind": v.kind, "spec": v.spec, "fingerprint": v.fingerprint()} for v in variants],
        columns=["variant", "kind", "spec", "fingerprint"],
    )


def registered_variants(database: PaserDuckDB, recipe_defaults: PruneRecipe | None = None) -> dict[str, Variant]:
    """Variants recorded in the DuckDB registry, by name."""
    with database.get_connection() as conn:
        if not storage.table_exists(conn, REGISTRY_TABLE):
            return {}
        frame = storage.read_table(conn, REGISTRY_TABLE)
    return {
        row.variant: parse_variant_spec(row.variant, row.spec, recipe_defaults) for row in frame.itertuples(index=False)
    }


def registered_names(database: PaserDuckDB) -> list[str]:
    """The registered variants' names, read without writing anything (no schema is created)."""
    try:
        with database.get_connection(read_only=True) as conn:
            if not storage.table_exists(conn, REGISTRY_TABLE):
                return []
            return [row[0] for row in conn.execute(f"SELECT variant FROM {REGISTRY_TABLE} ORDER BY variant").fetchall()]
    except storage.SchemaNotFoundError:
        return []


def _configured(config: PaserConfig) -> list[Variant]:
    return configured_variants(config.models.variants, config.models.pruned_model, config.pruning.recipe())


def known_variant(database: PaserDuckDB, config: PaserConfig, name: str) -> Variant:
    """The variant ``name``: registered, or configured (and then registered); a clear error when it is neither."""
    variants = registered_variants(database, config.pruning.recipe())
    if name in variants:
        return variants[name]
    configured = {variant.name: variant for variant in _configured(config)}
    if name in configured:
        register_variants(database, [configured[name]])
        return configured[name]
    raise VariantError(
        f"variant {name!r} is not registered in {database.database}: add it with "
        f"`paser variants add {name} SPEC` or list it in PASER_VARIANTS"
    )


def definition_variants(database: PaserDuckDB, config: PaserConfig) -> list[str]:
    """The variants the definitions hold an asset graph for: the configured ones, then the registered ones.

    Read without writing (a code location loads while runs may hold the database); a database that does not
    exist yet has no registered variant."""
    names = [variant.name for variant in _configured(config)]
    if database.database != ":memory:" and Path(database.database).exists():  # a new in-memory one holds nothing
        names += [name for name in registered_names(database) if name not in names]
    try:
        check_group_names(names)
    except VariantNameError as error:
        raise VariantError(str(error)) from None
    return names


def register_variants(database: PaserDuckDB, variants: Iterable[Variant], replace: bool = False) -> list[str]:
    """Record variants in the registry; returns the names that are new or changed.

    A name already registered with another spec is an error unless ``replace`` is set, so that a
    typo in PASER_VARIANTS cannot silently redefine a variant whose results are stored.
    """
    variants = list(variants)
    with database.write() as conn:
        existing = (
            storage.read_table(conn, REGISTRY_TABLE)
            if storage.table_exists(conn, REGISTRY_TABLE)
            else _registry_frame([])
        )
        known = dict(zip(existing["variant"], existing["spec"], strict=True))
        changed = []
        for variant in variants:
            if variant.name in known and known[variant.name] != variant.spec and not replace:
                raise VariantError(
                    f"variant {variant.name!r} is registered as {known[variant.name]!r}, not {variant.spec!r}; "
                    "use another name, or `paser variants add --replace` to redefine it"
                )
            if known.get(variant.name) != variant.spec:
                changed.append(variant.name)
        if changed:
            keep = existing[~existing["variant"].isin(changed)]
            fresh = _registry_frame(v for v in variants if v.name in changed)
            storage.replace_table(conn, REGISTRY_TABLE, pd.concat([keep, fresh], ignore_index=True))
    return changed


def sync_variants(database: PaserDuckDB, config: PaserConfig) -> list[str]:
    """Register the configured variants; returns their names."""
    variants = _configured(config)
    register_variants(database, variants)
    return [v.name for v in variants]


def add_variant(database: PaserDuckDB, variant: Variant, replace: bool = False) -> None:
    """Register a variant whose name can have a Dagster group of its own (see :func:`check_group_names`)."""
    try:
        check_group_names([*registered_variants(database), variant.name])
    except VariantNameError as error:
        raise VariantError(f"variant {variant.name!r} not registered: {error}") from None
    register_variants(database, [variant], replace=replace)


@dataclass
class VariantRemoval:
    """What :func:`remove_variant` deleted: rows per table, and paths (a symlink is removed, not followed)."""

    rows: dict[str, int] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        rows = ", ".join(f"{table} {count} rows" for table, count in self.rows.items() if count) or "no rows"
        paths = ", ".join(str(path) for path in self.paths) or "no files"
        return f"{rows}; deleted {paths}"


def variant_folders(name: str, export_dir: Path, model_cache_dir: Path) -> list[Path]:
    """The folders holding a variant's files: its export and its LoRA adapters (``adapters/<variant>/``).
    None for a name that is not a valid variant name, so that '..' or 'a/b' never reaches a path."""
    try:
        validate_variant_name(name)
    except VariantError:
        return []
    return [export_dir / name, model_cache_dir / "adapters" / name]


def _delete_path(path: Path) -> bool:
    """Delete a folder, or only the link when it is a symlink (never what the link points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return True
    if path.is_dir():
        shutil.rmtree(path)  # removes links inside the folder without following them
        return True
    return False


def remove_variant(
    instance: dg.DagsterInstance, database: PaserDuckDB, name: str, export_dir: Path, model_cache_dir: Path
) -> VariantRemoval:
    """Delete a variant: its rows in every table declared per variant (the registry row included), its export
    folder, its adapter files and its assets' history in the instance (so that a variant added again under the
    same name starts missing, not fresh). Other variants' rows, files and history are not touched.

    The rows go in one transaction; the files only after it committed, so a failed delete never leaves a
    variant whose rows point at files that are gone.
    """
    removal = VariantRemoval()
    with database.write() as conn:
        for table in PER_VARIANT_TABLES:
            if storage.table_exists(conn, table):
                count = conn.execute(f"SELECT count(*) FROM {table} WHERE variant = ?", [name]).fetchall()[0][0]
                conn.execute(f"DELETE FROM {table} WHERE variant = ?", [name])
                removal.rows[table] = int(count)
    history = [variant_key(name, asset) for asset in ("pruned_checkpoint", *variant_asset_names())]
    # Also every <name>/... key the instance holds: the per-method ones, and all of them when the asset modules
    # (which fill variant_asset_names) were not imported.
    history += [key for key in instance.all_asset_keys() if len(key.path) > 1 and key.path[0] == name]
    instance.wipe_assets([key for key in dict.fromkeys(history) if instance.has_asset_key(key)])
    for folder in variant_folders(name, export_dir, model_cache_dir):
        if _delete_path(folder):
            removal.paths.append(folder)
    return removal
