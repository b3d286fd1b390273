"""The ``original_model`` and ``pruned_model`` assets.

Both carry the content hash of their checkpoint files as data version. The original is always an
external checkpoint, observed. The pruned model is observed too when the user points at one;
otherwise the plugin prunes the original itself and the result is a materialized asset.
"""

import hashlib
import json
import warnings

import dagster as dg
import pandas as pd

from paser_assets import storage
from paser_assets.models.checkpoints import (
    CheckpointError,
    ModelReference,
    content_hash,
    load_causal_lm,
    reference_version,
    save_checkpoint,
)
from paser_assets.models.pruning import calibration_batch, measured_sparsity, prune_model
from paser_assets.models.store import model_settings
from paser_assets.resources import PaserConfig, PaserDuckDB

MODELS_GROUP = "models"
PRUNED_TABLE = "pruned_checkpoints"


def _observe_original(paser: PaserConfig, duckdb: PaserDuckDB) -> dg.ObserveResult:
    settings = model_settings(paser, duckdb.database)
    try:
        reference = settings.original
        version = reference_version(reference)
    except CheckpointError as error:
        raise dg.Failure(description=str(error)) from None
    return dg.ObserveResult(
        data_version=dg.DataVersion(version),
        metadata={"reference": reference.display, "content_hash": version},
    )


def _observe_external_pruned(paser: PaserConfig, duckdb: PaserDuckDB) -> dg.ObserveResult:
    settings = model_settings(paser, duckdb.database)
    try:
        reference = settings.external_pruned
        assert reference is not None, "external_pruned_model is only defined when pruned_model is set"
        version = reference_version(reference)
    except CheckpointError as error:
        raise dg.Failure(description=str(error)) from None
    return dg.ObserveResult(
        data_version=dg.DataVersion(version),
        metadata={"reference": reference.display, "content_hash": version},
    )


PRUNING_RECORD = "paser_pruning.json"


with warnings.catch_warnings():
    # observable_source_asset is marked beta; it is the documented way to version external files.
    warnings.simplefilter("ignore", dg.BetaWarning)
    original_model = dg.observable_source_asset(
        name="original_model",
        group_name=MODELS_GROUP,
        description="The original model's checkpoint, observed by the content hash of its files.",
    )(_observe_original)
    external_pruned_model = dg.observable_source_asset(
        name="pruned_model",
        group_name=MODELS_GROUP,
        description="An external pruned checkpoint (PASER_PRUNED_MODEL), observed by the content hash of its files.",
    )(_observe_external_pruned)


def _calibration_texts(duckdb: PaserDuckDB, seed: int) -> list[str]:
    """Pool texts in a seeded order keyed by sample_id, so the calibration set ignores row order."""
    pool = duckdb.read("recovery_pool", "sample_id, instruction, input, output")
    rank = pool["sample_id"].map(lambda sample: hashlib.sha256(f"{seed}:{sample}".encode()).hexdigest())
    pool = pool.assign(rank=rank).sort_values("rank")
    return [
        f"{i}\n{x}\n{o}".strip() for i, x, o in zip(pool["instruction"], pool["input"], pool["output"], strict=True)
    ]


@dg.asset(
    name="pruned_model",
    deps=["original_model", "recovery_pool"],
    group_name=MODELS_GROUP,
    code_version="1",
    kinds={"pytorch", "safetensors"},
    description="The original model pruned by the built-in recipe (Wanda or magnitude), saved as safetensors.",
)
def built_in_pruned_model(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    settings = model_settings(paser, duckdb.database)
    recipe = settings.recipe
    try:
        original_version = reference_version(settings.original)
        texts = _calibration_texts(duckdb, paser.seed)
        calibration_key = storage.content_hash(pd.DataFrame({"text": texts}))
        target = settings.pruned_folder(original_version, calibration_key)
        if (target / "config.json").exists():
            context.log.info(f"reusing the pruned checkpoint {target} (same recipe, original and calibration)")
        else:
            context.log.info(f"pruning {settings.original.display} with {recipe.name}")
            model, tokenizer = load_causal_lm(settings.original, settings.cache_dir, settings.options)
            calibration = None
            if recipe.method == "wanda":
                calibration = calibration_batch(tokenizer, texts, recipe.calibration_samples, recipe.calibration_tokens)
            prune_model(model, recipe, calibration, context.log.info)
            record = {"recipe": recipe.__dict__, "original": original_version, "sparsity": measured_sparsity(model)}
            save_checkpoint(model, tokenizer, target, {PRUNING_RECORD: json.dumps(record, default=str)})
        version = content_hash(target)
    except CheckpointError as error:
        raise dg.Failure(description=str(error)) from None
    sparsity = round(float(json.loads((target / PRUNING_RECORD).read_text())["sparsity"]), 4)
    row = pd.DataFrame(
        [
            {
                "variant": recipe.name,
                "recipe": recipe.name,
                "path": str(target),
                "content_hash": version,
                "original_hash": original_version,
                "sparsity": sparsity,
            }
        ]
    )
    with duckdb.write() as conn:
        storage.replace_table(conn, duckdb.schema_name, PRUNED_TABLE, row)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "recipe": recipe.name,
            "path": dg.MetadataValue.path(str(target)),
            "content_hash": version,
            "measured_sparsity": sparsity,
        },
    )


def pruned_reference(paser: PaserConfig, duckdb: PaserDuckDB) -> ModelReference:
    """The pruned checkpoint to score: the external one, or the built-in asset's latest output."""
    settings = model_settings(paser, duckdb.database)
    external = settings.external_pruned
    if external is not None:
        return external
    table = duckdb.read(PRUNED_TABLE)
    if table.empty:
        raise dg.Failure(description="no pruned checkpoint recorded: materialize `pruned_model` first")
    return ModelReference("folder", str(table["path"].iloc[0]))


def model_assets(config: PaserConfig) -> list:
    """``original_model`` plus the pruned model in the form the settings call for."""
    pruned = external_pruned_model if config.pruned_model else built_in_pruned_model
    return [original_model, pruned]
