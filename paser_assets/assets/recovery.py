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
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
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
    placement,
    pruned_reference,
)
from paser_assets.assets.scores import cluster_budgets
from paser_assets.assets.selection import (
    budgets_in_unit,
    paser_select,
    selectable_candidates,
    within_length_strata,
)
from paser_assets.core.allocation import allocate_budget, allocation_weights
from paser_assets.core.baselines import (
    ifd_selection,
    instruction_following_difficulty,
    longest_selection,
    random_selection,
    token_matched_selection,
    top_score_selection,
    uniform_selection,
)
from paser_assets.core.consistency import SELECTED
from paser_assets.core.efficiency import excess_nll, individual_efficiency
from paser_assets.core.evaluation import (
    LENGTH_BAND_NAMES,
    TaskScore,
    length_band,
    macro_mean,
    mean_stderr,
    recovery_ratio,
    style_for,
    task_average,
    weighted_mean,
)
from paser_assets.models.adapters import adapter_folder, adapter_recipe, train_or_reuse
from paser_assets.models.checkpoints import load_causal_lm, load_tokenizer, reference_version
from paser_assets.models.device import Placement
from paser_assets.models.evaluation import TextScore, read_task, score_task, text_perplexity
from paser_assets.models.general_text import general_text
from paser_assets.models.scoring import EncodedSample, PairScorer, encode_sample, plan_batches
from paser_assets.models.store import ModelStore
from paser_assets.models.training import load_adapter, perplexity, response_nll
from paser_assets.partitions import METHODS, VARIANTS, PartitionKey
from paser_assets.progress import format_duration
from paser_assets.report import REFERENCE_ARMS
from paser_assets.resources import PaserConfig, PaserDuckDB
from paser_assets.settings import reads
from paser_assets.tables import TABLES, table_metadata

RECOVERY_GROUP = "recovery"
STDLIB_TEXT = "stdlib_docs"  # the name of the default corpus, Python's standard-library documentation


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
          CHECKPOINTS, *LOADS_PRUNED, *LOADS_ORIGINAL],  # the original: for paser_instruction_jsd
    partitions_def=VARIANTS,
    group_name=RECOVERY_GROUP,
    code_version="4",
    kinds={"duckdb", "pytorch"},
    description="The other arms' selections: every selectable row (full), random rows at PASER's sample "
    "budget and at its training tokens, uniform across clusters, top JSD, IFD, the longest responses, and "
    "PASER with one part changed (the ablations, among them a token budget, the instruction-only JSD and the "
    "excess NLL in place of JSD).",
)  # fmt: skip
@reads(*MODEL_LOADING, *MODEL_PLACEMENT, "recovery.recovery_methods", "recovery.recovery_seed", "scoring.max_tokens",
       "selection.conflict_tolerance", "selection.allocation", "selection.ranking", "seed")  # fmt: skip
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
    tolerance, rule = paser.selection.conflict_tolerance, paser.selection.allocation
    picks = baseline_picks(frame, budgets, seed, tolerance, rule, paser.selection.ranking)
    if "random_tokens" in methods:
        tokens = dict(zip(frame["sample_id"], frame["tokens"].astype(int), strict=True))
        paser_tokens = sum(tokens[i] for i in method_selection(duckdb, "paser", variant)["sample_id"] if i in tokens)
        picks["random_tokens"] = token_matched_selection(tokens, paser_tokens, seed)
    scored_by_models = {"ifd", "paser_instruction_jsd"} & set(methods)
    if scored_by_models:
        model, tokenizer, _ = _load_pruned(store, duckdb, variant, placement(paser))
    elif "longest" in methods:  # counting tokens needs no model
        tokenizer = load_tokenizer(pruned_reference(duckdb, variant), store.cache_dir, store.options)
    if "longest" in methods:
        picks["longest"] = longest_selection(response_lengths(tokenizer, frame), budget)
    if "ifd" in methods:
        context.log.info("IFD: scoring the responses without their instructions under the pruned model")
        picks["ifd"] = ifd_selection(ifd_scores(model, tokenizer, frame, max_tokens), budget)
    if "paser_instruction_jsd" in methods:
        context.log.info("Instruction-only JSD: scoring the instructions under both models")
        original, _ = load_causal_lm(store.original, store.cache_dir, store.options, placement(paser))
        divergence = instruction_divergence(original, model, tokenizer, frame, max_tokens)
        del original
        picks["paser_instruction_jsd"] = instruction_jsd_selection(frame, divergence, budget, tolerance, rule)
    picks = {method: chosen for method, chosen in picks.items() if method in methods}
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


