"""The resumable scoring loop (paser_assets.models.score_run) without Dagster: the sharpened tiny Llama pair, an
in-memory score store, a fake clock; and the DuckDB score store that degradation_scores uses, on a real file."""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from tiny_models import SHORT_CONTEXT

from paser_assets.assets.scores import DuckDBScoreStore
from paser_assets.models.checkpoints import LoadOptions, parse_model_reference
from paser_assets.models.original_cache import OriginalOutputCache
from paser_assets.models.score_run import ScoreRunFacts, ScoringOptions, score_shard
from paser_assets.models.scoring import SampleScore
from paser_assets.models.store import ModelStore, load_pair
from paser_assets.pool.demo import generate_demo_pool
from paser_assets.resources import PaserDuckDB
from paser_assets.tables import TABLES

POOL = pd.DataFrame(
    [
        {"sample_id": f"s{i:02d}", "instruction": row["instruction"], "input": row["input"], "output": row["output"]}
        for i, row in enumerate(generate_demo_pool(16, seed=4))
    ]
)
KEY = "test-recipe|original=a|pruned=b"
# Eight batches of two samples; a commit after every batch.
OPTIONS = ScoringOptions(
    max_tokens=256,
    token_budget=8192,
    max_batch=2,
    compile_jsd=None,
    head_precision="auto",
    commit_every_s=0.0,
    device="cpu",
)
BATCHES = 8
ROUNDING = 3e-5  # as in test_scoring: float16 rounding of the final hidden states, with the sharpened head


class StoreFailure(RuntimeError):
    """A commit that did not happen (the process died in it)."""


class MemoryScoreStore:
    """A ScoreStore in memory that records the sample ids of each append; append number ``fail_at`` raises."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.scores: dict[str, list[SampleScore]] = {}
        self.appends: list[list[str]] = []
        self.fail_at = fail_at

    def read(self, key: str, sample_ids: Collection[str] | None = None) -> pd.DataFrame:
        rows = [
            dataclasses.astuple(score)
            for score in self.scores.get(key, [])
            if sample_ids is None or score.sample_id in sample_ids
        ]
        return pd.DataFrame(rows, columns=[field.name for field in dataclasses.fields(SampleScore)])

    def append(self, key: str, scores: Sequence[SampleScore]) -> None:
        if len(self.appends) + 1 == self.fail_at:
            raise StoreFailure(f"append {self.fail_at} failed")
        self.appends.append([score.sample_id for score in scores])
        self.scores.setdefault(key, []).extend(scores)


class Loader:
    """The models of a run, and how many times the run asked for them."""

    def __init__(self, original: Any, pruned: Any, tokenizer: Any) -> None:
        self.models = (original, pruned, tokenizer)
        self.calls = 0

    def __call__(self) -> tuple[Any, Any, Any]:
        self.calls += 1
        return self.models


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass(frozen=True)
class Run:
    scores: pd.DataFrame
    facts: ScoreRunFacts
    store: MemoryScoreStore


@pytest.fixture
def loader(sharp_pair: tuple[Any, Any], tokenizer: Any) -> Loader:
    return Loader(*sharp_pair, tokenizer)


@pytest.fixture(scope="module")
def uninterrupted(sharp_pair: tuple[Any, Any], tokenizer: Any) -> Run:
    """A full run into an empty store, without the original-output cache."""
    store = MemoryScoreStore()
    scores, facts = score_shard(POOL, KEY, store, Loader(*sharp_pair, tokenizer), OPTIONS)
    return Run(scores, facts, store)


def _refuse_to_run(module: Any, args: Any) -> None:
    raise AssertionError("the original model ran")


def test_a_full_run_stores_every_score_and_a_second_run_loads_no_model(uninterrupted: Run, loader: Loader) -> None:
    scores, facts, store = uninterrupted.scores, uninterrupted.facts, uninterrupted.store
    assert scores["sample_id"].tolist() == POOL["sample_id"].tolist()
    assert scores.notna().all().all() and (scores["jsd"] > 1e-3).all()
    assert sorted(store.read(KEY)["sample_id"]) == sorted(POOL["sample_id"])
    assert len(store.appends) == BATCHES and all(len(batch) == 2 for batch in store.appends)
    assert (facts.scored_now, facts.reused, facts.scored_from_cached_original_outputs) == (16, 0, 0)
    assert facts.head_precision == "float32" and facts.cache_folder is None
    assert facts.rounding_error is not None and facts.rounding_error.samples == 2  # the first batch
    assert facts.rounding_error.max < ROUNDING

    again, again_facts = score_shard(POOL, KEY, store, loader, OPTIONS)
    assert loader.calls == 0
    assert again_facts == ScoreRunFacts(scored_now=0, reused=16)
    assert again_facts.metadata()["output_head_precision"] == "none (nothing scored in this run)"
    assert len(store.appends) == BATCHES
    pd.testing.assert_frame_equal(again, scores, check_exact=True)


@pytest.mark.parametrize("with_states", [False, True], ids=["no-cache", "original-output-cache"])
def test_a_run_interrupted_in_a_commit_resumes_to_the_scores_of_an_uninterrupted_run(
    uninterrupted: Run, loader: Loader, with_states: bool, tmp_path: Path
) -> None:
    states = OriginalOutputCache(tmp_path, "states") if with_states else None
    store = MemoryScoreStore(fail_at=2)
    with pytest.raises(StoreFailure):
        score_shard(POOL, KEY, store, loader, OPTIONS, states)
    assert store.appends == uninterrupted.store.appends[:1]
    if states is not None:
        # The second batch's states were written before its scores failed to commit.
        assert len(states) == 4

    store.fail_at = None
    resumed, facts = score_shard(POOL, KEY, store, loader, OPTIONS, states)
    assert (facts.scored_now, facts.reused) == (14, 2)
    # Some unscored samples have no cached state, so every batch is scored live, none partly from the cache.
    assert facts.scored_from_cached_original_outputs == 0
    assert store.appends == uninterrupted.store.appends  # the batches of the uninterrupted run
    pd.testing.assert_frame_equal(resumed, uninterrupted.scores, check_exact=True)


def test_batches_are_planned_over_the_whole_shard_whatever_is_stored(uninterrupted: Run, loader: Loader) -> None:
    """One sample of a batch is stored already (by a run over an older pool, say): its batch still runs with
    the same rows, so every new score is the uninterrupted run's, to the bit."""
    batches = uninterrupted.store.appends
    stored_id = batches[3][1]
    row = uninterrupted.scores.set_index("sample_id").loc[stored_id]
    store = MemoryScoreStore()
    store.append(KEY, [SampleScore(stored_id, *row.tolist())])
    scores, facts = score_shard(POOL, KEY, store, loader, OPTIONS)
    assert (facts.scored_now, facts.reused) == (15, 1)
    assert store.appends[1:] == [[i for i in batch if i != stored_id] for batch in batches]
    pd.testing.assert_frame_equal(scores, uninterrupted.scores, check_exact=True)


