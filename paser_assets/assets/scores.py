"""Degradation scores per sample and capability degradation (CDS and budget) per cluster.

Scores are stored in ``score_cache`` batch by batch as they are computed, keyed by the original
and pruned checkpoints' content hashes and the scoring settings. A run that is interrupted and
started again, or a re-materialization with unchanged checkpoints, reuses them instead of running
the models again; the ``degradation_scores`` table is then replaced in one transaction.
"""

import dataclasses
import hashlib
from collections.abc import Collection, Sequence
from functools import cache, partial

import dagster as dg
import numpy as np
import pandas as pd

from paser_assets import charts, report, storage
from paser_assets.assets.models import (
    CHECKPOINTS,
    LOADS_ORIGINAL,
    LOADS_PRUNED,
    MODEL_LOADING,
    MODEL_PLACEMENT,
    placement,
    pruned_reference,
)
from paser_assets.core.efficiency import attention_cost, individual_efficiency
from paser_assets.core.selection import cluster_budgets
from paser_assets.models.checkpoints import CheckpointError, reference_version
from paser_assets.models.device import precision_key
from paser_assets.models.distributed import ParquetScoreStore, score_on_cluster
from paser_assets.models.original_cache import OriginalOutputCache
from paser_assets.models.score_run import ScoringOptions, score_shard
from paser_assets.models.scoring import SampleScore, head_precision_key
from paser_assets.models.store import load_pair
from paser_assets.per_variant import variant_asset, variant_of
from paser_assets.resources import PaserConfig, PaserDuckDB, named_when_disk_full
from paser_assets.settings import reads
from paser_assets.tables import TABLES, table_metadata

SCORING_RECIPE = "teacher-forced-jsd/1"  # bump when the prompt or the score changes meaning
# What a sample's score holds besides its id: the score_cache columns after scoring_key and sample_id.
SCORE_COLUMNS = [f.name for f in dataclasses.fields(SampleScore) if f.name != "sample_id"]


def _scoring_key(original_version: str, pruned_version: str, paser: PaserConfig) -> str:
    return (
        f"{SCORING_RECIPE}|original={original_version}|pruned={pruned_version}|max_tokens={paser.scoring.max_tokens}"
        f"|head={head_precision_key(paser.scoring.head_precision, paser.scoring.precision, paser.models.device)}"
        f"|precision={_computed_in(paser)}"
    )


def _computed_in(paser: PaserConfig) -> str:
    """The precision the decoder passes run in on this machine (the same for 'auto' and its resolution)."""
    return precision_key(paser.scoring.precision, paser.models.device).removeprefix("auto:")


class DuckDBScoreStore:
    """The ``score_cache`` table as a :class:`~paser_assets.models.score_run.ScoreStore`."""

    def __init__(self, duckdb: PaserDuckDB) -> None:
        self.duckdb = duckdb

    def read(self, key: str, sample_ids: Collection[str] | None = None) -> pd.DataFrame:
        with self.duckdb.get_connection() as conn:
            if not storage.table_exists(conn, "score_cache"):
                return pd.DataFrame(columns=["sample_id", *SCORE_COLUMNS])
            query = f"SELECT sample_id, {', '.join(SCORE_COLUMNS)} FROM score_cache WHERE scoring_key = ?"
            if sample_ids is None:
                return conn.execute(query, [key]).df()
            wanted = f"{query} AND sample_id IN (SELECT unnest(?::VARCHAR[]))"
            return conn.execute(wanted, [key, list(sample_ids)]).df()

    def append(self, key: str, scores: Sequence[SampleScore]) -> None:
        rows = [[score.sample_id, *(getattr(score, c) for c in SCORE_COLUMNS)] for score in scores]
        self.append_frame(key, pd.DataFrame(rows, columns=["sample_id", *SCORE_COLUMNS]))

    def append_frame(self, key: str, scores: pd.DataFrame) -> None:
        """Store scores given as a frame (``sample_id`` and the score columns) under ``key``, in one commit."""
        if scores.empty:
            return
        frame = scores[["sample_id", *SCORE_COLUMNS]].copy()
        frame.insert(0, "scoring_key", key)
        with self.duckdb.write() as conn:
            storage.append_rows(conn, "score_cache", frame)


def _states_key(original_version: str, paser: PaserConfig) -> str:
    recipe = f"{SCORING_RECIPE}|original={original_version}|max_tokens={paser.scoring.max_tokens}"
    if _computed_in(paser) != "float32":  # float32 states keep the key they had before the precision setting
        recipe += f"|precision={_computed_in(paser)}"
    return hashlib.sha256(recipe.encode()).hexdigest()[:20]


