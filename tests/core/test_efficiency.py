"""Attention cost, IES, the drift per token and the rankings (paser_assets.core.efficiency)."""

from __future__ import annotations

import math

import pytest

from paser_assets.core.efficiency import attention_cost, drift_per_token, excess_nll, individual_efficiency


@pytest.mark.parametrize(
    ("prompt", "response", "expected"),
    [(3, 4, 49), (0, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 4), (100, 412, 512**2), (2048, 2048, 4096**2)],
)
def test_attention_cost_is_the_squared_total_length(prompt, response, expected):
    cost = attention_cost(prompt, response)
    assert cost == expected
    assert isinstance(cost, int)


def test_attention_cost_depends_only_on_the_total():
    assert attention_cost(10, 90) == attention_cost(90, 10) == attention_cost(50, 50) == 10_000


@pytest.mark.parametrize(("jsd", "cost"), [(0.5, 49), (0.1, 2), (math.log(2), 10_000), (0.3, 512**2)])
def test_individual_efficiency_is_jsd_over_log_cost(jsd, cost):
    assert individual_efficiency(jsd, cost) == pytest.approx(jsd / math.log(cost), rel=1e-15)


def test_individual_efficiency_examples():
    assert individual_efficiency(0.5, 49) == pytest.approx(0.5 / (2 * math.log(7)))
    assert individual_efficiency(0.0, 100) == 0.0
    # The same divergence is worth less in a longer sample.
    assert individual_efficiency(0.2, attention_cost(10, 10)) > individual_efficiency(0.2, attention_cost(100, 100))
    # ... and more divergence at the same cost is worth more.
    assert individual_efficiency(0.3, 400) > individual_efficiency(0.2, 400)


@pytest.mark.parametrize("cost", [1, 0, -4])
def test_individual_efficiency_is_nan_for_cost_at_most_one(cost):
    assert math.isnan(individual_efficiency(0.4, cost))
    assert math.isnan(individual_efficiency(0.0, cost))


def test_smallest_defined_cost():
    # One prompt token and one response token: cost 4, log 4 > 0.
    value = individual_efficiency(0.25, attention_cost(1, 1))
    assert math.isfinite(value) and value == pytest.approx(0.25 / math.log(4))


def test_drift_per_token_is_the_samples_total_drift_per_training_token() -> None:
    # 0.3 nats over 40 response tokens, 10 prompt tokens: 12 nats of drift for 50 tokens.
    assert drift_per_token(0.3, 40, 50) == pytest.approx(0.24)
    # At equal JSD and length, the sample whose tokens are more response than prompt carries more drift.
    assert drift_per_token(0.2, 45, 50) > drift_per_token(0.2, 5, 50)
    assert math.isnan(drift_per_token(0.2, 0, 0))


def test_excess_nll_is_the_loss_the_pruning_added_and_never_negative() -> None:
    assert excess_nll(2.75, 2.0) == pytest.approx(0.75)
    # The pruned model predicts this response better than the original: nothing to recover.
    assert excess_nll(1.5, 2.0) == 0.0
    assert excess_nll(2.0, 2.0) == 0.0


def test_the_ranking_setting_offers_exactly_the_rankings() -> None:
    """The setting's Literal repeats the ranking names: it must list the same ones, each with a name and a score."""
    import typing

    from paser_assets.core.efficiency import RANKING_NAMES, RANKINGS, walk_score
    from paser_assets.settings import SelectionSettings

    assert typing.get_args(SelectionSettings.model_fields["ranking"].annotation) == RANKINGS
    assert set(RANKING_NAMES) == set(RANKINGS)
    assert walk_score("ies", 0.2, 100, 6, 10) == pytest.approx(0.2 / math.log(100))
    assert walk_score("drift_per_token", 0.2, 100, 6, 10) == pytest.approx(0.2 * 6 / 10)
    with pytest.raises(ValueError, match="unknown ranking"):
        walk_score("longest", 0.2, 100, 6, 10)