def test_with_every_original_state_cached_the_original_model_does_not_run(
    uninterrupted: Run, sharp_pair: tuple[Any, Any], tokenizer: Any, tmp_path: Path
) -> None:
    original, pruned = sharp_pair
    filling = OriginalOutputCache(tmp_path, "s")
    score_shard(POOL, KEY, MemoryScoreStore(), Loader(original, pruned, tokenizer), OPTIONS, filling)
    assert len(filling) == len(POOL)
    messages: list[str] = []
    hook = original.get_decoder().register_forward_pre_hook(_refuse_to_run)
    try:
        states = OriginalOutputCache(tmp_path, "s")
        scores, facts = score_shard(
            POOL, KEY, MemoryScoreStore(), Loader(original, pruned, tokenizer), OPTIONS, states, messages.append
        )
    finally:
        hook.remove()
    assert any("only the pruned model runs" in message for message in messages)
    assert facts.scored_from_cached_original_outputs == 16 and facts.scored_now == 16
    assert facts.rounding_error is None and facts.cache_folder == tmp_path / "s"
    expected = uninterrupted.scores
    assert scores["sample_id"].tolist() == expected["sample_id"].tolist()
    np.testing.assert_allclose(scores["jsd"], expected["jsd"], rtol=0, atol=ROUNDING)
    np.testing.assert_allclose(scores["original_nll"], expected["original_nll"], rtol=0, atol=1e-3)
    np.testing.assert_allclose(scores["pruned_nll"], expected["pruned_nll"], rtol=0, atol=1e-3)
    columns = ["prompt_tokens", "response_tokens", "truncated"]
    pd.testing.assert_frame_equal(scores[columns], expected[columns])


@pytest.fixture
def clock(sharp_pair: tuple[Any, Any]) -> Iterator[FakeClock]:
    """A clock that moves 4 s on each pass of the pruned model, that is on each batch."""
    clock = FakeClock()

    def tick(module: Any, args: Any) -> None:
        clock.now += 4.0

    hook = sharp_pair[1].get_decoder().register_forward_pre_hook(tick)
    yield clock
    hook.remove()


