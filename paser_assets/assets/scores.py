"""Degradation scores per sample and capability degradation (CDS and budget) per cluster.

Scores are stored in ``score_cache`` batch by batch as they are computed, keyed by the original
and pruned checkpoints' content hashes and the scoring settings. A run that is interrupted and
started again, or a re-materialization with unchanged checkpoints, reuses them instead of running
the models again; the ``degradation_scores`` table is then replaced in one transaction.
"""

import hashlib
import os
import time

import dagster as dg
import numpy as np
import pandas as pd

from paser_assets import charts, storage
from paser_assets.core.allocation import allocate_budget, resolve_budget
from paser_assets.core.efficiency import attention_cost, individual_efficiency
from paser_assets.models.checkpoints import CheckpointError, reference_version
from paser_assets.models.original_cache import OriginalOutputCache
from paser_assets.models.scoring import PairScorer, encode_sample, head_precision_key, plan_batches
from paser_assets.models.store import load_pair, model_settings
from paser_assets.progress import Progress
from paser_assets.registry import variant_partitions
from paser_assets.resources import PaserConfig, PaserDuckDB
from paser_assets.tables import TABLES, table_metadata

SCORES_GROUP = "scores"
SCORING_RECIPE = "teacher-forced-jsd/1"  # bump when the prompt or the score changes meaning
SCORE_COLUMNS = ["jsd", "original_nll", "pruned_nll", "prompt_tokens", "response_tokens", "truncated"]
# Scores are committed to the cache every this many seconds, so an interrupted run loses at most that much.
COMMIT_EVERY_S = 30.0


def _commit_every_s() -> float:
    """The commit interval: ``COMMIT_EVERY_S``, or PASER_SCORE_COMMIT_S (a testing/tuning knob, read at call
    time; the crash-safety tests set it low to kill a run after some scores were committed)."""
    raw = os.environ.get("PASER_SCORE_COMMIT_S", "").strip()
    try:
        return max(0.0, float(raw)) if raw else COMMIT_EVERY_S
    except ValueError:
        raise dg.Failure(description=f"PASER_SCORE_COMMIT_S={raw!r} is not a number of seconds") from None


def _scoring_key(original_version: str, pruned_version: str, paser: PaserConfig) -> str:
    return (
        f"{SCORING_RECIPE}|original={original_version}|pruned={pruned_version}|max_tokens={paser.max_tokens}"
        f"|head={head_precision_key(paser.head_precision)}"
    )


def _cached_scores(duckdb: PaserDuckDB, key: str) -> pd.DataFrame:
    with duckdb.get_connection() as conn:
        if not storage.table_exists(conn, "score_cache"):
            return pd.DataFrame(columns=["sample_id", *SCORE_COLUMNS])
        columns = ", ".join(SCORE_COLUMNS)
        return conn.execute(f"SELECT sample_id, {columns} FROM score_cache WHERE scoring_key = ?", [key]).df()


def _append_scores(duckdb: PaserDuckDB, key: str, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows, columns=["sample_id", *SCORE_COLUMNS])
    frame.insert(0, "scoring_key", key)
    with duckdb.write() as conn:
        storage.append_rows(conn, "score_cache", frame)


def _states_key(original_version: str, paser: PaserConfig) -> str:
    recipe = f"{SCORING_RECIPE}|original={original_version}|max_tokens={paser.max_tokens}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:20]


def shard_of(sample_id: str, shards: int) -> int:
    """The scoring shard of a sample: a hash of its id, so shards are stable as the pool grows."""
    return int(hashlib.sha256(sample_id.encode()).hexdigest()[:12], 16) % shards