def shard_of(sample_id: str, shards: int) -> int:
    """The scoring shard of a sample: a hash of its id, so shards are stable as the pool grows."""
    return int(hashlib.sha256(sample_id.encode()).hexdigest()[:12], 16) % shards


def _shards(pool: pd.DataFrame, count: int) -> list[pd.DataFrame]:
    """The pool's rows by scoring shard (the non-empty shards, in shard order)."""
    shard = np.asarray([shard_of(sample, count) for sample in pool["sample_id"]], dtype=np.int64)
    found = [pool[shard == i].reset_index(drop=True) for i in range(count) if (shard == i).any()]
    return found or [pool.reset_index(drop=True)]


def score_pool(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB, variant: str
) -> tuple[pd.DataFrame, dict]:
    """Scores for every pool sample, from the caches where possible; returns (scores, facts).

    One shard is scored in this process; more go to Dask workers, whose scores this process commits."""
    settings = paser.models.store(duckdb.database)
    pruned = pruned_reference(duckdb, variant)
    original_version = reference_version(settings.original)
    pruned_version = reference_version(pruned)
    key = _scoring_key(original_version, pruned_version, paser)
    pool = duckdb.read("recovery_pool", "sample_id, instruction, input, output")
    states = (
        OriginalOutputCache(settings.cache_dir / "original_states", _states_key(original_version, paser))
        if paser.scoring.original_cache
        else None
    )
    scoring = paser.scoring
    where = placement(paser)
    options = ScoringOptions(
        max_tokens=scoring.max_tokens,
        token_budget=scoring.scoring_token_budget,
        max_batch=scoring.scoring_max_batch,
        compile_jsd={"auto": None, "on": True, "off": False}[scoring.jsd_compile],
        head_precision=scoring.head_precision,
        commit_every_s=scoring.score_commit_s,
        device=str(where.device),
    )
    loader = partial(load_pair, settings, pruned, where)
    store = DuckDBScoreStore(duckdb)
    facts: dict = {
        "variant": variant,
        "original": settings.original.display,
        "original_hash": original_version,
        "pruned": pruned.display,
        "pruned_hash": pruned_version,
        "precision": _computed_in(paser),  # of every score in the table, reused or not: it is in the key
    }
    address, shards = paser.execution.dask_address, _shards(pool, scoring.score_shards)
    if not address and (len(shards) == 1 or scoring.score_workers == 0):
        # Shard by shard, as workers would: a shard's batches, and so its floats, do not depend on where it runs.
        loader = cache(loader)
        runs = [score_shard(shard, key, store, loader, options, states, context.log.info) for shard in shards]
        scores = pool[["sample_id"]].merge(pd.concat([frame for frame, _ in runs]), on="sample_id", validate="1:1")
        return scores, {**facts, "scored_in": "this process", **runs[0][1].metadata(),
                        "scored_now": sum(run.scored_now for _, run in runs),
                        "reused": sum(run.reused for _, run in runs)}  # fmt: skip
    files = ParquetScoreStore(settings.cache_dir / "score_shards")
    store.append_frame(key, files.read(key))  # what workers committed before an interrupt
    files.clear(key)
    done = set(store.read(key, pool["sample_id"].tolist())["sample_id"])
    todo = pool[~pool["sample_id"].isin(done)]
    shards = _shards(todo, scoring.score_shards)
    where_run = "nowhere: every score was reused"
    if len(todo):
        workers = scoring.score_workers
        _, where_run = score_on_cluster(
            shards, key, files.root, loader, options, states, address, workers, context.log.info
        )
        store.append_frame(key, files.read(key))
        files.clear(key)
    stored = store.read(key, pool["sample_id"].tolist()).drop_duplicates("sample_id")
    scores = pool[["sample_id"]].merge(stored, on="sample_id", how="left", validate="one_to_one")
    return scores, {**facts, "scored_in": where_run, "scored_now": len(todo), "reused": len(done)}