def baseline_picks(
    frame: pd.DataFrame,
    budgets: pd.DataFrame,
    seed: int,
    tolerance: float,
    rule: str = "cds",
    ranking: str = "ies",
) -> dict[str, list[str]]:
    """The choices that need no model: full, random, uniform, top JSD and the PASER ablations, at PASER's budget.

    The ablations change one part of PASER and keep the rest (its budget, its conflict ``tolerance``, its
    allocation ``rule``, its ``ranking``): the allocation rule (uniform, proportional to size, CDS x size), the
    order inside a cluster (JSD alone, random), the concept filter (off) or the budget's unit (``paser_tokens``:
    the training tokens a random selection of PASER's sample budget has on average, split by the same rule;
    ``paser_tokens_density``: that token budget, each cluster in the order of drift per training token;
    ``paser_tokens_strata`` and ``paser_tokens_density_strata``: the token budget with each cluster's tokens split
    across response-length strata in the cluster's own proportions, each stratum walked by the ranking or by
    the drift per token) or the degradation signal (``paser_excess_nll``: the excess NLL of the response,
    pruned minus original, in place of its JSD for the CDS, the allocation and the IES;
    ``paser_excess_nll_no_cost``: the same, each cluster walked by the excess NLL alone)."""
    budget = int(budgets["budget"].sum())
    ids = frame["sample_id"].tolist()
    sizes = frame.groupby("cluster").size().reindex(budgets["cluster"]).fillna(0).astype(int).to_numpy()

    def reallocated(rule: str) -> pd.DataFrame:
        weights = allocation_weights(rule, budgets["cds"].to_numpy(), sizes)
        return budgets.assign(budget=allocate_budget(budget, weights, sizes))

    def selected(
        candidates: pd.DataFrame, shares: pd.DataFrame, tau: float, unit: str = "samples", order: str = ranking
    ) -> list[str]:
        decisions = paser_select(candidates, shares, tau, unit, order).decisions
        return [d.sample_id for d in decisions if d.decision == SELECTED]

    in_tokens = budgets_in_unit(frame, budgets, "tokens", rule)
    random_order = [int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:12], 16) for i in ids]
    per_token = "drift_per_token"
    excess = with_signal(
        frame, [excess_nll(p, o) for p, o in zip(frame["pruned_nll"], frame["original_nll"], strict=True)]
    )
    excess_shares, _ = cluster_budgets(excess, budget, rule)
    return {
        "full": sorted(ids),
        "random": random_selection(ids, budget, seed),
        "uniform": uniform_selection(dict(zip(ids, frame["cluster"], strict=True)), budget, seed),
        "top_jsd": top_score_selection(dict(zip(ids, frame["jsd"], strict=True)), budget),
        "paser_no_concepts": selected(frame, budgets, 1.0),
        "paser_alloc_uniform": selected(frame, reallocated("uniform"), tolerance),
        "paser_alloc_size": selected(frame, reallocated("proportional"), tolerance),
        "paser_alloc_cds_size": selected(frame, reallocated("cds_size"), tolerance),
        # The two order ablations give the walk their own score: JSD alone, or a random order.
        "paser_order_jsd": selected(frame.assign(score=frame["jsd"]), budgets, tolerance),
        "paser_order_random": selected(
            frame.assign(score=np.asarray(random_order, dtype=np.float64)), budgets, tolerance
        ),
        "paser_tokens": selected(frame, in_tokens, tolerance, "tokens"),
        "paser_tokens_density": selected(frame, in_tokens, tolerance, "tokens", per_token),
        "paser_tokens_strata": selected(*within_length_strata(frame, in_tokens, "tokens"), tolerance, "tokens"),
        "paser_tokens_density_strata": selected(
            *within_length_strata(frame, in_tokens, "tokens"), tolerance, "tokens", per_token
        ),
        # The signal changed: excess NLL in place of JSD, for the CDS, the allocation and the walk.
        "paser_excess_nll": selected(excess, excess_shares, tolerance),
        "paser_excess_nll_no_cost": selected(excess.assign(score=excess["jsd"]), excess_shares, tolerance),
    }