@pytest.mark.parametrize(
    ("every_s", "commits"),
    [
        (10.0, [(0, 3), (3, 6), (6, 8)]),  # 12 s after batches 3 and 6; the last two at the end
        (4.0, [(i, i + 1) for i in range(BATCHES)]),
        (1000.0, [(0, BATCHES)]),  # once, at the end
    ],
)
def test_scores_are_committed_when_the_interval_has_passed_and_at_the_end(
    uninterrupted: Run, loader: Loader, clock: FakeClock, every_s: float, commits: list[tuple[int, int]]
) -> None:
    batches = uninterrupted.store.appends
    store = MemoryScoreStore()
    options = dataclasses.replace(OPTIONS, commit_every_s=every_s)
    scores, _ = score_shard(POOL, KEY, store, loader, options, clock=clock)
    assert clock.now == 4.0 * BATCHES
    assert store.appends == [list(itertools.chain(*batches[start:end])) for start, end in commits]
    pd.testing.assert_frame_equal(scores, uninterrupted.scores, check_exact=True)


def test_the_duckdb_score_store_round_trips_rows(tmp_path: Path) -> None:
    database = PaserDuckDB(database=str(tmp_path / "paser.duckdb"))
    store = DuckDBScoreStore(database)
    assert store.read("a").empty and store.read("a", ["x"]).empty
    first = [SampleScore("x", 0.125, 1.5, 2.25, 10, 5, False), SampleScore("y", 1 / 3, 0.1, 0.7, 300, 212, True)]
    later = [SampleScore("z", 0.0, 3.0, 3.0, 1, 1, False)]
    other_key = [SampleScore("x", 0.5, 1.0, 2.0, 10, 5, False)]
    store.append("a", first)
    store.append("a", later)
    store.append("b", other_key)

    def read(key: str, sample_ids: Collection[str] | None = None) -> list[SampleScore]:
        frame = store.read(key, sample_ids)
        assert list(frame.columns) == [field.name for field in dataclasses.fields(SampleScore)]
        rows = [SampleScore(*row) for row in frame.sort_values("sample_id").itertuples(index=False)]
        assert all(type(row.truncated) in (bool, np.bool_) for row in rows)
        return rows

    assert read("a") == first + later
    assert read("a", ["y", "missing"]) == first[1:]
    assert read("a", []) == []
    assert read("b") == other_key
    assert read("c") == []
    with duckdb.connect(database.database, read_only=True) as conn:
        columns = [row[0] for row in conn.execute("DESCRIBE paser.paser.score_cache").fetchall()]
        keys = conn.execute("SELECT scoring_key, count(*) FROM paser.paser.score_cache GROUP BY ALL ORDER BY 1")
        assert keys.fetchall() == [("a", 3), ("b", 1)]
    assert columns == list(TABLES["score_cache"].columns)


def test_the_loader_places_both_models_and_the_facts_say_where(tiny_llama_dir: Path, tmp_path: Path) -> None:
    import torch

    from paser_assets.models.checkpoints import LoadOptions, parse_model_reference
    from paser_assets.models.device import Placement
    from paser_assets.models.store import ModelStore, load_pair

    store = ModelStore(str(tiny_llama_dir), tmp_path / "cache", LoadOptions())
    placed: list[Any] = []

    def load() -> tuple[Any, Any, Any]:
        original, pruned, tokenizer = load_pair(
            store, parse_model_reference(str(tiny_llama_dir)), Placement(torch.device("cpu"), "bfloat16")
        )
        placed.extend([original, pruned])
        return original, pruned, tokenizer

    options = dataclasses.replace(OPTIONS, token_budget=None, max_batch=None, device="cpu")
    scores, facts = score_shard(POOL, KEY, MemoryScoreStore(), load, options)
    assert [{p.dtype for p in model.parameters()} for model in placed] == [{torch.bfloat16}] * 2
    assert (facts.precision, facts.device, facts.head_precision) == ("bfloat16", "cpu", "float32")
    assert facts.metadata()["device"] == "cpu"
    assert (scores["jsd"] == 0.0).all() and len(scores) == len(POOL)  # the same checkpoint twice


def test_max_tokens_above_the_pruned_models_context_scores_within_it(
    short_context_dir: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """The original (1024 positions) and a pruned model of SHORT_CONTEXT positions read the same ids: every
    sequence fits the smaller context, and the run's log names the setting and the limit. (Without the cut,
    the GPT-2 raised an IndexError and the Llama scored positions it was never trained on.)"""
    store = ModelStore(original_model=str(tiny_llama_dir), cache_dir=tmp_path / "cache", options=LoadOptions())
    loader = functools.partial(load_pair, store, parse_model_reference(str(short_context_dir)))
    options = dataclasses.replace(OPTIONS, max_tokens=512)
    log: list[str] = []
    scores, facts = score_shard(POOL, KEY, MemoryScoreStore(), loader, options, log=log.append)
    assert facts.scored_now == len(POOL)
    lengths = scores["prompt_tokens"] + scores["response_tokens"]
    assert lengths.max() == SHORT_CONTEXT and scores["truncated"].any()  # none is longer
    assert scores["jsd"].notna().all()
    assert any(
        f"PASER_MAX_TOKENS=512 is more than the model's context of {SHORT_CONTEXT} tokens" in line for line in log
    )
