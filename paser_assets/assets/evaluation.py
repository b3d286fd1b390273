"""Evaluation of recovery: the references, every recovered model, and the comparison of the methods.

- ``<variant>/reference_evaluation``: the original and pruned models on the held-out split, the text
  corpora and the tasks; ``<variant>/recovery_evaluation/<method>``: the recovered model on the same.
- ``<variant>/recovery_comparison``: every metric per method with its recovery ratio
  (:mod:`paser_assets.core.recovery_metrics`).

The tasks PASER_EVAL_TASKS gives lm-evaluation-harness land in ``harness_results`` beside ``task_accuracy``.
"""

from dataclasses import asdict
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
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
)
from paser_assets.core.recovery_metrics import HEADLINE, REFERENCE_ARMS, comparison_table
from paser_assets.models.checkpoints import load_causal_lm
from paser_assets.models.evaluation import Evaluation, evaluate_model
from paser_assets.models.training import load_adapter, perplexity
from paser_assets.per_variant import method_of, variant_asset, variant_of
from paser_assets.resources import PaserConfig, PaserDuckDB
from paser_assets.settings import reads
from paser_assets.tables import TABLES, table_metadata

EVALUATION_READS = ("scoring.max_tokens", "evaluation")


def _heldout(duckdb: PaserDuckDB) -> pd.DataFrame:
    with duckdb.get_connection() as conn:
        return conn.execute(
            "SELECT p.sample_id, p.instruction, p.input, p.output FROM holdout_split h JOIN recovery_pool p "
            "USING (sample_id) ORDER BY p.sample_id"
        ).df()


def _evaluate(model: Any, tokenizer: Any, heldout: pd.DataFrame, paser: PaserConfig, log: Any) -> Evaluation:
    try:
        return evaluate_model(model, tokenizer, heldout, paser.scoring.max_tokens, paser.evaluation, log)
    except ValueError as error:
        raise dg.Failure(description=str(error)) from None


def _write_evaluation(duckdb: PaserDuckDB, variant: str, method: str, results: dict[str, Evaluation]) -> pd.DataFrame:
    keys = {"variant": variant, "method": method}
    nll = pd.DataFrame(
        [
            {**keys, "model": model, "sample_id": sample_id, "nll": value, "tokens": result.heldout_tokens[sample_id]}
            for model, result in results.items()
            for sample_id, value in sorted(result.heldout.items())
        ],
        columns=list(TABLES["heldout_nll"].columns),
    )
    texts = pd.DataFrame(
        [
            {**keys, "model": model, "text": name, "windows": score.windows, "tokens": score.tokens,
             "mean_nll": score.mean_nll, "perplexity": perplexity(score.mean_nll)}
            for model, result in results.items()
            for name, score in result.texts.items()
        ],
        columns=list(TABLES["text_perplexity"].columns),
    )  # fmt: skip
    tasks = pd.DataFrame(
        [
            {**keys, "model": model, "task": name, **asdict(score)}
            for model, result in results.items()
            for name, score in result.tasks.items()
        ],
        columns=list(TABLES["task_accuracy"].columns),
    )
    harness = pd.DataFrame(
        [
            {**keys, "model": model, "task": row.task, "metric": row.metric, "value": row.value, "stderr": row.stderr,
             "items": row.items, "harness_version": row.version}
            for model, result in results.items()
            for row in result.harness
        ],
        columns=list(TABLES["harness_results"].columns),
    )  # fmt: skip
    with duckdb.write() as conn:
        storage.replace_partition(conn, "heldout_nll", keys, nll)
        storage.replace_partition(conn, "text_perplexity", keys, texts)
        storage.replace_partition(conn, "task_accuracy", keys, tasks)
        storage.replace_partition(conn, "harness_results", keys, harness)
    return nll


def _evaluation_metadata(result: Evaluation) -> dict[str, Any]:
    metadata: dict[str, Any] = {"heldout_nll": float(np.mean(list(result.heldout.values())))}
    metadata.update({f"ppl:{name}": perplexity(score.mean_nll) for name, score in result.texts.items()})
    metadata.update({f"acc:{name}": score.acc for name, score in result.tasks.items()})
    metadata.update({f"harness:{r.task}:{r.metric}": r.value for r in result.harness if r.task == r.entry})
    metadata["seconds"] = round(result.seconds, 3)
    return metadata


@variant_asset(
    deps=["holdout_split", "recovery_pool", CHECKPOINTS, *LOADS_ORIGINAL, *LOADS_PRUNED],
    recovery=True,
    code_version="3",
    kinds={"duckdb", "pytorch"},
    description="The original and the pruned model on the held-out split, the text corpora (perplexity) "
    "and the zero-shot tasks, for reference.",
)
@reads(*MODEL_LOADING, *MODEL_PLACEMENT, *EVALUATION_READS)
def reference_evaluation(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    variant = variant_of(context)
    heldout = _heldout(duckdb)
    if heldout.empty:
        raise dg.Failure(description="the held-out split is empty: set PASER_HOLDOUT above 0 to evaluate recovery")
    store = paser.models.store(duckdb.database)
    where = placement(paser)
    pruned, tokenizer, _ = load_pruned(store, duckdb, variant, where)
    original, _ = load_causal_lm(store.original, store.cache_dir, store.options, where)
    results = {
        "original": _evaluate(original, tokenizer, heldout, paser, context.log.info),
        "pruned": _evaluate(pruned, tokenizer, heldout, paser, context.log.info),
    }
    nll = _write_evaluation(duckdb, variant, "reference", results)
    metadata = {
        f"{model} {name}": value for model, result in results.items() for name, value in
        _evaluation_metadata(result).items()
    }  # fmt: skip
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(nll)),
        metadata={"heldout_samples": len(heldout), **metadata, "precision": where.precision},
    )


