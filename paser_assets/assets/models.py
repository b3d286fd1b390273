"""The model assets: ``original_model``, ``pruned_checkpoint`` and ``pruned_model``.

- ``original_model`` is observed: its data version is the content hash of the checkpoint files.
- ``<variant>/pruned_checkpoint`` is observed, one per variant: what the variant's results are computed from,
  the pruned checkpoint (an external checkpoint's content hash, or a built-in recipe's fingerprint) with
  the original it is compared with (the original's content hash). Observing it after a re-prune (or a
  new original) is what tells Dagster that the variant's downstream assets are stale.
- ``<variant>/pruned_model`` materializes the variant's checkpoint: it prunes the original for a recipe
  variant (cached by recipe, original and calibration data) or checks an external one, records it
  in the ``pruned_model`` table, and carries the checkpoint's content hash as data version.
"""

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import torch

from paser_assets import storage
from paser_assets.automation import observation_condition
from paser_assets.models.checkpoints import (
    CheckpointError,
    ModelReference,
    content_hash,
    load_causal_lm,
    parse_model_reference,
    reference_for_path,
    reference_version,
    save_checkpoint,
)
from paser_assets.models.device import DeviceError, Placement, resolve_device, resolve_precision
from paser_assets.models.formats import checkpoint_facts
from paser_assets.models.pruning import calibration_batch, measured_sparsity, prune_model
from paser_assets.models.store import ModelStore
from paser_assets.per_variant import CHECKPOINT, group_of, variant_asset, variant_key, variant_of
from paser_assets.registry import PRUNED_TABLE, known_variant
from paser_assets.resources import PaserConfig, PaserDuckDB, named_when_disk_full
from paser_assets.settings import reads
from paser_assets.variants import Variant, VariantError

MODELS_GROUP = "models"
PRUNING_RECORD = "paser_pruning.json"
# Dagster 1.13 marks only the *direct* children of a changed asset as stale (a stale parent does not make its
# children stale), so every per-variant asset lists the observed checkpoints as a direct parent: one observation
# then shows the variant's whole model-dependent set unsynced at once. The original's hash is part of that
# observation, so this one edge stands for both models.
CHECKPOINTS = CHECKPOINT
# Only the assets that load a model list it too (the lineage shows who reads which model); the others follow
# their data parents.
LOADS_ORIGINAL = ["original_model"]
LOADS_PRUNED = ["pruned_model"]
# What loading a model reads: where the files are and the two safety switches.
MODEL_LOADING = ("models.original_model", "models.model_cache_dir", "models.allow_pickle", "models.trust_remote_code")
# Where a configured variant is specified, for one not registered yet (they affect what is observed, not code versions).
VARIANT_SPECS = ("models.variants", "models.pruned_model")
# Where the models that score, train and evaluate run, and in which precision (pruning stays on the CPU in
# float32, so a built-in pruned checkpoint does not depend on the hardware).
MODEL_PLACEMENT = ("models.device", "scoring.precision")


def run_device(paser: PaserConfig) -> torch.device:
    """The device the settings name on this machine; one this process cannot see is a clear failure."""
    try:
        return resolve_device(paser.models.device)
    except DeviceError as error:
        raise dg.Failure(description=str(error)) from None


def placement(paser: PaserConfig) -> Placement:
    """The device and precision the settings resolve to on this machine."""
    device = run_device(paser)
    return Placement(device, resolve_precision(paser.scoring.precision, device))


@reads(*MODEL_LOADING)
def _observe_original(paser: PaserConfig, duckdb: PaserDuckDB) -> dg.ObserveResult:
    settings = paser.models.store(duckdb.database)
    try:
        reference = settings.original
        version = reference_version(reference)
    except CheckpointError as error:
        raise dg.Failure(description=str(error)) from None
    return dg.ObserveResult(
        data_version=dg.DataVersion(version), metadata={"reference": reference.display, "content_hash": version}
    )


def observed_version(checkpoint: str, original: str) -> str:
    """The data version of a variant's ``pruned_checkpoint``: its checkpoint's version and the original's."""
    return f"{checkpoint}+original-{original}"