def instruction_jsd_selection(
    frame: pd.DataFrame, divergence: dict[str, float], budget: int, tolerance: float, rule: str
) -> list[str]:
    """PASER driven by the reference code's signal, JSD over the instruction's tokens instead of the response's:
    the same budget, allocation rule, IES = JSD / log(cost) with the sample's own cost, and concept filter."""
    scored = with_signal(frame, frame["sample_id"].map(divergence))
    shares, _ = cluster_budgets(scored, budget, rule)
    decisions = paser_select(scored, shares, tolerance=tolerance).decisions
    return [d.sample_id for d in decisions if d.decision == SELECTED]


def with_signal(frame: pd.DataFrame, signal: Sequence[float] | pd.Series) -> pd.DataFrame:
    """The candidates with another per-sample degradation signal in place of the response JSD: ``jsd`` := the
    signal and ``ies`` := signal / log(cost), so that the CDS, the allocation and the walk all read it."""
    values = np.asarray(signal, dtype=np.float64)
    ies = [individual_efficiency(value, int(cost)) for value, cost in zip(values, frame["cost"], strict=True)]
    return frame.assign(jsd=values, ies=ies)


def response_lengths(tokenizer: Any, frame: pd.DataFrame) -> dict[str, int]:
    """Tokens of each response, untruncated."""
    lengths = tokenizer(frame["output"].tolist(), add_special_tokens=False)["input_ids"]
    return {sample_id: len(ids) for sample_id, ids in zip(frame["sample_id"], lengths, strict=True)}


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


def instruction_divergence(
    original: Any, pruned: Any, tokenizer: Any, frame: pd.DataFrame, max_tokens: int
) -> dict[str, float]:
    """Per sample, the mean JSD of the two models' next-token distributions over the tokens of its instruction
    (and input), without the chat template or the response: the signal of PASER's reference code."""
    samples = []
    for row in frame.itertuples(index=False):
        text = f"{row.instruction}\n{row.input}" if row.input else row.instruction
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"][: max_tokens - 1]
        samples.append(EncodedSample(row.sample_id, (*_lead(tokenizer), *ids), 1, False))
    scorer = PairScorer(original, pruned, tokenizer.pad_token_id)
    divergence: dict[str, float] = {}
    for batch in plan_batches([len(s.input_ids) for s in samples]):
        for score in scorer.score([samples[i] for i in batch]):
            divergence[score.sample_id] = score.jsd
    return divergence


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
    # The original: the teacher when PASER_LORA_LOSS=distillation.
    deps=["selection", "baseline_selections", "recovery_pool", CHECKPOINTS, *LOADS_PRUNED, *LOADS_ORIGINAL],
    partitions_def=METHODS,
    group_name=RECOVERY_GROUP,
    code_version="1",
    kinds={"pytorch", "safetensors"},
    description="A LoRA fine-tune (peft) of the pruned model on a method's selection, saved as a safetensors "
    "adapter; it minimises the answers' NLL or, with PASER_LORA_LOSS=distillation, the KL divergence from the "
    "original model. The loss curve is in the metadata.",
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


