"""The recovery study's arms, each PASER with one part changed, registered as selection methods.

They reach the product only through its extension point: the entry-point group ``paser_assets.methods``
(``lab/pyproject.toml``), so ``PASER_RECOVERY_METHODS`` names them once ``pip install -e lab/`` has run.
Every arm keeps what it does not change: PASER's sample budget, its per-cluster allocation (CDS unless
PASER_ALLOCATION says otherwise), its conflict tolerance and the IES order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np
import pandas as pd

from paser_assets.core.allocation import allocate_budget, allocation_weights
from paser_assets.core.baselines import top_score_selection
from paser_assets.core.selection import cluster_budgets, paser_select, selected_ids
from paser_assets.methods import Candidates, SelectionMethod
from paser_lab.ablations import (
    budgets_in_unit,
    drift_per_token,
    excess_nll,
    instruction_divergence,
    uniform_selection,
    with_signal,
    within_length_strata,
)


def _walk(frame: pd.DataFrame, budgets: pd.DataFrame, tolerance: float, unit: str = "samples") -> list[str]:
    return selected_ids(paser_select(frame, budgets, tolerance, unit))


def _reallocated(candidates: Candidates, rule: str) -> pd.DataFrame:
    """PASER's sample budget split across the clusters by another allocation ``rule``."""
    budgets, frame = candidates.clusters, candidates.frame
    sizes = frame.groupby("cluster").size().reindex(budgets["cluster"]).fillna(0).astype(int).to_numpy()
    weights = allocation_weights(rule, budgets["cds"].to_numpy(), sizes)
    return budgets.assign(budget=allocate_budget(int(budgets["budget"].sum()), weights, sizes))


def _in_tokens(candidates: Candidates) -> pd.DataFrame:
    return budgets_in_unit(candidates.frame, candidates.clusters, "tokens", candidates.allocation)


def _by_drift_per_token(frame: pd.DataFrame) -> pd.DataFrame:
    scores = [
        drift_per_token(float(j), int(r), int(t))
        for j, r, t in zip(frame["jsd"], frame["response_tokens"], frame["tokens"], strict=True)
    ]
    return frame.assign(score=scores)


def _excess(candidates: Candidates, budget: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The candidates with the excess NLL as their signal, and PASER's allocation of it."""
    frame = candidates.frame
    signal = [excess_nll(p, o) for p, o in zip(frame["pruned_nll"], frame["original_nll"], strict=True)]
    excess = with_signal(frame, signal)
    return excess, cluster_budgets(excess, budget, candidates.allocation)[0]


def _excess_nll_no_cost(candidates: Candidates, budget: int) -> list[str]:
    excess, shares = _excess(candidates, budget)
    return _walk(excess.assign(score=excess["jsd"]), shares, candidates.conflict_tolerance)


def _random_order(candidates: Candidates) -> np.ndarray:
    seed = candidates.seed
    ids = candidates.frame["sample_id"]
    return np.asarray([int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:12], 16) for i in ids], np.float64)


def _instruction_jsd(candidates: Candidates, budget: int) -> list[str]:
    models, frame = candidates.models, candidates.frame
    divergence = instruction_divergence(
        models.original_model(), models.pruned_model(), models.tokenizer(), frame, candidates.max_tokens
    )
    scored = with_signal(frame, frame["sample_id"].map(divergence))
    shares, _ = cluster_budgets(scored, budget, candidates.allocation)
    return _walk(scored, shares, candidates.conflict_tolerance)


Arm = Callable[[Candidates, int], list[str]]


def _arm(name: str, select: Arm, description: str) -> SelectionMethod:
    return SelectionMethod(name, select, description, needs_scores=True)


ARMS = (
    SelectionMethod(
        "uniform",
        lambda c, b: uniform_selection(dict(zip(c.frame["sample_id"], c.frame["cluster"], strict=True)), b, c.seed),
        "B / k rows per cluster, random inside each: the clustering without the CDS.",
    ),
    _arm(
        "top_jsd",
        lambda c, b: top_score_selection(dict(zip(c.frame["sample_id"], c.frame["jsd"], strict=True)), b),
        "The B rows of highest JSD, ignoring clusters, cost and concepts.",
    ),
    _arm("paser_no_concepts", lambda c, b: _walk(c.frame, c.clusters, 1.0), "PASER without the concept filter."),
    _arm(
        "paser_alloc_uniform",
        lambda c, b: _walk(c.frame, _reallocated(c, "uniform"), c.conflict_tolerance),
        "PASER with the budget split evenly across clusters.",
    ),
    _arm(
        "paser_alloc_size",
        lambda c, b: _walk(c.frame, _reallocated(c, "proportional"), c.conflict_tolerance),
        "PASER with the budget split in proportion to cluster size.",
    ),
    _arm(
        "paser_alloc_cds_size",
        lambda c, b: _walk(c.frame, _reallocated(c, "cds_size"), c.conflict_tolerance),
        "PASER with the budget split in proportion to CDS x cluster size.",
    ),
    _arm(
        "paser_order_jsd",
        lambda c, b: _walk(c.frame.assign(score=c.frame["jsd"]), c.clusters, c.conflict_tolerance),
        "PASER with each cluster walked by JSD alone (no cost term).",
    ),
    _arm(
        "paser_order_random",
        lambda c, b: _walk(c.frame.assign(score=_random_order(c)), c.clusters, c.conflict_tolerance),
        "PASER with each cluster walked in a random order.",
    ),
    _arm(
        "paser_tokens",
        lambda c, b: _walk(c.frame, _in_tokens(c), c.conflict_tolerance, "tokens"),
        "PASER under a budget of training tokens: as many as a random selection of B rows has on average.",
    ),
    _arm(
        "paser_tokens_density",
        lambda c, b: _walk(_by_drift_per_token(c.frame), _in_tokens(c), c.conflict_tolerance, "tokens"),
        "The token budget, each cluster walked by drift per training token.",
    ),
    _arm(
        "paser_tokens_strata",
        lambda c, b: _walk(*within_length_strata(c.frame, _in_tokens(c), "tokens"), c.conflict_tolerance, "tokens"),
        "The token budget, each cluster's share split across response-length strata.",
    ),
    _arm(
        "paser_tokens_density_strata",
        lambda c, b: _walk(
            *within_length_strata(_by_drift_per_token(c.frame), _in_tokens(c), "tokens"), c.conflict_tolerance, "tokens"
        ),
        "The token budget in response-length strata, each walked by drift per training token.",
    ),
    _arm(
        "paser_instruction_jsd",
        _instruction_jsd,
        "PASER driven by JSD over the instruction's tokens, the signal of the paper's reference code.",
    ),
    _arm(
        "paser_excess_nll",
        lambda c, b: _walk(*_excess(c, b), c.conflict_tolerance),
        "PASER with the excess NLL (pruned minus original, at least 0) in place of JSD.",
    ),
    _arm(
        "paser_excess_nll_no_cost",
        _excess_nll_no_cost,
        "The excess NLL, each cluster walked by it alone (no cost term).",
    ),
)
