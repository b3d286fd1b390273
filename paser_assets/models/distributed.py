"""Scoring shards on a Dask cluster: the workers score and commit to Parquet files, never to the DuckDB file.

The asset that asks for the scores stays the only writer of the database: it hands each worker a shard of the
samples still unscored, the workers commit their scores batch by batch to Parquet files under the model cache
(so an interrupted run resumes shard by shard), and the asset folds those files into its score cache. The
cluster is the one at ``PASER_DASK_ADDRESS``, or a ``LocalCluster`` of single-threaded worker processes
(``PASER_SCORE_WORKERS``, by default one per shard, at most one per CPU) that lives for the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import pandas as pd

from paser_assets.models.original_cache import OriginalOutputCache
from paser_assets.models.score_run import ModelLoader, ScoreRunFacts, ScoringOptions, score_shard
from paser_assets.models.scoring import SampleScore
from paser_assets.progress import Progress

WORKER_LOG = logging.getLogger("paser.scoring.worker")


class ParquetScoreStore:
    """A :class:`~paser_assets.models.score_run.ScoreStore` of Parquet files, one folder per scoring key.

    Each commit is one file, written under a temporary name and renamed, so a reader never sees half of one."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, key: str) -> Path:
        return self.root / hashlib.sha256(key.encode()).hexdigest()[:24]

    def read(self, key: str, sample_ids: Collection[str] | None = None) -> pd.DataFrame:
        parts = sorted(self.folder(key).glob("*.parquet"))
        if not parts:
            return pd.DataFrame(columns=list(SampleScore.__dataclass_fields__))
        frame = pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)
        if sample_ids is not None:
            frame = frame[frame["sample_id"].isin(set(sample_ids))]
        return frame.drop_duplicates("sample_id").reset_index(drop=True)

    def append(self, key: str, scores: Sequence[SampleScore]) -> None:
        folder = self.folder(key)
        folder.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame([{name: getattr(score, name) for name in SampleScore.__dataclass_fields__}
                              for score in scores])  # fmt: skip
        name = f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging = folder / f".{name}.tmp"
        frame.to_parquet(staging, index=False)
        os.replace(staging, folder / f"{name}.parquet")

    def clear(self, key: str) -> None:
        """Delete the key's files, once the asset has committed them to the database."""
        for part in self.folder(key).glob("*.parquet"):
            part.unlink()


def score_shard_on_worker(
    pool: pd.DataFrame,
    key: str,
    root: Path,
    load_models: ModelLoader,
    options: ScoringOptions,
    states: OriginalOutputCache | None,
) -> tuple[pd.DataFrame, ScoreRunFacts]:
    """One shard, as a Dask task: :func:`score_shard` committing to Parquet files under ``root``."""
    return score_shard(pool, key, ParquetScoreStore(root), load_models, options, states, WORKER_LOG.info)


def score_on_cluster(
    shards: Sequence[pd.DataFrame],
    key: str,
    root: Path,
    load_models: ModelLoader,
    options: ScoringOptions,
    states: OriginalOutputCache | None,
    address: str | None,
    workers: int | None,
    log: Callable[[str], None],
) -> tuple[list[pd.DataFrame], str]:
    """Score ``shards`` on the Dask cluster at ``address`` (None: a local one of ``workers`` processes for this
    call, None: one per shard, at most one per CPU); returns each shard's scores, in order, and where they ran."""
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if address is None:
        workers = workers or max(1, min(len(shards), os.cpu_count() or 1))
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        where = f"a local Dask cluster of {workers} worker processes"
    else:
        where = f"the Dask cluster at {address}"
    log(f"scoring {len(shards)} shards on {where}")
    try:
        with Client(cluster if cluster is not None else address) as client:
            futures = [
                client.submit(score_shard_on_worker, shard, key, root, load_models, options, states, pure=False)
                for shard in shards
            ]
            progress = Progress("scoring shards", len(futures), log, unit="shards", every_s=0.0)
            for _ in as_completed(futures):
                progress.advance(1)
            results = client.gather(futures)
    finally:
        if cluster is not None:
            cluster.close()
    return [frame for frame, _ in results], where
