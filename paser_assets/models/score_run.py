"""Resumable scoring of one shard of the pool, independent of Dagster and of where scores are stored.

Scores already stored under the scoring key are reused; the rest are scored batch by batch and
committed to a :class:`ScoreStore` every ``commit_every_s`` seconds, so an interrupted run loses at
most that much work, and a resumed run gives exactly the scores of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from paser_assets.models.checkpoints import fit_to_context
from paser_assets.models.original_cache import OriginalOutputCache, OriginalStates
from paser_assets.models.scoring import (
    MAX_TOKENS_SETTING,
    BatchScores,
    EncodedSample,
    PairScorer,
    SampleScore,
    batch_limits,
    encode_sample,
    plan_batches,
)
from paser_assets.progress import Progress

# Called only when some sample needs scoring: (original model, pruned model, tokenizer), placed on the
# scoring device in the scoring precision.
ModelLoader = Callable[[], tuple[Any, Any, Any]]


class ScoreStore(Protocol):
    """Where scores are kept between runs, under a scoring key that names everything they depend on."""

    def read(self, key: str, sample_ids: Collection[str] | None = None) -> pd.DataFrame:
        """The scores stored under ``key`` for ``sample_ids`` (all when None): one row per stored score,
        with the columns of :class:`SampleScore` (``sample_id`` first)."""
        ...

    def append(self, key: str, scores: Sequence[SampleScore]) -> None:
        """Store ``scores`` under ``key`` in one commit."""
        ...


@dataclass(frozen=True)
class ScoringOptions:
    """How samples are encoded, batched and scored, and how often scores are committed (the scoring
    settings, whose defaults live in :class:`paser_assets.settings.ScoringSettings`)."""

    max_tokens: int
    token_budget: int | None  # None: see scoring.batch_limits (fixed on a CPU, free memory on a GPU)
    max_batch: int | None
    compile_jsd: bool | None  # None: decided by the vocabulary size (see PairScorer)
    head_precision: str
    commit_every_s: float
    device: str  # where the loader puts the models


@dataclass(frozen=True)
class RoundingError:
    """|JSD from float16 original states - JSD from unrounded ones| over the first batch scored live."""

    mean: float
    max: float
    samples: int

    @classmethod
    def of(cls, errors: Sequence[float]) -> RoundingError | None:
        return cls(float(np.mean(errors)), float(np.max(errors)), len(errors)) if errors else None

    def __str__(self) -> str:
        return f"mean {self.mean:.2e}, max {self.max:.2e} over {self.samples} samples"


@dataclass(frozen=True)
class ScoreRunFacts:
    """What a run of :func:`score_shard` did."""

    scored_now: int
    reused: int
    scored_from_cached_original_outputs: int = 0
    rounding_error: RoundingError | None = None  # None: no sample was scored with the original loaded
    head_precision: str | None = None  # None: nothing was scored
    cache_folder: Path | None = None  # None: no original-output cache
    precision: str | None = None  # the models' dtype; None: nothing was scored
    device: str | None = None  # None: nothing was scored

    def metadata(self) -> dict[str, int | str]:
        """The facts as the asset reports them."""
        return {
            "scored_now": self.scored_now,
            "reused": self.reused,
            "scored_from_cached_original_outputs": self.scored_from_cached_original_outputs,
            "float16_rounding_jsd_error": str(self.rounding_error)
            if self.rounding_error
            else "not measured in this run (no sample scored with the original model loaded)",
            "original_outputs_cache": str(self.cache_folder) if self.cache_folder else "off",
            "output_head_precision": self.head_precision or "none (nothing scored in this run)",
            "device": self.device or "none (nothing scored in this run)",
        }


def _ignore(message: str) -> None:
    """The default log: say nothing."""


def score_shard(
    pool: pd.DataFrame,
    key: str,
    store: ScoreStore,
    load_models: ModelLoader,
    options: ScoringOptions,
    states: OriginalOutputCache | None = None,
    log: Callable[[str], None] = _ignore,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[pd.DataFrame, ScoreRunFacts]:
    """Scores of the ``pool`` rows (sample_id, instruction, input, output) under ``key``: those in ``store``
    are reused, the others scored and appended to it. Returns one row per pool sample, in pool order, and
    the facts of the run. The models are loaded only when some sample is not stored yet."""
    sample_ids = pool["sample_id"].tolist()
    done = set(_stored(store, key, sample_ids)["sample_id"])
    todo = sum(sample_id not in done for sample_id in sample_ids)
    log(f"{len(sample_ids) - todo} scores reused, {todo} samples to score")
    facts = ScoreRunFacts(todo, len(sample_ids) - todo, cache_folder=states.folder if states is not None else None)
    if todo:
        commits = _Commits(store, key, states, todo, options.commit_every_s, clock, log)
        from_states, rounding_errors, scorer = _score_missing(pool, done, load_models, options, states, commits, log)
        facts = dataclasses.replace(
            facts,
            scored_from_cached_original_outputs=from_states,
            rounding_error=RoundingError.of(rounding_errors),
            head_precision=scorer.head_precision,
            precision=scorer.precision,
            device=str(scorer.device),
        )
    stored = _stored(store, key, sample_ids)
    return pool[["sample_id"]].merge(stored, on="sample_id", how="left", validate="one_to_one"), facts


def _stored(store: ScoreStore, key: str, sample_ids: Collection[str]) -> pd.DataFrame:
    return store.read(key, sample_ids).drop_duplicates("sample_id")


def _batches_to_run(
    samples: Sequence[EncodedSample], done: Collection[str], limits: tuple[int, int]
) -> list[list[int]]:
    """The batches holding unscored samples, within (token budget, rows). They are planned over the whole
    shard, so a resumed run forms exactly the batches of an uninterrupted one and its floats match."""
    plan = plan_batches([len(s.input_ids) for s in samples], *limits)
    return [batch for batch in plan if any(samples[i].sample_id not in done for i in batch)]


def _all_cached(states: OriginalOutputCache, samples: Sequence[EncodedSample], batches: list[list[int]]) -> bool:
    return all(samples[i].sample_id in states for batch in batches for i in batch)


def _score_missing(
    pool: pd.DataFrame,
    done: Collection[str],
    load_models: ModelLoader,
    options: ScoringOptions,
    states: OriginalOutputCache | None,
    commits: _Commits,
    log: Callable[[str], None],
) -> tuple[int, list[float], PairScorer]:
    """Score the batches holding unscored samples; returns (samples scored from cached original states,
    rounding errors measured, the scorer)."""
    original, pruned, tokenizer = load_models()
    # Fitted once here, so the run's log says it (encode_sample would only warn).
    max_tokens = fit_to_context(tokenizer, options.max_tokens, MAX_TOKENS_SETTING, log)
    samples = [
        encode_sample(tokenizer, row.sample_id, row.instruction, row.input, row.output, max_tokens)
        for row in pool.itertuples(index=False)
    ]
    limits = batch_limits(options.device, pruned, max_tokens, options.token_budget, options.max_batch)
    batches = _batches_to_run(samples, done, limits)
    head = original.get_output_embeddings()
    if states is not None and _all_cached(states, samples, batches):
        log(f"the original's outputs are cached ({states.folder}): only the pruned model runs")
        # Dropped only when no batch needs it: a batch is never scored partly from cached states, so a
        # resumed run gives exactly the floats of an uninterrupted one.
        original = None
    scorer = PairScorer(
        original,
        pruned,
        tokenizer.pad_token_id,
        compile_jsd=options.compile_jsd,
        head_precision=options.head_precision,
        device=options.device,
    )
    log(
        f"scoring on {scorer.device} in {scorer.precision} (heads {scorer.head_precision}), batches of at most "
        f"{limits[0]} tokens and {limits[1]} rows"
    )
    progress = Progress("scoring", sum(len(samples[i].input_ids) for b in batches for i in b), log, unit="tokens")
    from_states = 0
    rounding_errors: list[float] = []
    for number, batch in enumerate(batches):
        # The first batch scored live also measures what rounding the states to float16 costs.
        result = scorer.score_batch([samples[i] for i in batch], states, head, measure_rounding=number == 0)
        rounding_errors.extend(result.rounding_errors)
        from_states += len(batch) if result.used_cache else 0
        commits.add(result, done)
        progress.advance(sum(len(samples[i].input_ids) for i in batch))
        commits.commit_if_due(final=number == len(batches) - 1)
    return from_states, rounding_errors, scorer


class _Commits:
    """New scores and original states waiting to be committed, and the time of the last commit."""

    def __init__(
        self,
        store: ScoreStore,
        key: str,
        states: OriginalOutputCache | None,
        expected: int,
        every_s: float,
        clock: Callable[[], float],
        log: Callable[[str], None],
    ) -> None:
        self.store, self.key, self.states = store, key, states
        self.expected, self.every_s, self.clock, self.log = expected, every_s, clock, log
        self.scores: list[SampleScore] = []
        self.new_states: dict[str, OriginalStates] = {}
        self.committed = 0
        self.last = clock()

    def add(self, result: BatchScores, done: Collection[str]) -> None:
        self.new_states.update(result.states)
        self.scores.extend(score for score in result.scores if score.sample_id not in done)

    def commit_if_due(self, final: bool) -> None:
        if final or self.clock() - self.last >= self.every_s:
            self.commit()

    def commit(self) -> None:
        if self.states is not None:
            self.states.put(self.new_states)  # before the scores: a committed score always has its states
        self.store.append(self.key, self.scores)
        self.committed += len(self.scores)
        self.log(f"{self.committed}/{self.expected} new scores committed")
        self.scores, self.new_states, self.last = [], {}, self.clock()