def score_pool(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB, variant: str, shard: int
) -> tuple[pd.DataFrame, dict]:
    """Scores for the pool samples of one shard, from the caches where possible; returns (scores, facts)."""
    from paser_assets.assets.models import pruned_reference

    settings = model_settings(paser, duckdb.database)
    pruned = pruned_reference(duckdb, variant)
    original_version = reference_version(settings.original)
    pruned_version = reference_version(pruned)
    key = _scoring_key(original_version, pruned_version, paser)
    pool = duckdb.read("recovery_pool", "sample_id, instruction, input, output")
    pool = pool[[shard_of(s, paser.score_shards) == shard for s in pool["sample_id"]]].reset_index(drop=True)
    cached = _cached_scores(duckdb, key).drop_duplicates("sample_id")
    done = set(cached["sample_id"])
    todo = pool[~pool["sample_id"].isin(done)].reset_index(drop=True)
    context.log.info(f"{len(pool) - len(todo)} scores reused, {len(todo)} samples to score")
    states = (
        OriginalOutputCache(settings.cache_dir / "original_states", _states_key(original_version, paser))
        if paser.original_cache
        else None
    )
    from_states = 0
    head_precision = "none (nothing scored in this run)"
    rounding_errors: list[float] = []
    if len(todo):
        original, pruned_model, tokenizer = load_pair(settings, pruned)
        # Batches are planned over the whole pool and only those holding unscored samples run: a
        # resumed run then forms exactly the batches of an uninterrupted one, so its floats match.
        samples = [
            encode_sample(tokenizer, row.sample_id, row.instruction, row.input, row.output, paser.max_tokens)
            for row in pool.itertuples(index=False)
        ]
        batches = [
            batch
            for batch in plan_batches(
                [len(s.input_ids) for s in samples], paser.scoring_token_budget, paser.scoring_max_batch
            )
            if any(samples[i].sample_id not in done for i in batch)
        ]
        head = original.get_output_embeddings()
        if states is not None and all(samples[i].sample_id in states for batch in batches for i in batch):
            context.log.info(f"the original's outputs are cached ({states.folder}): only the pruned model runs")
            # Only now, when no batch needs it, the original is dropped: a batch is never scored partly
            # from cached states, so a resumed run gives exactly the floats of an uninterrupted one.
            original = None
        total_tokens = sum(len(samples[i].input_ids) for batch in batches for i in batch)
        progress = Progress("scoring", total_tokens, context.log.info, unit="tokens")
        compile_jsd = {"auto": None, "on": True, "off": False}[paser.jsd_compile]
        scorer = PairScorer(
            original, pruned_model, tokenizer.pad_token_id, compile_jsd=compile_jsd, head_precision=paser.head_precision
        )
        head_precision = scorer.head_precision
        pending: list[dict] = []
        new_states: dict = {}
        commit_every_s = _commit_every_s()
        committed = 0
        last_commit = time.monotonic()
        for number, batch in enumerate(batches):
            # The first batch scored live also measures what rounding the states to float16 costs.
            result = scorer.score_batch([samples[i] for i in batch], states, head, measure_rounding=number == 0)
            rounding_errors.extend(result.rounding_errors)
            from_states += len(batch) if result.used_cache else 0
            new_states.update(result.states)
            for score in result.scores:
                if score.sample_id not in done:
                    pending.append({"sample_id": score.sample_id, **{c: getattr(score, c) for c in SCORE_COLUMNS}})
            progress.advance(sum(len(samples[i].input_ids) for i in batch))
            if progress.done == total_tokens or time.monotonic() - last_commit >= commit_every_s:
                if states is not None:
                    states.put(new_states)  # before the scores: a committed score always has its states
                _append_scores(duckdb, key, pending)
                committed += len(pending)
                context.log.info(f"score_cache: {committed}/{len(todo)} new scores committed")
                pending, new_states, last_commit = [], {}, time.monotonic()
        cached = _cached_scores(duckdb, key).drop_duplicates("sample_id")
    scores = pool[["sample_id"]].merge(cached, on="sample_id", how="left", validate="one_to_one")
    facts = {
        "variant": variant,
        "shard": f"{shard + 1} of {paser.score_shards}",
        "original": settings.original.display,
        "original_hash": original_version,
        "pruned": pruned.display,
        "pruned_hash": pruned_version,
        "scored_now": len(todo),
        "reused": len(pool) - len(todo),
        "scored_from_cached_original_outputs": from_states,
        "float16_rounding_jsd_error": (
            f"mean {np.mean(rounding_errors):.2e}, max {np.max(rounding_errors):.2e} "
            f"over {len(rounding_errors)} samples"
            if rounding_errors
            else "not measured in this run (no sample scored with the original model loaded)"
        ),
        "original_outputs_cache": str(states.folder) if states is not None else "off",
        "output_head_precision": head_precision,
    }
    return scores, facts


# Every asset that depends on the pruned model lists the model assets as direct parents: Dagster
# marks only the direct children of a changed asset as stale, and these assets all change with it.
MODEL_PARENTS = ["original_model", "pruned_checkpoint", "pruned_model"]


def score_partitions(shards: int) -> dg.MultiPartitionsDefinition:
    """degradation_scores is partitioned by variant and by shard, so a backfill spreads scoring over workers."""
    return dg.MultiPartitionsDefinition(
        {"shard": dg.StaticPartitionsDefinition([str(i) for i in range(shards)]), "variant": variant_partitions}
    )


def score_partition(context: dg.AssetExecutionContext) -> tuple[str, int]:
    keys = context.partition_key.keys_by_dimension  # type: ignore[attr-defined]
    return keys["variant"], int(keys["shard"])


