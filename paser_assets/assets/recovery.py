"""Does the selection recover the pruned model? Baselines, LoRA recovery, held-out evaluation, comparison.

- ``baseline_selections`` (per variant): random, uniform across clusters, top JSD, IFD and PASER without
  the concept filter, each at PASER's budget and never from the held-out split.
- ``recovered_model`` (per variant and method): a LoRA fine-tune of the pruned model on the method's
  selection (peft), saved as a safetensors adapter; the loss curve is shown in the UI.
- ``reference_evaluation`` (per variant): the original and pruned models on the held-out split and on a
  general text set; ``recovery_evaluation`` (per variant and method): the recovered model on the same.
- ``recovery_comparison`` (per variant): held-out NLL and perplexity per method, overall and per cluster.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from paser_assets import charts, storage
from paser_assets.assets.models import MODEL_LOADING, MODEL_PARENTS, MODEL_PLACEMENT, placement, pruned_reference
from paser_assets.assets.selection import paser_select, selectable_candidates
from paser_assets.core.baselines import (
    ifd_selection,
    instruction_following_difficulty,
    random_selection,
    top_score_selection,
    uniform_selection,
)
from paser_assets.core.consistency import SELECTED
from paser_assets.models.adapters import adapter_folder, adapter_recipe, train_or_reuse
from paser_assets.models.checkpoints import load_causal_lm, reference_version
from paser_assets.models.device import Placement
from paser_assets.models.general_text import general_text_samples
from paser_assets.models.scoring import EncodedSample, encode_sample
from paser_assets.models.store import ModelStore
from paser_assets.models.training import load_adapter, perplexity, response_nll
from paser_assets.partitions import METHODS, VARIANTS, PartitionKey
from paser_assets.resources import PaserConfig, PaserDuckDB
from paser_assets.settings import reads
from paser_assets.tables import table_metadata

RECOVERY_GROUP = "recovery"
BASELINES = ("random", "uniform", "top_jsd", "ifd", "paser_no_concepts")
GENERAL_SEGMENTS = 32  # segments of 256 tokens of general text per model


def _method_partition(context: dg.AssetExecutionContext) -> tuple[str, str]:
    key = PartitionKey.of(context)
    assert key.method is not None
    return key.method, key.variant


def _encode(tokenizer: Any, frame: pd.DataFrame, max_tokens: int) -> list[EncodedSample]:
    return [
        encode_sample(tokenizer, row.sample_id, row.instruction, row.input, row.output, max_tokens)
        for row in frame.itertuples(index=False)
    ]


def _load_pruned(store: ModelStore, duckdb: PaserDuckDB, variant: str, where: Placement) -> tuple[Any, Any, str]:
    """The variant's pruned model (placed), its tokenizer and its content hash."""
    reference = pruned_reference(duckdb, variant)
    model, tokenizer = load_causal_lm(reference, store.cache_dir, store.options, where)
    return model, tokenizer, reference_version(reference)


@dg.asset(
    deps=["selection", "degradation_scores", "capability_degradation", "clusters", "sample_concepts", "holdout_split",
          *MODEL_PARENTS],
    partitions_def=VARIANTS,
    group_name=RECOVERY_GROUP,
    code_version="1",
    kinds={"duckdb", "pytorch"},
    description="The baselines' selections at PASER's budget: random, uniform across clusters, top JSD, "
    "IFD and PASER without the concept filter.",
)  # fmt: skip
@reads(*MODEL_LOADING, *MODEL_PLACEMENT, "recovery.recovery_methods", "recovery.recovery_seed", "scoring.max_tokens",
       "seed")  # fmt: skip