def checkpoint_version(variant: Variant) -> str:
    """What identifies a variant's pruned model before it is built: the external files' hash, or the recipe."""
    if variant.checkpoint is not None:
        return content_hash(_external_reference(variant).location)
    return f"recipe-{variant.fingerprint()}"


def _external_reference(variant: Variant) -> ModelReference:
    reference = parse_model_reference(variant.checkpoint)
    if reference.kind == "hub":
        raise CheckpointError(f"variant {variant.name!r}: {variant.checkpoint!r} is not a local checkpoint folder")
    return reference


def _observe_variant(variant: str, paser: PaserConfig, duckdb: PaserDuckDB) -> dg.DataVersion:
    try:  # memoised by size and mtime: the same hash that original_model observes, not read twice
        original = reference_version(paser.models.store(duckdb.database).original)
        found = known_variant(duckdb, paser, variant)
        return dg.DataVersion(observed_version(checkpoint_version(found), original))
    except (CheckpointError, VariantError) as error:
        raise dg.Failure(description=f"variant {variant!r}: {error}") from None


def checkpoint_observation(variant: str) -> dg.SourceAsset:
    """``<variant>/pruned_checkpoint``: what the variant is computed from, observed."""

    @reads(*MODEL_LOADING, *VARIANT_SPECS, "pruning")
    def observe(paser: PaserConfig, duckdb: PaserDuckDB) -> dg.DataVersion:
        return _observe_variant(variant, paser, duckdb)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.observable_source_asset(
            key=variant_key(variant, CHECKPOINTS),
            group_name=group_of(variant),
            description=f"What variant {variant} is computed from: its pruned checkpoint as it is on disk (content "
            "hash) or its pruning recipe, and the original model's content hash. A direct parent of every asset of "
            "the variant, so that one observation shows all of them unsynced.",
            automation_condition=observation_condition(),
        )(observe)


with warnings.catch_warnings():
    # observable_source_asset is marked beta; it is the documented way to version external files.
    warnings.simplefilter("ignore", dg.BetaWarning)
    original_model = dg.observable_source_asset(
        name="original_model",
        group_name=MODELS_GROUP,
        description="The original model's checkpoint, observed by the content hash of its files.",
        automation_condition=observation_condition(),
    )(_observe_original)


def _calibration_texts(duckdb: PaserDuckDB, seed: int) -> list[str]:
    """Pool texts in a seeded order keyed by sample_id, so the calibration set ignores row order."""
    pool = duckdb.read("recovery_pool", "sample_id, instruction, input, output")
    rank = pool["sample_id"].map(lambda sample: hashlib.sha256(f"{seed}:{sample}".encode()).hexdigest())
    pool = pool.assign(rank=rank).sort_values("rank")
    columns = zip(pool["instruction"], pool["input"], pool["output"], strict=True)
    return [f"{i}\n{x}\n{o}".strip() for i, x, o in columns]


def _build_recipe_variant(
    context: dg.AssetExecutionContext, settings: ModelStore, variant: Variant, duckdb: PaserDuckDB, seed: int
) -> tuple[Path, str, float]:
    recipe = variant.recipe
    assert recipe is not None
    original_version = reference_version(settings.original)
    texts = _calibration_texts(duckdb, seed)
    calibration_key = storage.content_hash(pd.DataFrame({"text": texts}))
    target = settings.pruned_folder(recipe, original_version, calibration_key)
    if (target / "config.json").exists():
        context.log.info(f"reusing the pruned checkpoint {target} (same recipe, original and calibration)")
    else:
        context.log.info(f"pruning {settings.original.display} with {recipe.name} for variant {variant.name}")
        model, tokenizer = load_causal_lm(settings.original, settings.cache_dir, settings.options)
        calibration = None
        if recipe.method == "wanda":
            calibration = calibration_batch(tokenizer, texts, recipe.calibration_samples, recipe.calibration_tokens)
        prune_model(model, recipe, calibration, context.log.info)
        record = {"recipe": recipe.__dict__, "original": original_version, "sparsity": measured_sparsity(model)}
        save_checkpoint(model, tokenizer, target, {PRUNING_RECORD: json.dumps(record, default=str)})
    sparsity = float(json.loads((target / PRUNING_RECORD).read_text())["sparsity"])
    return target, original_version, sparsity