def _heldout(duckdb: PaserDuckDB) -> pd.DataFrame:
    with duckdb.get_connection() as conn:
        return conn.execute(
            "SELECT p.sample_id, p.instruction, p.input, p.output FROM holdout_split h JOIN recovery_pool p "
            "USING (sample_id) ORDER BY p.sample_id"
        ).df()


@dataclass(frozen=True)
class Evaluation:
    """One model on the held-out split (NLL per sample and the response tokens it is a mean over), the text
    corpora and the tasks."""

    heldout: dict[str, float]
    heldout_tokens: dict[str, int]
    texts: dict[str, TextScore]
    tasks: dict[str, TaskScore]
    seconds: float  # wall time of the whole evaluation: in the metadata, and the bench prices its ETA by it


def _evaluate(
    model: Any, tokenizer: Any, heldout: pd.DataFrame, max_tokens: int, settings: Any, log: Callable[[str], None]
) -> Evaluation:
    """The held-out NLL, the perplexity of every text corpus and the accuracy on every task of ``settings``."""
    start = time.monotonic()
    encoded = _encode(tokenizer, heldout, max_tokens)
    per_sample = response_nll(model, encoded, tokenizer.pad_token_id)
    texts: dict[str, TextScore] = {}
    for name, text in evaluation_texts(settings).items():
        texts[name] = text_perplexity(model, tokenizer, text, settings.eval_window, settings.eval_max_tokens)
        log(f"perplexity on {name}: {perplexity(texts[name].mean_nll):.3f} ({texts[name].tokens} tokens)")
    tasks: dict[str, TaskScore] = {}
    for name, path in settings.tasks().items():
        try:
            items = read_task(path, settings.eval_task_items)
        except ValueError as error:
            raise dg.Failure(description=f"PASER_EVAL_TASKS {name}: {error}") from None
        tasks[name] = score_task(model, tokenizer, items, style_for(name))[0]
        log(f"{name}: acc {tasks[name].acc:.4f} on {tasks[name].items} items")
    seconds = time.monotonic() - start
    log(f"evaluated in {format_duration(seconds)}")
    return Evaluation(per_sample, {s.sample_id: s.response_tokens for s in encoded}, texts, tasks, seconds)


def evaluation_texts(settings: Any) -> dict[str, str]:
    """The corpora named in PASER_EVAL_TEXT, read; or the standard-library documentation when none is named."""
    named = settings.texts()
    if not named:
        return {STDLIB_TEXT: general_text()}
    return {name: Path(path).read_text(encoding="utf-8", errors="replace") for name, path in named.items()}


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
    with duckdb.write() as conn:
        storage.replace_partition(conn, "heldout_nll", keys, nll)
        storage.replace_partition(conn, "text_perplexity", keys, texts)
        storage.replace_partition(conn, "task_accuracy", keys, tasks)
    return nll


def _evaluation_metadata(result: Evaluation) -> dict[str, Any]:
    metadata: dict[str, Any] = {"heldout_nll": float(np.mean(list(result.heldout.values())))}
    metadata.update({f"ppl:{name}": perplexity(score.mean_nll) for name, score in result.texts.items()})
    metadata.update({f"acc:{name}": score.acc for name, score in result.tasks.items()})
    metadata["seconds"] = round(result.seconds, 3)
    return metadata


EVALUATION_READS = ("scoring.max_tokens", "evaluation")


@dg.asset(
    deps=["holdout_split", "recovery_pool", CHECKPOINTS, *LOADS_ORIGINAL, *LOADS_PRUNED],
    partitions_def=VARIANTS,
    group_name=RECOVERY_GROUP,
    code_version="3",
    kinds={"duckdb", "pytorch"},
    description="The original and the pruned model on the held-out split, the text corpora (perplexity) "
    "and the zero-shot tasks, for reference.",
)
@reads(*MODEL_LOADING, *MODEL_PLACEMENT, *EVALUATION_READS)
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
        "original": _evaluate(original, tokenizer, heldout, max_tokens, paser.evaluation, context.log.info),
        "pruned": _evaluate(pruned, tokenizer, heldout, max_tokens, paser.evaluation, context.log.info),
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


