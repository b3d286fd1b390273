"""Recovery: every configured method's selection, and a LoRA fine-tune of the pruned model on each.

- ``<variant>/baseline_selections``: the choice of every method in PASER_RECOVERY_METHODS (PASER's own
  included), each from the selectable rows (never the held-out split) at PASER's sample budget; the methods
  come from the registry (:mod:`paser_assets.methods`).
- ``<variant>/recovered_model/<method>`` (one per configured method): a LoRA fine-tune of the pruned model on
  the method's selection (peft), saved as a safetensors adapter; the loss curve is shown in the UI.

The evaluation and the comparison are in :mod:`paser_assets.assets.evaluation`.
"""

from typing import Any

import dagster as dg
import pandas as pd

from paser_assets import charts, storage
from paser_assets.assets.models import (
    CHECKPOINTS,
    LOADS_ORIGINAL,
    LOADS_PRUNED,
    MODEL_LOADING,
    MODEL_PLACEMENT,
    load_pruned,
    placement,
    pruned_reference,
)
from paser_assets.assets.selection import selectable_candidates
from paser_assets.methods import Candidates, choose
from paser_assets.models.adapters import adapter_folder, adapter_recipe, train_or_reuse
from paser_assets.models.checkpoints import load_causal_lm, load_tokenizer, reference_version
from paser_assets.models.device import Placement
from paser_assets.models.response_scores import encode_rows
from paser_assets.models.scoring import EncodedSample
from paser_assets.models.store import ModelStore
from paser_assets.per_variant import method_of, variant_asset, variant_of
from paser_assets.resources import PaserConfig, PaserDuckDB
from paser_assets.settings import reads
from paser_assets.tables import table_metadata


class VariantModels:
    """A variant's tokenizer, pruned and original model, each loaded on first use and kept for the run."""

    def __init__(self, store: ModelStore, duckdb: PaserDuckDB, variant: str, where: Placement, log: Any) -> None:
        self._store, self._duckdb, self._variant, self._where, self._log = store, duckdb, variant, where, log
        self._loaded: dict[str, Any] = {}

    def tokenizer(self) -> Any:
        if "tokenizer" not in self._loaded:  # also set by pruned_model
            reference = pruned_reference(self._duckdb, self._variant)
            self._loaded["tokenizer"] = load_tokenizer(reference, self._store.cache_dir, self._store.options)
        return self._loaded["tokenizer"]

    def pruned_model(self) -> Any:
        if "pruned" not in self._loaded:
            self._log(f"loading the pruned model of variant {self._variant}")
            model, tokenizer, _ = load_pruned(self._store, self._duckdb, self._variant, self._where)
            self._loaded.update(pruned=model, tokenizer=tokenizer)
        return self._loaded["pruned"]

    def original_model(self) -> Any:
        if "original" not in self._loaded:
            self._log("loading the original model")
            store = self._store
            self._loaded["original"] = load_causal_lm(store.original, store.cache_dir, store.options, self._where)[0]
        return self._loaded["original"]


def paser_selection_ids(duckdb: PaserDuckDB, variant: str) -> tuple[str, ...]:
    """PASER's selected sample ids for a variant, cluster by cluster in walk order."""
    with duckdb.get_connection() as conn:
        rows = conn.execute(
            "SELECT sample_id FROM selection WHERE variant = ? AND decision = 'selected' ORDER BY cluster, rank",
            [variant],
        ).fetchall()
    return tuple(row[0] for row in rows)


@variant_asset(
    deps=["selection", "degradation_scores", "capability_degradation", "clusters", "sample_concepts", "holdout_split",
          CHECKPOINTS, *LOADS_PRUNED, *LOADS_ORIGINAL],  # the models: for methods that score with them (IFD)
    recovery=True,
    code_version="5",
    kinds={"duckdb", "pytorch"},
    description="The selection of every method in PASER_RECOVERY_METHODS, PASER's included, from the selectable "
    "rows at PASER's sample budget (full: every row; random_tokens: PASER's training tokens). `paser methods` "
    "lists the registered methods.",
)  # fmt: skip
@reads(*MODEL_LOADING, *MODEL_PLACEMENT, "recovery.recovery_methods", "recovery.recovery_seed", "scoring.max_tokens",
       "selection.conflict_tolerance", "selection.allocation", "seed")  # fmt: skip