@variant_asset(
    deps=["original_model", CHECKPOINTS, "recovery_pool"],
    code_version="2",
    kinds={"pytorch", "safetensors"},
    description="Each variant's pruned model: the original pruned by the variant's recipe (Wanda or magnitude), "
    "or the variant's external checkpoint (a folder, compressed-tensors, GGUF or LLM-Pruner file), recorded in the "
    "table pruned_model with its measured sparsity, parameter count and per-layer widths.",
)
@reads(*MODEL_LOADING, *VARIANT_SPECS, "pruning", "seed")
def pruned_model(context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB) -> dg.MaterializeResult:
    settings = paser.models.store(duckdb.database)
    seed = paser.seed  # the calibration sample of a recipe variant
    unharmed = "no checkpoint was published; the next run prunes again"
    try:
        variant = known_variant(duckdb, paser, variant_of(context))
        if variant.recipe is not None:
            with named_when_disk_full(settings.cache_dir, "PASER_MODEL_CACHE", unharmed):
                path, original_version, sparsity = _build_recipe_variant(context, settings, variant, duckdb, seed)
        else:
            reference = _external_reference(variant)
            path, original_version, sparsity = Path(reference.location), reference_version(settings.original), None
        facts = checkpoint_facts(reference_for_path(path), settings.cache_dir, settings.options)
        sparsity = sparsity if sparsity is not None else facts["sparsity"]
        version = content_hash(path)
    except (CheckpointError, VariantError) as error:
        raise dg.Failure(description=str(error)) from None
    row = pd.DataFrame(
        [
            {
                "variant": variant.name,
                "kind": variant.kind,
                "spec": variant.spec,
                "path": str(path),
                "content_hash": version,
                "original_hash": original_version,
                "sparsity": sparsity,
                "parameters": facts["parameters"],
                "layer_widths": json.dumps(facts["layer_widths"]) if facts["layer_widths"] is not None else None,
            }
        ]
    ).astype({"sparsity": "float64", "parameters": "Int64"})
    with duckdb.write() as conn:
        storage.replace_partition(conn, PRUNED_TABLE, {"variant": variant.name}, row)
    metadata = {
        "variant": variant.name,
        "spec": variant.spec,
        "path": dg.MetadataValue.path(str(path)),
        "content_hash": version,
        "measured_sparsity": dg.MetadataValue.float(sparsity if sparsity is not None else float("nan")),
    }
    if facts["parameters"] is not None:
        metadata["parameters"] = dg.MetadataValue.int(facts["parameters"])
        metadata["layer_widths"] = dg.MetadataValue.json(facts["layer_widths"])
    return dg.MaterializeResult(data_version=dg.DataVersion(version), metadata=metadata)


def pruned_reference(duckdb: PaserDuckDB, variant: str) -> ModelReference:
    """The checkpoint that ``pruned_model`` recorded for ``variant``."""
    with duckdb.get_connection() as conn:
        if storage.table_exists(conn, PRUNED_TABLE):
            rows = conn.execute(f"SELECT path FROM {PRUNED_TABLE} WHERE variant = ?", [variant]).fetchall()
        else:
            rows = []
    if not rows:
        raise dg.Failure(description=f"no pruned checkpoint recorded for variant {variant!r}: materialize pruned_model")
    return reference_for_path(rows[0][0])


def load_pruned(store: ModelStore, duckdb: PaserDuckDB, variant: str, where: Placement) -> tuple[Any, Any, str]:
    """The variant's pruned model (placed), its tokenizer and its content hash."""
    reference = pruned_reference(duckdb, variant)
    model, tokenizer = load_causal_lm(reference, store.cache_dir, store.options, where)
    return model, tokenizer, reference_version(reference)
