"""Baseline selection methods (paser_assets.core.baselines): seeded order, random,
top score and instruction-following difficulty (IFD)."""

from __future__ import annotations

import math
import random

import pytest

from paser_assets.core.baselines import (
    ifd_selection,
    instruction_following_difficulty,
    random_selection,
    seeded_order,
    top_score_selection,
)

IDS = [f"s{i:03d}" for i in range(50)]


# -- seeded_order


def test_seeded_order_is_a_deterministic_permutation() -> None:
    order = seeded_order(IDS, seed=7)
    assert order == seeded_order(IDS, seed=7)
    assert sorted(order) == IDS
    assert order != IDS  # 50 ids in their sorted order by chance: probability 1/50!


def test_seeded_order_depends_on_the_seed() -> None:
    assert seeded_order(IDS, seed=0) != seeded_order(IDS, seed=1)


def test_seeded_order_ignores_the_input_order() -> None:
    shuffled = IDS.copy()
    random.Random(3).shuffle(shuffled)
    assert seeded_order(shuffled, seed=5) == seeded_order(IDS, seed=5) == seeded_order(IDS[::-1], seed=5)


def test_seeded_order_of_a_subset_keeps_the_relative_order() -> None:
    # The order depends only on each id's own hash: dropping ids does not reorder the others.
    full = seeded_order(IDS, seed=2)
    subset = set(IDS[::3])
    assert seeded_order(sorted(subset), seed=2) == [s for s in full if s in subset]


# -- random_selection


@pytest.mark.parametrize("budget", [0, 1, 17, 50])
def test_random_selection_has_the_budget_and_no_repeat(budget: int) -> None:
    chosen = random_selection(IDS, budget, seed=4)
    assert len(chosen) == budget
    assert len(set(chosen)) == budget
    assert set(chosen) <= set(IDS)


def test_random_selection_is_seeded_and_nested() -> None:
    assert random_selection(IDS, 10, seed=4) == random_selection(list(reversed(IDS)), 10, seed=4)
    assert random_selection(IDS, 10, seed=4) != random_selection(IDS, 10, seed=5)
    assert random_selection(IDS, 20, seed=4)[:10] == random_selection(IDS, 10, seed=4)


def test_random_selection_over_the_pool_size_takes_everything() -> None:
    assert sorted(random_selection(IDS, 80, seed=0)) == IDS


# -- top_score_selection


def test_top_score_selection_takes_the_highest_first_ties_by_id() -> None:
    scores = {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.9, "e": -1.0}
    assert top_score_selection(scores, 3) == ["b", "d", "c"]
    assert top_score_selection(scores, 10) == ["b", "d", "c", "a", "e"]


def test_top_score_selection_puts_nan_last() -> None:
    scores = {"a": math.nan, "b": -5.0, "c": 0.0, "d": math.nan}
    assert top_score_selection(scores, 4) == ["c", "b", "a", "d"]
    assert top_score_selection(scores, 2) == ["c", "b"]  # a NaN score is never preferred to a real one


# -- instruction-following difficulty


def test_ifd_is_conditioned_over_unconditioned_nll() -> None:
    assert instruction_following_difficulty(1.5, 3.0) == pytest.approx(0.5)
    assert instruction_following_difficulty(4.0, 2.0) == pytest.approx(2.0)
    assert instruction_following_difficulty(0.0, 2.0) == 0.0


@pytest.mark.parametrize("denominator", [0.0, -1.0, math.nan])
def test_ifd_is_nan_for_a_non_positive_denominator(denominator: float) -> None:
    assert math.isnan(instruction_following_difficulty(1.0, denominator))


def test_ifd_selection_prefers_the_highest_ifd_below_one() -> None:
    ifd = {"a": 0.9, "b": 0.5, "c": 1.2, "d": 1.0, "e": 3.0, "f": 0.95}
    assert ifd_selection(ifd, 2) == ["f", "a"]
    assert ifd_selection(ifd, 3) == ["f", "a", "b"]  # every IFD < 1, none >= 1 although they score higher


def test_ifd_selection_fills_with_the_lowest_ifd_at_least_one_only_when_needed() -> None:
    ifd = {"a": 0.9, "b": 0.5, "c": 1.2, "d": 1.0, "e": 3.0, "f": math.nan}
    assert ifd_selection(ifd, 4) == ["a", "b", "d", "c"]
    assert ifd_selection(ifd, 6) == ["a", "b", "d", "c", "e", "f"]  # NaN (no usable IFD) comes last
    assert ifd_selection(ifd, 10) == ["a", "b", "d", "c", "e", "f"]


def test_token_matched_selection_stops_closest_to_the_target() -> None:
    from paser_assets.core.baselines import token_matched_selection

    tokens = {f"s{i}": 10 + i for i in range(50)}
    chosen = token_matched_selection(tokens, 200, seed=3)
    total = sum(tokens[s] for s in chosen)
    assert abs(total - 200) <= max(tokens.values()) / 2 + 1
    assert chosen == seeded_order(list(tokens), 3)[: len(chosen)]  # the random order, cut by tokens
    assert token_matched_selection(tokens, 10**6, seed=3) == seeded_order(list(tokens), 3)  # all of it


def test_longest_selection_takes_the_longest_responses() -> None:
    from paser_assets.core.baselines import longest_selection

    assert longest_selection({"a": 5, "b": 50, "c": 20, "d": 50}, 3) == ["b", "d", "c"]
