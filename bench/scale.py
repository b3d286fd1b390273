"""The whole graph except LLM scoring at pool sizes up to 100k rows: wall time and peak memory per asset.

Run by hand: ``.venv/bin/python bench/scale.py --rows 100000``. The pool is ``../shared/data``
(22.8k rows) replicated with a copy number appended to each instruction until it has ``--rows``
rows. Each asset is materialized through Dagster in its own child process, whose peak resident
memory (VmHWM) is reported, in graph order:

recovery_pool, instruction_embeddings, manifold, clusters, cluster_profiles, sample_concepts,
then synthetic degradation scores (the shape ``degradation_scores`` writes: JSD, IES, token
counts, NLLs, for a variant named ``synthetic``) in place of the two LLMs, then
capability_degradation, selection (+ concept_graph) and selection_export of that variant.

Embedding 100k rows with all-MiniLM-L6-v2 takes tens of minutes on 2 cores, so by default the
embedding cache is seeded with the real embeddings of the 22.8k source rows (``bench/clustering.py``
caches them) and small Gaussian perturbations (std 0.01, re-normalised) for the copies; the
``instruction_embeddings`` step then only reads and writes. ``--embed`` embeds every row for real.
The last line is one JSON object: ``{"rows": N, "peak_gb": g, "seconds": {...}, "peak_gb_by_asset": {...}}``.
Target: peak <= 6 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from shared_data import read_records  # noqa: E402

SHARED_STEPS = [
    "recovery_pool",
    "holdout_split",  # capability_degradation and selection exclude these rows
    "instruction_embeddings",
    "manifold",
    "clusters",
    "cluster_profiles",
    "sample_concepts",
]
VARIANT_STEPS = ["synthetic_scores", "capability_degradation", "selection", "selection_export"]
VARIANT = "synthetic"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def peak_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def write_pool(data: Path, rows: int, target: Path) -> None:
    """Write the replicated pool as JSONL: row i is source record i % n, copy i // n."""
    records = read_records(data)
    with target.open("w") as handle:
        for index in range(rows):
            source, copy = index % len(records), index // len(records)
            record = dict(records[source])
            if copy:
                record["instruction"] = f"{record['instruction']} (#{copy})"
            handle.write(json.dumps(record) + "\n")


def seed_embeddings(workdir: Path) -> None:
    """Fill the embedding cache with the source rows' real embeddings, perturbed for the copies."""
    import pandas as pd
    from clustering import load_embeddings
    from clustering import load_pool as load_source_pool

    from paser_assets.assets.semantic import _embedding_model_key
    from paser_assets.pool import load_pool
    from paser_assets.resources import PaserConfig, PaserDuckDB
    from paser_assets.storage import append_rows

    data = REPO.parent / "shared" / "data"
    base = load_embeddings(load_source_pool(data), data)  # the same row order as write_pool's records

    config = PaserConfig(dataset=str(workdir / "pool.jsonl"))
    build = load_pool(config.pool.dataset, max_chars=config.pool.max_chars)
    rng = np.random.default_rng(0)
    vectors = []
    for row in build.accepted["source_row"].to_numpy():
        source, copy = (int(row) - 1) % len(base), (int(row) - 1) // len(base)  # write_pool's order
        vector = base[source]
        if copy:
            vector = vector + rng.normal(0.0, 0.01, size=vector.shape).astype(np.float32)
            vector = vector / np.linalg.norm(vector)
        vectors.append(vector.astype(np.float32))
    frame = pd.DataFrame(
        {
            "model_key": _embedding_model_key(config.semantic.embedding_model),
            "sample_id": build.accepted["sample_id"].to_numpy(),
            "embedding": vectors,
        }
    )
    database = PaserDuckDB(database=str(workdir / "paser.duckdb"))
    with database.write() as conn:
        append_rows(conn, "embedding_cache", frame)


