"""The evaluation protocols (paser_assets.core.evaluation): perplexity windows, the harness's prompts and
scores, standard errors, the recovery ratio and the macro average."""

from __future__ import annotations

import math

import pytest

from paser_assets.core.evaluation import (
    LENGTH_BAND_NAMES,
    ItemScore,
    TaskScore,
    choice_prompts,
    length_band,
    macro_mean,
    mean_stderr,
    recovery_ratio,
    score_item,
    style_for,
    task_average,
    task_score,
    text_windows,
    weighted_mean,
)


def test_windows_are_non_overlapping_full_length_and_capped() -> None:
    ids = list(range(1000))
    windows = text_windows(ids, 128, 100_000)
    assert [w[0] for w in windows] == [0, 128, 256, 384, 512, 640, 768]  # the last 104 tokens are dropped
    assert all(len(w) == 128 for w in windows)
    assert text_windows(ids, 128, 300) == [ids[:128], ids[128:256]]  # at most 300 tokens: 2 whole windows
    assert text_windows(ids[:100], 128, 1000) == []
    with pytest.raises(ValueError, match="at least 2"):
        text_windows(ids, 1, 1000)


def test_question_and_plain_prompts_follow_the_harness() -> None:
    assert choice_prompts("question", "Why?", ["a", "b"]) == [("Question: Why?\nAnswer:", " a"),
                                                              ("Question: Why?\nAnswer:", " b")]  # fmt: skip
    assert choice_prompts("plain", "A man sits. he", ["runs.", "eats."]) == [
        ("A man sits. he", " runs."),
        ("A man sits. he", " eats."),
    ]


def test_partial_evaluation_fills_the_blank_and_scores_the_same_rest() -> None:
    pairs = choice_prompts("partial", "Sarah helped Maria so _ always got the easy cases.", ["Sarah", "Maria"])
    assert pairs == [
        ("Sarah helped Maria so Sarah", " always got the easy cases."),
        ("Sarah helped Maria so Maria", " always got the easy cases."),
    ]
    with pytest.raises(ValueError, match="blank"):
        choice_prompts("partial", "no blank here", ["a", "b"])


def test_styles_by_task_name() -> None:
    assert style_for("winogrande") == style_for("WinoGrande_xl") == "partial"
    assert style_for("hellaswag") == "plain"
    assert style_for("arc_easy") == style_for("piqa") == style_for("my_quiz") == "question"


def test_acc_takes_the_largest_sum_and_acc_norm_the_largest_per_character() -> None:
    # Choice 0 is likelier in total; per character of its continuation choice 1 is (-10/2 < -12/20).
    item = score_item([-10.0, -12.0], [" a", " a much longer one."], label=1)
    assert (item.choice, item.choice_norm) == (0, 1)
    assert (item.correct, item.correct_norm) == (0.0, 1.0)


def test_task_score_and_its_standard_error() -> None:
    items = [ItemScore(0, 0, 0), ItemScore(0, 1, 0), ItemScore(1, 1, 0), ItemScore(1, 1, 1)]
    score = task_score(items, "question")
    assert score.items == 4 and score.acc == 0.75 and score.acc_norm == 0.75
    assert score.acc_stderr == pytest.approx(0.25)  # correct = [1, 0, 1, 1]: s = 0.5, over sqrt(4)
    partial = task_score(items, "partial")
    assert partial.acc_norm is None and partial.acc_norm_stderr is None
    with pytest.raises(ValueError):
        task_score([], "question")


def test_mean_stderr_is_the_sample_standard_deviation_over_root_n() -> None:
    assert mean_stderr([1.0, 0.0, 1.0, 0.0]) == pytest.approx(math.sqrt(1 / 3) / 2)
    assert math.isnan(mean_stderr([1.0]))


def test_task_average_uses_acc_where_a_task_has_no_acc_norm() -> None:
    scores = {
        "arc": TaskScore(10, 0.4, 0.1, 0.5, 0.1),
        "winogrande": TaskScore(10, 0.6, 0.1, None, None),
    }
    assert task_average(scores) == pytest.approx(0.55)
    assert math.isnan(task_average({}))


def test_recovery_ratio_is_the_share_of_the_gap_closed_whichever_way_better_is() -> None:
    assert recovery_ratio(2.5, pruned=3.0, original=2.0) == pytest.approx(0.5)  # NLL: lower is better
    assert recovery_ratio(0.45, pruned=0.4, original=0.5) == pytest.approx(0.5)  # accuracy: higher is better
    assert recovery_ratio(3.2, pruned=3.0, original=2.0) == pytest.approx(-0.2)  # worse than pruned
    assert math.isnan(recovery_ratio(1.0, pruned=2.0, original=2.0))


def test_macro_mean_weighs_groups_not_rows() -> None:
    values = [1.0, 1.0, 1.0, 1.0, 5.0]
    groups = ["big", "big", "big", "big", "small"]
    assert macro_mean(values, groups) == pytest.approx(3.0)
    assert sum(values) / len(values) == pytest.approx(1.8)
    with pytest.raises(ValueError):
        macro_mean([1.0], [])


def test_a_token_weighted_macro_mean_weighs_each_groups_tokens() -> None:
    # Per-sample mean NLLs and the tokens each is a mean over: a 2-token answer and a 98-token essay.
    values, tokens, groups = [5.0, 1.0, 3.0], [2, 98, 10], ["a", "a", "b"]
    assert weighted_mean(values, tokens) == pytest.approx((5 * 2 + 1 * 98 + 3 * 10) / 110)
    assert macro_mean(values, groups, tokens) == pytest.approx(((5 * 2 + 1 * 98) / 100 + 3.0) / 2)
    assert macro_mean(values, groups) == pytest.approx((3.0 + 3.0) / 2)  # unweighted: the short answer counts as much
    assert math.isnan(weighted_mean([1.0], [0]))
    with pytest.raises(ValueError):
        macro_mean([1.0, 2.0], ["a", "b"], [1])


def test_length_bands_cover_every_length_once() -> None:
    assert LENGTH_BAND_NAMES == ("1-3", "4-12", "13-60", "61+")
    assert [length_band(n) for n in (1, 3, 4, 12, 13, 60, 61, 5000)] == [
        "1-3", "1-3", "4-12", "4-12", "13-60", "13-60", "61+", "61+"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="at least one token"):
        length_band(0)


def test_acc_norm_divides_by_the_choice_without_the_joining_space() -> None:
    """lm-evaluation-harness 0.4 divides by len(choice): the space that joins it to the context does not count.
    Counted, it would turn this item round: -1.5 / 2 > -4.5 / 5, but -1.5 / 1 < -4.5 / 4."""
    from paser_assets.core.evaluation import score_item

    assert score_item([-1.5, -4.5], [" a", " abcd"], label=1).choice_norm == 1
    assert score_item([-1.5, -4.5], ["a", "abcd"], label=1).choice_norm == 1  # no space: the same lengths
