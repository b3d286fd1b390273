"""Does the selection recover the pruned model? Baselines, LoRA recovery, held-out evaluation, comparison.

- ``baseline_selections`` (per variant): random, uniform across clusters, top JSD, IFD and PASER without
  the concept filter, each at PASER's budget and never from the held-out split.
- ``recovered_model`` (per variant and method): a LoRA fine-tune of the pruned model on the method's
  selection (peft), saved as a safetensors adapter; the loss curve is shown in the UI.
- ``reference_evaluation`` (per variant): the original and pruned models on the held-out split and on a
  general text set; ``recovery_evaluation`` (per variant and method): the recovered model on the same.
- ``recovery_comparison`` (per variant): held-out NLL and perplexity per method, overall and per cluster.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from paser_assets import charts, storage
from paser_assets.assets.scores import MODEL_PARENTS
from paser_assets.core.baselines import (
    ifd_selection,
    instruction_following_difficulty,
    random_selection,
    top_score_selection,
    uniform_selection,
)
from paser_assets.core.consistency import SELECTED, Candidate, select
from paser_assets.models.checkpoints import load_causal_lm, publish_folder, reference_version, staging_folder
from paser_assets.models.general_text import general_text_samples
from paser_assets.models.scoring import EncodedSample, encode_sample
from paser_assets.models.store import ModelSettings, model_settings
from paser_assets.models.training import LoraSettings, load_adapter, perplexity, response_nll, save_adapter, train_lora
from paser_assets.registry import variant_partitions
from paser_assets.resources import RECOVERY_METHODS, PaserConfig, PaserDuckDB
from paser_assets.tables import table_metadata

RECOVERY_GROUP = "recovery"
BASELINES = ("random", "uniform", "top_jsd", "ifd", "paser_no_concepts")
GENERAL_SEGMENTS = 32  # segments of 256 tokens of general text per model


def method_partitions() -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition(
        {"method": dg.StaticPartitionsDefinition(list(RECOVERY_METHODS)), "variant": variant_partitions}
    )


def _method_partition(context: dg.AssetExecutionContext) -> tuple[str, str]:
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    return keys["method"], keys["variant"]


def _encode(tokenizer: Any, frame: pd.DataFrame, max_tokens: int) -> list[EncodedSample]:
    return [
        encode_sample(tokenizer, row.sample_id, row.instruction, row.input, row.output, max_tokens)
        for row in frame.itertuples(index=False)
    ]


def _load_pruned(paser: PaserConfig, duckdb: PaserDuckDB, variant: str) -> tuple[Any, Any, str, ModelSettings]:
    from paser_assets.assets.models import pruned_reference

    settings = model_settings(paser, duckdb.database)
    reference = pruned_reference(duckdb, variant)
    model, tokenizer = load_causal_lm(reference, settings.cache_dir, settings.options)
    return model, tokenizer, reference_version(reference), settings


@dg.asset(
    deps=["selection", "degradation_scores", "capability_degradation", "clusters", "sample_concepts", "holdout_split",
          *MODEL_PARENTS],
    partitions_def=variant_partitions,
    group_name=RECOVERY_GROUP,
    code_version="1",
    kinds={"duckdb", "pytorch"},
    description="The baselines' selections at PASER's budget: random, uniform across clusters, top JSD, "
    "IFD and PASER without the concept filter.",
)  # fmt: skip
def baseline_selections(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    variant = context.partition_key
    with duckdb.get_connection() as conn:
        frame = conn.execute(
            """SELECT s.sample_id, c.cluster, s.jsd, s.ies, s.pruned_nll, k.concepts, p.instruction, p.input, p.output
            FROM degradation_scores s JOIN clusters c USING (sample_id) JOIN sample_concepts k USING (sample_id)
            JOIN recovery_pool p USING (sample_id)
            WHERE s.variant = ? AND s.sample_id NOT IN (SELECT sample_id FROM holdout_split) ORDER BY s.sample_id""",
            [variant],
        ).df()
        budgets = conn.execute(
            "SELECT cluster, cds, budget FROM capability_degradation WHERE variant = ?", [variant]
        ).df()
    budget = int(budgets["budget"].sum())
    ids = frame["sample_id"].tolist()
    picks: dict[str, list[str]] = {
        "random": random_selection(ids, budget, recovery_seed(paser)),
        "uniform": uniform_selection(dict(zip(ids, frame["cluster"], strict=True)), budget, recovery_seed(paser)),
        "top_jsd": top_score_selection(dict(zip(ids, frame["jsd"], strict=True)), budget),
    }
    unfiltered = select(
        [
            Candidate(r.sample_id, int(r.cluster), float(r.ies), float(r.jsd), frozenset(r.concepts))
            for r in frame.itertuples(index=False)
        ],
        dict(zip(budgets["cluster"].astype(int), budgets["budget"].astype(int), strict=True)),
        dict(zip(budgets["cluster"].astype(int), budgets["cds"].astype(float), strict=True)),
        tolerance=1.0,
    )
    picks["paser_no_concepts"] = [d.sample_id for d in unfiltered.decisions if d.decision == SELECTED]
    if "ifd" in paser.recovery_methods:
        context.log.info("IFD: scoring the responses without their instructions under the pruned model")
        model, tokenizer, _, _ = _load_pruned(paser, duckdb, variant)
        alone = [
            EncodedSample(s.sample_id, (*_lead(tokenizer), *s.input_ids[s.prompt_tokens :]), 1, s.truncated)
            for s in _encode(tokenizer, frame, paser.max_tokens)
        ]
        unconditioned = response_nll(model, alone, tokenizer.pad_token_id)
        ifd = {
            row.sample_id: instruction_following_difficulty(float(row.pruned_nll), unconditioned[row.sample_id])
            for row in frame.itertuples(index=False)
        }
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


def recovery_seed(paser: PaserConfig) -> int:
    return paser.seed if paser.recovery_seed is None else paser.recovery_seed


def lora_settings(paser: PaserConfig) -> LoraSettings:
    return LoraSettings(
        r=paser.lora_r,
        alpha=paser.lora_alpha,
        learning_rate=paser.lora_learning_rate,
        epochs=paser.lora_epochs,
        batch_size=paser.lora_batch_size,
        top_layers=paser.lora_layers,
        seed=recovery_seed(paser),
    )


@dg.asset(
    deps=["selection", "baseline_selections", "recovery_pool", *MODEL_PARENTS],
    partitions_def=method_partitions(),
    group_name=RECOVERY_GROUP,
    code_version="1",
    kinds={"pytorch", "safetensors"},
    description="A LoRA fine-tune (peft) of the pruned model on a method's selection, saved as a safetensors "
    "adapter; the loss curve is in the metadata.",
)
def recovered_model(context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB) -> dg.MaterializeResult:
    method, variant = _method_partition(context)
    if method not in paser.recovery_methods:
        raise dg.Failure(description=f"method {method!r} is not in PASER_RECOVERY_METHODS={paser.recovery_methods}")
    rows = method_selection(duckdb, method, variant)
    if rows.empty:
        raise dg.Failure(description=f"{method} selected nothing for variant {variant!r}: materialize its selection")
    model, tokenizer, pruned_version, settings = _load_pruned(paser, duckdb, variant)
    samples = _encode(tokenizer, rows, paser.max_tokens)
    lora = lora_settings(paser)
    recipe = json.dumps(
        {"lora": lora.__dict__, "pruned": pruned_version, "samples": rows["sample_id"].tolist()},
        sort_keys=True,
        default=str,
    )
    folder = settings.cache_dir / "adapters" / variant / f"{method}-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"
    record_file = folder / "paser_training.json"
    if record_file.exists():
        context.log.info(f"reusing the adapter {folder} (same selection, settings and pruned model)")
        record = json.loads(record_file.read_text())
    else:
        context.log.info(f"LoRA fine-tuning variant {variant} on {len(samples)} samples selected by {method}")
        peft_model, log = train_lora(model, samples, tokenizer.pad_token_id, lora, context.log.info)
        staging = staging_folder(folder)
        save_adapter(peft_model, staging)
        record = {"steps": log.steps, "losses": log.losses, "tokens": log.tokens, "seconds": log.seconds}
        (staging / "paser_training.json").write_text(json.dumps(record))
        publish_folder(staging, folder)
    losses = record["losses"]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(hashlib.sha256(recipe.encode()).hexdigest()[:24]),
        metadata={
            "adapter": dg.MetadataValue.path(str(folder)),
            "method": method,
            "train_samples": len(samples),
            "train_tokens": record["tokens"],
            "seconds": round(record["seconds"], 1),
            "first_loss": round(losses[0], 4),
            "last_loss": round(losses[-1], 4),
            "loss_curve": dg.MetadataValue.md(
                charts.line_chart(record["steps"], losses, f"LoRA loss, {method} on {variant}", "step", "loss")
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
    model: Any, tokenizer: Any, heldout: pd.DataFrame, paser: PaserConfig
) -> tuple[dict[str, float], float, int]:
    """Per-sample held-out NLL, and the mean NLL over the general text segments with their token count."""
    per_sample = response_nll(model, _encode(tokenizer, heldout, paser.max_tokens), tokenizer.pad_token_id)
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
    partitions_def=variant_partitions,
    group_name=RECOVERY_GROUP,
    code_version="1",
    kinds={"duckdb", "pytorch"},
    description="The original and the pruned model on the held-out split and on general text (Python's "
    "standard-library documentation), for reference.",
)
def reference_evaluation(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    variant = context.partition_key
    heldout = _heldout(duckdb)
    if heldout.empty:
        raise dg.Failure(description="the held-out split is empty: set PASER_HOLDOUT above 0 to evaluate recovery")
    pruned, tokenizer, _, settings = _load_pruned(paser, duckdb, variant)
    original, _ = load_causal_lm(settings.original, settings.cache_dir, settings.options)
    results = {
        "original": _evaluate(original, tokenizer, heldout, paser),
        "pruned": _evaluate(pruned, tokenizer, heldout, paser),
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
        },
    )


@dg.asset(
    deps=["recovered_model", "holdout_split", "recovery_pool", *MODEL_PARENTS],
    partitions_def=method_partitions(),
    group_name=RECOVERY_GROUP,
    code_version="1",
    kinds={"duckdb", "pytorch"},
    description="The recovered model (pruned + a method's adapter) on the held-out split and on general text.",
)
def recovery_evaluation(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    method, variant = _method_partition(context)
    adapter = _adapter_folder(context, method, variant)
    heldout = _heldout(duckdb)
    pruned, tokenizer, _, _ = _load_pruned(paser, duckdb, variant)
    recovered = load_adapter(pruned, adapter)
    results = {"recovered": _evaluate(recovered, tokenizer, heldout, paser)}
    nll = _write_evaluation(duckdb, variant, method, results)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(nll)),
        metadata={
            "heldout_nll": float(np.mean(list(results["recovered"][0].values()))),
            "general_ppl": perplexity(results["recovered"][1]),
            "adapter": dg.MetadataValue.path(str(adapter)),
        },
    )


def _adapter_folder(context: dg.AssetExecutionContext, method: str, variant: str) -> Path:
    """The adapter that the latest recovered_model materialization of this partition saved."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("recovered_model"),
            asset_partitions=[dg.MultiPartitionKey({"method": method, "variant": variant})],
        ),
        limit=1,
    ).records
    if not records:
        raise dg.Failure(description=f"no recovered_model for {method}|{variant}: materialize it first")
    return Path(str(records[0].asset_materialization.metadata["adapter"].value))


@dg.asset(
    deps=["recovery_evaluation", "reference_evaluation", "clusters", *MODEL_PARENTS],
    partitions_def=variant_partitions,
    group_name=RECOVERY_GROUP,
    code_version="1",
    kinds={"duckdb"},
    description="Held-out NLL and perplexity per method, overall and per cluster, with the original and "
    "pruned models for reference.",
)
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
    order = ["original", "pruned", *paser.recovery_methods]
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
