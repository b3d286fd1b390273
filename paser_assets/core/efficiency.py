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


def excess_nll(pruned_nll: float, original_nll: float) -> float:
    """Excess NLL = max(0, NLL_pruned(y | x) - NLL_original(y | x)): the loss on the reference response that the
    pruning added, a sample's reducible loss with the original as the reference model (Mindermann et al., 2022).

    Where JSD measures how far the two models' whole next-token distributions drifted, this measures what the
    drift cost on the text the recovery trains on. A response the pruned model predicts better than the original
    has nothing to recover: 0."""
    return max(0.0, pruned_nll - original_nll)


def drift_per_token(jsd: float, response_tokens: int, tokens: int) -> float:
    """E = JSD x response tokens / training tokens: the drift a sample carries per token it costs to train on.

    JSD is a mean over the response's tokens, so JSD x response tokens is the sample's total drift; under a
    budget in tokens that total per token spent is the knapsack's ratio, where IES is a sample budget's."""
    if tokens <= 0:
        return math.nan
    return jsd * response_tokens / tokens


# The orders a cluster's walk can rank its samples in (the setting PASER_RANKING): the paper's IES, or the drift
# per training token.
RANKINGS = ("ies", "drift_per_token")
RANKING_NAMES = {"ies": "IES", "drift_per_token": "drift per token"}  # as reports and logs name them


def walk_score(ranking: str, jsd: float, cost: int, response_tokens: int, tokens: int) -> float:
    """What a cluster's walk ranks a sample by, highest first: IES = JSD / log(cost) ("ies") or
    JSD x response tokens / training tokens ("drift_per_token")."""
    if ranking == "ies":
        return individual_efficiency(jsd, cost)
    if ranking == "drift_per_token":
        return drift_per_token(jsd, response_tokens, tokens)
    raise ValueError(f"unknown ranking {ranking!r}; choose from {', '.join(RANKINGS)}")