@dg.asset(
    deps=["recovered_model", "holdout_split", "recovery_pool", CHECKPOINTS, *LOADS_PRUNED],
    partitions_def=METHODS,
    group_name=RECOVERY_GROUP,
    code_version="3",
    kinds={"duckdb", "pytorch"},
    description="The recovered model (pruned + a method's adapter) on the held-out split, the text corpora and "
    "the zero-shot tasks.",
)
@reads(*MODEL_LOADING, *MODEL_PLACEMENT, *EVALUATION_READS)
def recovery_evaluation(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    method, variant = _method_partition(context)
    adapter = recorded_adapter(duckdb, variant, method)
    heldout = _heldout(duckdb)
    where = placement(paser)
    pruned, tokenizer, _ = _load_pruned(paser.models.store(duckdb.database), duckdb, variant, where)
    recovered = load_adapter(pruned, adapter)
    result = _evaluate(recovered, tokenizer, heldout, paser.scoring.max_tokens, paser.evaluation, context.log.info)
    nll = _write_evaluation(duckdb, variant, method, {"recovered": result})
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(nll)),
        metadata={
            **_evaluation_metadata(result),
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


HEADLINE = ("heldout_nll", "heldout_nll_macro", "heldout_token_nll", "heldout_token_nll_macro", "task_average")


def metric_rows(
    heldout: pd.DataFrame, texts: pd.DataFrame, tasks: pd.DataFrame, group_kind: str
) -> list[dict[str, Any]]:
    """One model's metrics as (metric, value, stderr) rows: held-out NLL overall, macro, per group and per band
    of response length, perplexity per corpus, acc and acc_norm per task and the task average.

    ``heldout_nll`` counts every held-out row once (the mean of each row's per-token NLL), so a 3-token answer
    weighs as much as a 200-token essay; ``heldout_token_nll`` counts every held-out token once (total NLL over
    total tokens, the log of the held-out perplexity). Both have their macro average over groups. The bands
    (``heldout_nll:length=1-3`` ...) show where a difference comes from: a one-word answer's NLL is mostly its
    form (the word, then the end), which fine-tuning on such answers learns fast."""
    nll, groups = heldout["nll"].tolist(), heldout["group"].tolist()
    tokens = heldout["tokens"].astype("float64").tolist()
    rows = [
        {"metric": "heldout_nll", "value": float(np.mean(nll)), "stderr": mean_stderr(nll)},
        {"metric": "heldout_nll_macro", "value": macro_mean(nll, groups), "stderr": math.nan},
        {"metric": "heldout_token_nll", "value": weighted_mean(nll, tokens), "stderr": math.nan},
        {"metric": "heldout_token_nll_macro", "value": macro_mean(nll, groups, tokens), "stderr": math.nan},
    ]
    for group, values in heldout.groupby("group")["nll"]:
        rows.append({"metric": f"heldout_nll:{group_kind}={group}", "value": float(values.mean()),
                     "stderr": mean_stderr(values.tolist())})  # fmt: skip
    bands = heldout["tokens"].map(length_band)
    for band in [name for name in LENGTH_BAND_NAMES if (bands == name).any()]:
        values = heldout.loc[bands == band, "nll"].tolist()
        rows.append({"metric": f"heldout_nll:length={band}", "value": float(np.mean(values)),
                     "stderr": mean_stderr(values)})  # fmt: skip
    for row in texts.itertuples(index=False):
        rows.append({"metric": f"ppl:{row.text}", "value": float(row.perplexity), "stderr": math.nan})
    scores: dict[str, TaskScore] = {}
    for row in tasks.itertuples(index=False):
        norm = None if pd.isna(row.acc_norm) else float(row.acc_norm)
        norm_se = None if pd.isna(row.acc_norm_stderr) else float(row.acc_norm_stderr)
        scores[row.task] = TaskScore(int(row.items), float(row.acc), float(row.acc_stderr), norm, norm_se)
        rows.append({"metric": f"acc:{row.task}", "value": float(row.acc), "stderr": float(row.acc_stderr)})
        if norm is not None:
            rows.append({"metric": f"acc_norm:{row.task}", "value": norm, "stderr": norm_se})
    if scores:
        rows.append({"metric": "task_average", "value": task_average(scores), "stderr": math.nan})
    return rows


@dg.asset(
    deps=["recovery_evaluation", "reference_evaluation", "recovered_model", "clusters", CHECKPOINTS],
    partitions_def=VARIANTS,
    group_name=RECOVERY_GROUP,
    code_version="3",
    kinds={"duckdb"},
    description="Every metric per method with its recovery ratio (recovered - pruned) / (original - pruned) "
    "and the training each method used; the original and pruned models for reference.",
)
@reads("recovery.recovery_methods")
def recovery_comparison(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    variant = context.partition_key
    label = "CASE WHEN model = 'recovered' THEN method ELSE model END AS arm"
    with duckdb.get_connection() as conn:
        heldout = conn.execute(
            f"""SELECT {label}, h.sample_id, h.nll, h.tokens, c.cluster, p.family FROM heldout_nll h
            JOIN clusters c USING (sample_id) JOIN recovery_pool p USING (sample_id) WHERE h.variant = ?""",
            [variant],
        ).df()
        texts = conn.execute(f"SELECT {label}, * FROM text_perplexity WHERE variant = ?", [variant]).df()
        tasks = conn.execute(f"SELECT {label}, * FROM task_accuracy WHERE variant = ?", [variant]).df()
        training = conn.execute(
            "SELECT method AS arm, train_samples, train_tokens, train_seconds FROM recovered_adapters "
            "WHERE variant = ?",
            [variant],
        ).df()
    order = [*REFERENCE_ARMS, *paser.recovery.recovery_methods]
    missing = [m for m in order if m not in set(heldout["arm"])]
    if missing:
        raise dg.Failure(description=f"no evaluation yet for {missing} on variant {variant!r}")
    table = comparison_table(heldout, texts, tasks, training, order)
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


def comparison_table(
    heldout: pd.DataFrame, texts: pd.DataFrame, tasks: pd.DataFrame, training: pd.DataFrame, order: list[str]
) -> pd.DataFrame:
    """(method, metric, value, stderr, recovery_ratio, train_*) for every arm in ``order`` (original, pruned,
    then the methods). The held-out groups are the pool's labels when it has two or more, else the clusters."""
    labelled = heldout["family"].notna().all() and heldout["family"].nunique() >= 2
    group_kind = "family" if labelled else "cluster"
    heldout = heldout.assign(group=heldout[group_kind].astype(str))
    rows = []
    for arm in order:
        for row in metric_rows(heldout[heldout["arm"] == arm], texts[texts["arm"] == arm], tasks[tasks["arm"] == arm],
                               group_kind):  # fmt: skip
            rows.append({"method": arm, **row})
    table = pd.DataFrame(rows, columns=["method", "metric", "value", "stderr"])
    reference = table[table["method"].isin(REFERENCE_ARMS)].pivot(index="metric", columns="method", values="value")
    table["recovery_ratio"] = [
        recovery_ratio(value, reference.at[metric, "pruned"], reference.at[metric, "original"])
        if metric in reference.index else math.nan
        for metric, value in zip(table["metric"], table["value"], strict=True)
    ]  # fmt: skip
    table = table.merge(training.rename(columns={"arm": "method"}), on="method", how="left")
    return table.astype({"train_samples": "Int64", "train_tokens": "Int64", "train_seconds": "float64"})


RECOVERY_ASSETS = [baseline_selections, recovered_model, reference_evaluation, recovery_evaluation, recovery_comparison]
