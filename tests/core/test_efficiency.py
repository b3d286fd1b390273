"""Attention cost and IES (paser_assets.core.efficiency)."""

from __future__ import annotations

import math

import pytest

from paser_assets.core.efficiency import attention_cost, individual_efficiency


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