def baseline_selections(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    variant = variant_of(context)
    frame, clusters = selectable_candidates(duckdb, variant)
    models = VariantModels(paser.models.store(duckdb.database), duckdb, variant, placement(paser), context.log.info)
    candidates = Candidates(
        frame=frame,
        clusters=clusters,
        paser_ids=paser_selection_ids(duckdb, variant),
        seed=paser.recovery.seed_or(paser.seed),
        conflict_tolerance=paser.selection.conflict_tolerance,
        allocation=paser.selection.allocation,
        max_tokens=paser.scoring.max_tokens,
        models=models,
    )
    budget = int(clusters["budget"].sum())
    try:
        picks = choose(paser.recovery.recovery_methods, candidates, budget, context.log.info)
    except ValueError as error:
        raise dg.Failure(description=f"variant {variant!r}: {error}") from None
    table = pd.DataFrame(
        [
            {"variant": variant, "method": method, "rank": rank, "sample_id": sample_id}
            for method, chosen in picks.items()
            for rank, sample_id in enumerate(chosen, start=1)
        ],
        columns=["variant", "method", "rank", "sample_id"],
    ).astype({"rank": "int64"})
    with duckdb.write() as conn:
        storage.replace_partition(conn, "baseline_selections", {"variant": variant}, table)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(table)),
        metadata={
            **table_metadata("baseline_selections", duckdb.schema_name, len(table)),
            "budget": budget,
            "selected_per_method": dg.MetadataValue.json({m: len(c) for m, c in picks.items()}),
        },
    )


def method_selection(duckdb: PaserDuckDB, method: str, variant: str) -> pd.DataFrame:
    """The (sample_id, instruction, input, output) rows a method selected for a variant, in its order."""
    with duckdb.get_connection() as conn:
        sql = """SELECT p.sample_id, p.instruction, p.input, p.output FROM baseline_selections b
        JOIN recovery_pool p USING (sample_id) WHERE b.variant = ? AND b.method = ? ORDER BY b.rank"""
        return conn.execute(sql, [variant, method]).df()


@variant_asset(
    # The original: the teacher when PASER_LORA_LOSS=distillation.
    deps=["selection", "baseline_selections", "recovery_pool", CHECKPOINTS, *LOADS_PRUNED, *LOADS_ORIGINAL],
    per_method=True,
    recovery=True,
    code_version="2",  # 2: transformers' learning-rate schedule
    kinds={"pytorch", "safetensors"},
    description="A LoRA fine-tune (peft) of the pruned model on a method's selection, saved as a safetensors "
    "adapter; it minimises the answers' NLL or, with PASER_LORA_LOSS=distillation, the KL divergence from the "
    "original model. The loss curve is in the metadata.",
)
@reads(*MODEL_LOADING, *MODEL_PLACEMENT, "recovery", "scoring.max_tokens", "seed")
def recovered_model(context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB) -> dg.MaterializeResult:
    method, variant = method_of(context), variant_of(context)
    methods = paser.recovery.recovery_methods
    if method not in methods:
        raise dg.Failure(description=f"method {method!r} is not in PASER_RECOVERY_METHODS={methods}")
    rows = method_selection(duckdb, method, variant)
    if rows.empty:
        raise dg.Failure(description=f"{method} selected nothing for variant {variant!r}: materialize its selection")
    store, max_tokens = paser.models.store(duckdb.database), paser.scoring.max_tokens
    where = placement(paser)
    lora = paser.recovery.lora(paser.seed)
    reference = pruned_reference(duckdb, variant)
    recipe_hash = adapter_recipe(
        lora, reference_version(reference), rows["sample_id"].tolist(), max_tokens, where.precision
    )
    folder = adapter_folder(store.cache_dir, variant, method, recipe_hash)

    def load() -> tuple[Any, list[EncodedSample], int]:
        context.log.info(f"LoRA fine-tuning variant {variant} on {len(rows)} samples selected by {method}")
        model, tokenizer, _ = load_pruned(store, duckdb, variant, where)
        return model, encode_rows(tokenizer, rows, max_tokens), tokenizer.pad_token_id

    def load_teacher() -> Any:
        context.log.info("distillation: loading the original model as the teacher")
        return load_causal_lm(store.original, store.cache_dir, store.options, where)[0]

    record, trained_now = train_or_reuse(folder, load, lora, context.log.info, where, load_teacher)
    adapter_row = pd.DataFrame(
        [
            {
                "variant": variant,
                "method": method,
                "path": str(folder),
                "recipe_hash": recipe_hash[:24],
                "train_samples": len(rows),
                "train_tokens": record.tokens,
                "train_seconds": record.seconds,
            }
        ]
    )
    with duckdb.write() as conn:
        storage.replace_partition(conn, "recovered_adapters", {"variant": variant, "method": method}, adapter_row)
    losses = record.losses
    return dg.MaterializeResult(
        data_version=dg.DataVersion(recipe_hash[:24]),
        metadata={
            "adapter": dg.MetadataValue.path(str(folder)),
            "method": method,
            "train_samples": len(rows),
            "train_tokens": record.tokens,
            "seconds": round(record.seconds, 1),
            "trained_now": trained_now,  # False: the cached adapter of the same recipe, its seconds from then
            "precision": record.precision,
            "loss": lora.loss,  # response_nll, or distillation from the original
            "first_loss": round(losses[0], 4),
            "last_loss": round(losses[-1], 4),
            "loss_curve": dg.MetadataValue.md(
                charts.line_chart(record.steps, losses, f"LoRA loss, {method} on {variant}", "step", "loss")
            ),
        },
    )