def baseline_selections(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    variant = context.partition_key
    seed = paser.recovery.seed_or(paser.seed)
    methods, max_tokens, store = (
        paser.recovery.recovery_methods,
        paser.scoring.max_tokens,
        paser.models.store(duckdb.database),
    )
    frame, budgets = selectable_candidates(duckdb, variant)
    budget = int(budgets["budget"].sum())
    picks = baseline_picks(frame, budgets, seed)
    if "ifd" in methods:
        context.log.info("IFD: scoring the responses without their instructions under the pruned model")
        model, tokenizer, _ = _load_pruned(store, duckdb, variant, placement(paser))
        ifd = ifd_scores(model, tokenizer, frame, max_tokens)
        picks["ifd"] = ifd_selection(ifd, budget)
    rows = [
        {"variant": variant, "method": method, "rank": rank, "sample_id": sample_id}
        for method, chosen in picks.items()
        for rank, sample_id in enumerate(chosen, start=1)
    ]
    table = pd.DataFrame(rows, columns=["variant", "method", "rank", "sample_id"]).astype({"rank": "int64"})
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


def baseline_picks(frame: pd.DataFrame, budgets: pd.DataFrame, seed: int) -> dict[str, list[str]]:
    """The model-free baselines' choices from the selectable candidates, at PASER's total budget."""
    budget = int(budgets["budget"].sum())
    ids = frame["sample_id"].tolist()
    unfiltered = paser_select(frame, budgets, tolerance=1.0)
    return {
        "random": random_selection(ids, budget, seed),
        "uniform": uniform_selection(dict(zip(ids, frame["cluster"], strict=True)), budget, seed),
        "top_jsd": top_score_selection(dict(zip(ids, frame["jsd"], strict=True)), budget),
        "paser_no_concepts": [d.sample_id for d in unfiltered.decisions if d.decision == SELECTED],
    }


def ifd_scores(model: Any, tokenizer: Any, frame: pd.DataFrame, max_tokens: int) -> dict[str, float]:
    """Instruction-Following Difficulty per sample: NLL of the response with the prompt over without it."""
    alone = [
        EncodedSample(s.sample_id, (*_lead(tokenizer), *s.input_ids[s.prompt_tokens :]), 1, s.truncated)
        for s in _encode(tokenizer, frame, max_tokens)
    ]
    unconditioned = response_nll(model, alone, tokenizer.pad_token_id)
    return {
        row.sample_id: instruction_following_difficulty(float(row.pruned_nll), unconditioned[row.sample_id])
        for row in frame.itertuples(index=False)
    }


def _lead(tokenizer: Any) -> tuple[int, ...]:
    """The one token a response-only sequence starts with, so that its first token has a prediction."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return (int(token),)


def method_selection(duckdb: PaserDuckDB, method: str, variant: str) -> pd.DataFrame:
    """The (sample_id, instruction, input, output) rows a method selected for a variant."""
    with duckdb.get_connection() as conn:
        if method == "paser":
            sql = """SELECT p.sample_id, p.instruction, p.input, p.output FROM selection s
            JOIN recovery_pool p USING (sample_id) WHERE s.variant = ? AND s.decision = 'selected'
            ORDER BY s.cluster, s.rank"""
            return conn.execute(sql, [variant]).df()
        sql = """SELECT p.sample_id, p.instruction, p.input, p.output FROM baseline_selections b
        JOIN recovery_pool p USING (sample_id) WHERE b.variant = ? AND b.method = ? ORDER BY b.rank"""
        return conn.execute(sql, [variant, method]).df()


@dg.asset(
    deps=["selection", "baseline_selections", "recovery_pool", *MODEL_PARENTS],
    partitions_def=METHODS,
    group_name=RECOVERY_GROUP,
    code_version="1",
    kinds={"pytorch", "safetensors"},
    description="A LoRA fine-tune (peft) of the pruned model on a method's selection, saved as a safetensors "
    "adapter; the loss curve is in the metadata.",
)
@reads(*MODEL_LOADING, *MODEL_PLACEMENT, "recovery", "scoring.max_tokens", "seed")
def recovered_model(context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB) -> dg.MaterializeResult:
    method, variant = _method_partition(context)
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
        model, tokenizer, _ = _load_pruned(store, duckdb, variant, where)
        return model, _encode(tokenizer, rows, max_tokens), tokenizer.pad_token_id

    record, _ = train_or_reuse(folder, load, lora, context.log.info, where)
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
            "precision": record.precision,
            "first_loss": round(losses[0], 4),
            "last_loss": round(losses[-1], 4),
            "loss_curve": dg.MetadataValue.md(
                charts.line_chart(record.steps, losses, f"LoRA loss, {method} on {variant}", "step", "loss")
            ),
        },
    )


def _heldout(duckdb: PaserDuckDB) -> pd.DataFrame:
    with duckdb.get_connection() as conn:
        return conn.execute(
            "SELECT p.sample_id, p.instruction, p.input, p.output FROM holdout_split h JOIN recovery_pool p "
            "USING (sample_id) ORDER BY p.sample_id"
        ).df()


def _evaluate(
    model: Any, tokenizer: Any, heldout: pd.DataFrame, max_tokens: int
) -> tuple[dict[str, float], float, int]:
    """Per-sample held-out NLL, and the mean NLL over the general text segments with their token count."""
    per_sample = response_nll(model, _encode(tokenizer, heldout, max_tokens), tokenizer.pad_token_id)
    segments = general_text_samples(tokenizer, limit=GENERAL_SEGMENTS)
    general = response_nll(model, segments, tokenizer.pad_token_id)
    tokens = sum(s.response_tokens for s in segments)
    mean = sum(general[s.sample_id] * s.response_tokens for s in segments) / max(tokens, 1)
    return per_sample, mean, tokens


def _write_evaluation(
    duckdb: PaserDuckDB, variant: str, method: str, results: dict[str, tuple[dict[str, float], float, int]]
) -> pd.DataFrame:
    nll = pd.DataFrame(
        [
            {"variant": variant, "method": method, "model": model, "sample_id": sample_id, "nll": value}
            for model, (per_sample, _, _) in results.items()
            for sample_id, value in sorted(per_sample.items())
        ],
        columns=["variant", "method", "model", "sample_id", "nll"],
    )
    general = pd.DataFrame(
        [
            {"variant": variant, "method": method, "model": model, "mean_nll": mean, "perplexity": perplexity(mean),
             "tokens": tokens}
            for model, (_, mean, tokens) in results.items()
        ]
    ).astype({"tokens": "int64"})  # fmt: skip
    with duckdb.write() as conn:
        where = {"variant": variant, "method": method}
        storage.replace_partition(conn, "heldout_nll", where, nll)
        storage.replace_partition(conn, "general_text_nll", where, general)
    return nll


@dg.asset(
    deps=["holdout_split", "recovery_pool", *MODEL_PARENTS],
    partitions_def=VARIANTS,
    group_name=RECOVERY_GROUP,
    code_version="1",
    kinds={"duckdb", "pytorch"},
    description="The original and the pruned model on the held-out split and on general text (Python's "
    "standard-library documentation), for reference.",
)
@reads(*MODEL_LOADING, *MODEL_PLACEMENT, "scoring.max_tokens")
def reference_evaluation(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    variant = context.partition_key
    heldout = _heldout(duckdb)
    if heldout.empty:
        raise dg.Failure(description="the held-out split is empty: set PASER_HOLDOUT above 0 to evaluate recovery")
    store = paser.models.store(duckdb.database)
    max_tokens = paser.scoring.max_tokens
    where = placement(paser)
    pruned, tokenizer, _ = _load_pruned(store, duckdb, variant, where)
    original, _ = load_causal_lm(store.original, store.cache_dir, store.options, where)
    results = {
        "original": _evaluate(original, tokenizer, heldout, max_tokens),
        "pruned": _evaluate(pruned, tokenizer, heldout, max_tokens),
    }
    nll = _write_evaluation(duckdb, variant, "reference", results)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(nll)),
        metadata={
            "heldout_samples": len(heldout),
            "original_heldout_nll": float(np.mean(list(results["original"][0].values()))),
            "pruned_heldout_nll": float(np.mean(list(results["pruned"][0].values()))),
            "original_general_ppl": perplexity(results["original"][1]),
            "pruned_general_ppl": perplexity(results["pruned"][1]),
            "precision": where.precision,
        },
    )


@dg.asset(
    deps=["recovered_model", "holdout_split", "recovery_pool", *MODEL_PARENTS],
    partitions_def=METHODS,
    group_name=RECOVERY_GROUP,
    code_version="1",
    kinds={"duckdb", "pytorch"},
    description="The recovered model (pruned + a method's adapter) on the held-out split and on general text.",
)
@reads(*MODEL_LOADING, *MODEL_PLACEMENT, "scoring.max_tokens")
def recovery_evaluation(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    method, variant = _method_partition(context)
    adapter = recorded_adapter(duckdb, variant, method)
    heldout = _heldout(duckdb)
    where = placement(paser)
    pruned, tokenizer, _ = _load_pruned(paser.models.store(duckdb.database), duckdb, variant, where)
    recovered = load_adapter(pruned, adapter)
    results = {"recovered": _evaluate(recovered, tokenizer, heldout, paser.scoring.max_tokens)}
    nll = _write_evaluation(duckdb, variant, method, results)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(nll)),
        metadata={
            "heldout_nll": float(np.mean(list(results["recovered"][0].values()))),
            "general_ppl": perplexity(results["recovered"][1]),
            "adapter": dg.MetadataValue.path(str(adapter)),
            "precision": where.precision,
        },
    )


def recorded_adapter(duckdb: PaserDuckDB, variant: str, method: str) -> Path:
    """The adapter that recovered_model last recorded for this partition (table recovered_adapters)."""
    with duckdb.get_connection() as conn:
        rows = (
            conn.execute(
                "SELECT path FROM recovered_adapters WHERE variant = ? AND method = ?", [variant, method]
            ).fetchall()
            if storage.table_exists(conn, "recovered_adapters")
            else []
        )
    if not rows:
        raise dg.Failure(description=f"no recovered_model for {method}|{variant}: materialize it first")
    return Path(rows[0][0])


@dg.asset(
    deps=["recovery_evaluation", "reference_evaluation", "clusters", *MODEL_PARENTS],
    partitions_def=VARIANTS,
    group_name=RECOVERY_GROUP,
    code_version="1",
    kinds={"duckdb"},
    description="Held-out NLL and perplexity per method, overall and per cluster, with the original and "
    "pruned models for reference.",
)
@reads("recovery.recovery_methods")
def recovery_comparison(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    variant = context.partition_key
    with duckdb.get_connection() as conn:
        nll = conn.execute(
            """SELECT CASE WHEN h.model = 'recovered' THEN h.method ELSE h.model END AS method, c.cluster, h.nll
            FROM heldout_nll h JOIN clusters c USING (sample_id) WHERE h.variant = ?""",
            [variant],
        ).df()
        general = conn.execute(
            """SELECT CASE WHEN model = 'recovered' THEN method ELSE model END AS method, perplexity AS general_ppl
            FROM general_text_nll WHERE variant = ?""",
            [variant],
        ).df()
    order = ["original", "pruned", *paser.recovery.recovery_methods]
    missing = [m for m in order if m not in set(nll["method"])]
    if missing:
        raise dg.Failure(description=f"no held-out evaluation yet for {missing} on variant {variant!r}")
    overall = nll.groupby("method")["nll"].agg(["mean", "count"]).reset_index().assign(cluster=None)
    per_cluster = nll.groupby(["method", "cluster"])["nll"].agg(["mean", "count"]).reset_index()
    table = pd.concat([overall, per_cluster], ignore_index=True).rename(
        columns={"mean": "heldout_nll", "count": "samples"}
    )
    table = table.merge(general, on="method", how="left")
    table["heldout_ppl"] = table["heldout_nll"].map(perplexity)
    table["variant"] = variant
    table["cluster"] = table["cluster"].astype("Int64")
    table["method"] = pd.Categorical(table["method"], categories=order, ordered=True)
    table = table.sort_values(["method", "cluster"], na_position="first").reset_index(drop=True)
    table["method"] = table["method"].astype(str)
    table = table[["variant", "method", "cluster", "samples", "heldout_nll", "heldout_ppl", "general_ppl"]].astype(
        {"samples": "int64"}
    )
    with duckdb.write() as conn:
        storage.replace_partition(conn, "recovery_comparison", {"variant": variant}, table)
    summary = table[table["cluster"].isna()]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(table)),
        metadata={
            **table_metadata("recovery_comparison", duckdb.schema_name, len(table)),
            "overall": dg.MetadataValue.md(summary.drop(columns=["cluster"]).round(4).to_markdown(index=False)),
            "heldout_nll_per_method": dg.MetadataValue.md(
                charts.bar_chart(
                    summary["method"].tolist(), summary["heldout_nll"].tolist(), "Held-out NLL per method", "mean NLL"
                )
            ),
        },
    )


RECOVERY_ASSETS = [baseline_selections, recovered_model, reference_evaluation, recovery_evaluation, recovery_comparison]