@variant_asset(
    deps=["recovery_pool", CHECKPOINTS, *LOADS_ORIGINAL, *LOADS_PRUNED],
    code_version="1",
    kinds={"duckdb", "pytorch"},
    description="Per sample: mean JSD between the original and pruned next-token distributions over the response, "
    "token counts, cost, IES and each model's mean response NLL. With PASER_SCORE_SHARDS above 1 or "
    "PASER_DASK_ADDRESS the shards are scored by Dask workers, and this asset alone writes the table.",
)
@reads(*MODEL_LOADING, *MODEL_PLACEMENT, "scoring", "execution.dask_address")
def degradation_scores(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    variant = variant_of(context)
    cache = paser.models.store(duckdb.database).cache_dir  # converted GGUF, cached original outputs
    try:
        kept = "the scores committed so far are kept, and the next run resumes from them"
        with named_when_disk_full(cache, "PASER_MODEL_CACHE", kept):
            scores, facts = score_pool(context, paser, duckdb, variant)
    except CheckpointError as error:
        raise dg.Failure(description=str(error)) from None
    table = score_table(scores, variant, paser.scoring.score_shards)
    with duckdb.write() as conn:
        storage.replace_partition(conn, "degradation_scores", {"variant": variant}, table)
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


def score_table(scores: pd.DataFrame, variant: str, shards: int) -> pd.DataFrame:
    """The rows degradation_scores writes for a variant; ``shard`` is each sample's scoring shard."""
    costs = [
        attention_cost(int(p), int(r)) for p, r in zip(scores["prompt_tokens"], scores["response_tokens"], strict=True)
    ]
    table = scores.assign(
        variant=variant,
        shard=np.asarray([shard_of(sample, shards) for sample in scores["sample_id"]], dtype=np.int64),
        prompt_tokens=scores["prompt_tokens"].astype("int64"),
        response_tokens=scores["response_tokens"].astype("int64"),
        truncated=scores["truncated"].astype(bool),
        cost=np.asarray(costs, dtype=np.int64),
        ies=[individual_efficiency(float(j), c) for j, c in zip(scores["jsd"], costs, strict=True)],
    )
    return table[list(TABLES["degradation_scores"].columns)].astype({"shard": "int64"})


def _selectable_scores(duckdb: PaserDuckDB, variant: str) -> pd.DataFrame:
    """(cluster, jsd, ies) of the variant's selectable samples; an error unless every sample is scored."""
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
        missing = conn.execute(
            "SELECT count(*) FROM clusters WHERE sample_id NOT IN "
            "(SELECT sample_id FROM degradation_scores WHERE variant = ?)",
            [variant],
        ).fetchall()[0][0]
    if frame.empty:
        raise dg.Failure(description="clusters and degradation_scores share no sample: materialize both again")
    if missing:
        raise dg.Failure(
            description=f"{missing} samples of variant {variant!r} have no score yet: materialize "
            f"{variant}/degradation_scores first"
        )
    return frame


@variant_asset(
    deps=["degradation_scores", "clusters", "holdout_split", CHECKPOINTS],
    code_version="1",
    kinds={"duckdb"},
    description="Per cluster: size, Capability Degradation Score (mean JSD) and its share of the budget, "
    "over the selectable samples (the held-out split excluded).",
)
@reads("selection.budget", "selection.allocation")
def capability_degradation(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    setting = paser.selection.budget
    schema = duckdb.schema_name
    variant = variant_of(context)
    frame = _selectable_scores(duckdb, variant)
    try:
        table, budget = cluster_budgets(frame, setting, paser.selection.allocation)
    except ValueError as error:
        raise dg.Failure(description=f"PASER_BUDGET={setting}: {error}") from None
    table.insert(0, "variant", variant)
    with duckdb.write() as conn:
        storage.replace_partition(conn, "capability_degradation", {"variant": variant}, table)
    with duckdb.get_connection() as conn:
        # Keyphrase labels when cluster_profiles describes these clusters; every variant, to compare them.
        names = report.load_cluster_names(conn)
        every_variant = storage.read_table(conn, "capability_degradation")
    labels = table["cluster"].astype(str).tolist()
    comparison = report.cds_comparison_chart(every_variant, names)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(table)),
        metadata={
            **table_metadata("capability_degradation", schema, len(table)),
            "budget": budget,
            "budget_setting": setting,
            "table": dg.MetadataValue.md(table.round(4).to_markdown(index=False)),
            "cds_per_cluster": dg.MetadataValue.md(
                charts.markdown(report.cds_chart(table, names, variant), "CDS and budget per cluster")
            ),
            "budget_per_cluster": dg.MetadataValue.md(
                charts.bar_chart(labels, table["budget"].tolist(), f"Budget per cluster (total {budget})", "samples")
            ),
            **(
                {"cds_by_variant": dg.MetadataValue.md(charts.markdown(comparison, "CDS per cluster by variant"))}
                if comparison is not None
                else {}
            ),
        },
    )