def build_degradation_scores(shards: int) -> dg.AssetsDefinition:
    """The degradation_scores asset for ``shards`` scoring shards (one partition per variant and shard)."""

    @dg.asset(
        name="degradation_scores",
        deps=["recovery_pool", *MODEL_PARENTS],
        partitions_def=score_partitions(shards),
        group_name=SCORES_GROUP,
        code_version="1",
        kinds={"duckdb", "pytorch"},
        description="Per sample: mean JSD between the original and pruned next-token distributions over the "
        "response, token counts, cost, IES and each model's mean response NLL. Partitioned by variant and shard.",
    )
    def degradation_scores(
        context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
    ) -> dg.MaterializeResult:
        variant, shard = score_partition(context)
        if shard >= paser.score_shards:
            raise dg.Failure(description=f"shard {shard} does not exist with PASER_SCORE_SHARDS={paser.score_shards}")
        try:
            scores, facts = score_pool(context, paser, duckdb, variant, shard)
        except CheckpointError as error:
            raise dg.Failure(description=str(error)) from None
        table = score_table(scores, variant, shard)
        with duckdb.write() as conn:
            storage.replace_partition(conn, "degradation_scores", {"variant": variant, "shard": shard}, table)
        return dg.MaterializeResult(
            data_version=dg.DataVersion(storage.content_hash(table)),
            metadata={
                **table_metadata("degradation_scores", duckdb.schema_name, len(table)),
                **{k: dg.MetadataValue.text(str(v)) for k, v in facts.items()},
                "mean_jsd": float(table["jsd"].mean()) if len(table) else 0.0,
                "max_jsd": float(table["jsd"].max()) if len(table) else 0.0,
                "mean_original_nll": float(table["original_nll"].mean()) if len(table) else 0.0,
                "mean_pruned_nll": float(table["pruned_nll"].mean()) if len(table) else 0.0,
                "truncated_samples": int(table["truncated"].sum()),
            },
        )

    return degradation_scores


def score_table(scores: pd.DataFrame, variant: str, shard: int) -> pd.DataFrame:
    """The rows degradation_scores writes for one (variant, shard) partition."""
    costs = [
        attention_cost(int(p), int(r)) for p, r in zip(scores["prompt_tokens"], scores["response_tokens"], strict=True)
    ]
    table = scores.assign(
        variant=variant,
        shard=np.int64(shard),
        prompt_tokens=scores["prompt_tokens"].astype("int64"),
        response_tokens=scores["response_tokens"].astype("int64"),
        truncated=scores["truncated"].astype(bool),
        cost=np.asarray(costs, dtype=np.int64),
        ies=[individual_efficiency(float(j), c) for j, c in zip(scores["jsd"], costs, strict=True)],
    )
    return table[list(TABLES["degradation_scores"].columns)].astype({"shard": "int64"})


@dg.asset(
    deps=["degradation_scores", "clusters", "holdout_split", *MODEL_PARENTS],
    partitions_def=variant_partitions,
    group_name=SCORES_GROUP,
    code_version="1",
    kinds={"duckdb"},
    description="Per cluster: size, Capability Degradation Score (mean JSD) and its share of the budget, "
    "over the selectable samples (the held-out split excluded).",
)
def capability_degradation(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    schema = duckdb.schema_name
    variant = context.partition_key
    with duckdb.get_connection() as conn:
        frame = conn.execute(
            """
            SELECT c.cluster, s.jsd, s.ies
            FROM clusters c
            JOIN degradation_scores s USING (sample_id)
            WHERE s.variant = ?
              AND c.sample_id NOT IN (SELECT sample_id FROM holdout_split)
            """,
            [variant],
        ).df()
    if frame.empty:
        raise dg.Failure(description="clusters and degradation_scores share no sample: materialize both again")
    with duckdb.get_connection() as conn:
        missing = conn.execute(
            """
            SELECT count(*) FROM clusters c
            WHERE c.sample_id NOT IN (SELECT sample_id FROM degradation_scores WHERE variant = ?)
            """,
            [variant],
        ).fetchall()[0][0]
    if missing:
        raise dg.Failure(
            description=f"{missing} samples of variant {variant!r} have no score yet: materialize every shard of "
            "degradation_scores for this variant first"
        )
    per_cluster = (
        frame.groupby("cluster")
        .agg(size=("jsd", "size"), cds=("jsd", "mean"), jsd_std=("jsd", "std"), mean_ies=("ies", "mean"))
        .reset_index()
        .sort_values("cluster")
    )
    try:
        budget = resolve_budget(paser.budget, int(per_cluster["size"].sum()))
    except ValueError as error:
        raise dg.Failure(description=f"PASER_BUDGET={paser.budget}: {error}") from None
    allocation = allocate_budget(budget, per_cluster["cds"].to_numpy(), per_cluster["size"].to_numpy())
    table = per_cluster.assign(
        size=per_cluster["size"].astype("int64"),
        jsd_std=per_cluster["jsd_std"].fillna(0.0),
        budget=allocation.astype(np.int64),
        budget_share=allocation / budget,
    )[["cluster", "size", "cds", "jsd_std", "mean_ies", "budget", "budget_share"]]
    table.insert(0, "variant", variant)
    with duckdb.write() as conn:
        storage.replace_partition(conn, "capability_degradation", {"variant": variant}, table)
    labels = table["cluster"].astype(str).tolist()
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(table)),
        metadata={
            **table_metadata("capability_degradation", schema, len(table)),
            "budget": budget,
            "budget_setting": paser.budget,
            "table": dg.MetadataValue.md(table.round(4).to_markdown(index=False)),
            "cds_per_cluster": dg.MetadataValue.md(
                charts.bar_chart(
                    labels, table["cds"].tolist(), "Capability Degradation Score per cluster", "mean JSD (nats)"
                )
            ),
            "budget_per_cluster": dg.MetadataValue.md(
                charts.bar_chart(labels, table["budget"].tolist(), f"Budget per cluster (total {budget})", "samples")
            ),
        },
    )
