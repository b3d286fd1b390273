"""Individual Efficiency Score: degradation recovered per unit of training cost."""

from __future__ import annotations

import math


def attention_cost(prompt_tokens: int, response_tokens: int) -> int:
    """Quadratic attention cost of a sample: cost = (prompt tokens + response tokens)^2."""
    return (prompt_tokens + response_tokens) ** 2


def individual_efficiency(jsd: float, cost: int) -> float:
    """IES = JSD / log(cost). A sample of one token (cost 1) has no defined efficiency: NaN."""
    if cost <= 1:
        return math.nan
    return jsd / math.log(cost)