def recorded_adapter(duckdb: PaserDuckDB, variant: str, method: str) -> Path:
    """The adapter that recovered_model last recorded for this variant and method (table recovered_adapters)."""
    with duckdb.get_connection() as conn:
        rows = (
            conn.execute(
                "SELECT path FROM recovered_adapters WHERE variant = ? AND method = ?", [variant, method]
            ).fetchall()
            if storage.table_exists(conn, "recovered_adapters")
            else []
        )
    if not rows:
        raise dg.Failure(description=f"no recovered model for {variant}/recovered_model/{method}: materialize it first")
    return Path(rows[0][0])


@variant_asset(
    deps=["recovered_model", "holdout_split", "recovery_pool", CHECKPOINTS, *LOADS_PRUNED],
    per_method=True,
    recovery=True,
    code_version="3",
    kinds={"duckdb", "pytorch"},
    description="The recovered model (pruned + a method's adapter) on the held-out split, the text corpora and "
    "the zero-shot tasks.",
)
@reads(*MODEL_LOADING, *MODEL_PLACEMENT, *EVALUATION_READS)
def recovery_evaluation(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    method, variant = method_of(context), variant_of(context)
    adapter = recorded_adapter(duckdb, variant, method)
    heldout = _heldout(duckdb)
    where = placement(paser)
    pruned, tokenizer, _ = load_pruned(paser.models.store(duckdb.database), duckdb, variant, where)
    result = _evaluate(load_adapter(pruned, adapter), tokenizer, heldout, paser, context.log.info)
    nll = _write_evaluation(duckdb, variant, method, {"recovered": result})
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(nll)),
        metadata={
            **_evaluation_metadata(result),
            "adapter": dg.MetadataValue.path(str(adapter)),
            "precision": where.precision,
        },
    )


@variant_asset(
    deps=["recovery_evaluation", "reference_evaluation", "recovered_model", "clusters", CHECKPOINTS],
    recovery=True,
    code_version="3",
    kinds={"duckdb"},
    description="Every metric per method with its recovery ratio (recovered - pruned) / (original - pruned) "
    "and the training each method used; the original and pruned models for reference.",
)
@reads("recovery.recovery_methods")
def recovery_comparison(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    variant = variant_of(context)
    label = "CASE WHEN model = 'recovered' THEN method ELSE model END AS arm"
    with duckdb.get_connection() as conn:
        heldout = conn.execute(
            f"""SELECT {label}, h.sample_id, h.nll, h.tokens, c.cluster, p.family FROM heldout_nll h
            JOIN clusters c USING (sample_id) JOIN recovery_pool p USING (sample_id) WHERE h.variant = ?""",
            [variant],
        ).df()
        texts = conn.execute(f"SELECT {label}, * FROM text_perplexity WHERE variant = ?", [variant]).df()
        tasks = conn.execute(f"SELECT {label}, * FROM task_accuracy WHERE variant = ?", [variant]).df()
        harness = (
            conn.execute(f"SELECT {label}, * FROM harness_results WHERE variant = ?", [variant]).df()
            if storage.table_exists(conn, "harness_results")  # evaluated before the harness backend
            else None
        )
        training = conn.execute(
            "SELECT method AS arm, train_samples, train_tokens, train_seconds FROM recovered_adapters "
            "WHERE variant = ?",
            [variant],
        ).df()
    order = [*REFERENCE_ARMS, *paser.recovery.recovery_methods]
    missing = [m for m in order if m not in set(heldout["arm"])]
    if missing:
        raise dg.Failure(description=f"no evaluation yet for {missing} on variant {variant!r}")
    table = comparison_table(heldout, texts, tasks, training, order, harness)
    table.insert(0, "variant", variant)
    with duckdb.write() as conn:
        storage.replace_partition(conn, "recovery_comparison", {"variant": variant}, table)
    headline = table[table["metric"].isin(HEADLINE) | table["metric"].str.startswith("ppl:")]
    wide = headline.pivot(index="method", columns="metric", values="value").reindex(order)
    ratios = headline.pivot(index="method", columns="metric", values="recovery_ratio").reindex(order)
    ratios = ratios.drop(index=list(REFERENCE_ARMS))  # 1 and 0 by definition
    charts_md = {
        f"recovery_ratio {metric}": dg.MetadataValue.md(
            charts.bar_chart(list(ratios.index), ratios[metric].fillna(0.0).tolist(),
                             f"Recovery ratio on {metric}, {variant}", "(recovered - pruned) / (original - pruned)")
        )
        for metric in ratios.columns
    }  # fmt: skip
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(table)),
        metadata={
            **table_metadata("recovery_comparison", duckdb.schema_name, len(table)),
            "overall": dg.MetadataValue.md(wide.round(4).reset_index().to_markdown(index=False)),
            **charts_md,
        },
    )