def synthetic_scores(database) -> None:
    """degradation_scores rows for the synthetic variant, shaped as the real asset writes them."""
    import pandas as pd

    from paser_assets.core.efficiency import attention_cost, individual_efficiency
    from paser_assets.storage import replace_partition

    pool = database.read("recovery_pool", "sample_id, instruction, input, output")
    rng = np.random.default_rng(0)
    prompt = ((pool["instruction"].str.len() + pool["input"].str.len()) // 4 + 30).to_numpy()
    response = (pool["output"].str.len() // 4 + 1).clip(upper=480).to_numpy()
    jsd = np.clip(rng.beta(2.0, 8.0, size=len(pool)) * np.log(2), 0.0, np.log(2))
    costs = [attention_cost(int(p), int(r)) for p, r in zip(prompt, response, strict=True)]
    original_nll = rng.gamma(2.0, 0.5, size=len(pool))
    frame = pd.DataFrame(
        {
            "variant": VARIANT,
            "shard": np.int64(0),
            "sample_id": pool["sample_id"],
            "jsd": jsd,
            "ies": [individual_efficiency(float(j), c) for j, c in zip(jsd, costs, strict=True)],
            "cost": np.asarray(costs, dtype=np.int64),
            "prompt_tokens": prompt.astype(np.int64),
            "response_tokens": response.astype(np.int64),
            "original_nll": original_nll,
            "pruned_nll": original_nll + jsd * 3,
            "truncated": False,
        }
    )
    with database.write() as conn:
        replace_partition(conn, "degradation_scores", {"variant": VARIANT}, frame)  # as the asset: all shards


def child(step: str, workdir: Path) -> None:
    """Materialize one step in this process and print its time and peak memory as JSON."""
    import dagster as dg

    from paser_assets import PaserConfig, PaserDuckDB, build_definitions
    from paser_assets.models.pruning import PruneRecipe
    from paser_assets.registry import add_variant
    from paser_assets.runner import run_graph
    from paser_assets.variants import Variant

    config = PaserConfig(dataset=str(workdir / "pool.jsonl"), n_clusters=None, export_dir=str(workdir / "export"))
    database = PaserDuckDB(database=str(workdir / "paser.duckdb"))
    start = time.perf_counter()
    if step == "seed_embeddings":
        seed_embeddings(workdir)
    elif step == "synthetic_scores":
        synthetic_scores(database)
    else:
        if step in VARIANT_STEPS:
            # The synthetic variant's assets (<variant>/<step>) exist once it is registered; its recipe is never
            # run here (its scores are synthetic), so any recipe will do.
            add_variant(database, Variant(VARIANT, recipe=PruneRecipe(method="magnitude", sparsity=0.5)))
        defs = build_definitions(config, database)  # after the registration: the variant's assets are in it
        instance = dg.DagsterInstance.get()
        selection = f'key:"{VARIANT}/{step}"' if step in VARIANT_STEPS else f'key:"{step}"'
        run = run_graph(defs, instance, selection=selection)
        if not run.success:
            raise SystemExit(f"{step} failed: {run.failures()}")
    print(json.dumps({"step": step, "seconds": time.perf_counter() - start, "peak_gb": peak_gb()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--embed", action="store_true", help="embed every row instead of seeding the cache")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = args.workdir or REPO / "bench" / ".cache" / f"scale-{args.rows}"
    if args.child:
        child(args.child, workdir)
        return

    workdir.mkdir(parents=True, exist_ok=True)
    for stale in ("paser.duckdb", "paser.duckdb.wal"):
        (workdir / stale).unlink(missing_ok=True)
    (workdir / "home").mkdir(exist_ok=True)
    write_pool(args.data, args.rows, workdir / "pool.jsonl")
    env = {**os.environ, "DAGSTER_HOME": str(workdir / "home"), "PYTHONPATH": f"{REPO}:{REPO / 'bench'}"}
    seconds: dict[str, float] = {}
    peaks: dict[str, float] = {}
    steps = [*SHARED_STEPS, *VARIANT_STEPS]
    if not args.embed:
        # Seeding is set-up, not a graph step: it runs (and is reported) before the embeddings step.
        steps.insert(steps.index("instruction_embeddings"), "seed_embeddings")
    for step in steps:
        log(f"materializing {step} ...")
        done = subprocess.run(
            [sys.executable, __file__, "--rows", str(args.rows), "--workdir", str(workdir), "--child", step],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(f"{step} failed")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        seconds[step], peaks[step] = round(report["seconds"], 1), round(report["peak_gb"], 3)
        log(f"  {step}: {seconds[step]} s, peak {peaks[step]} GB")
    print(f"\n{'step':26s} {'seconds':>9s} {'peak GB':>9s}")
    for step in seconds:
        print(f"{step:26s} {seconds[step]:9.1f} {peaks[step]:9.3f}")
    peak = max(peaks.values())
    print(f"peak over all steps: {peak:.3f} GB (target <= 6 GB)")
    print(json.dumps({"rows": args.rows, "peak_gb": peak, "seconds": seconds, "peak_gb_by_asset": peaks}))


if __name__ == "__main__":
    main()
