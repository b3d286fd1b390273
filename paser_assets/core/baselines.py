"""Baseline selection methods at the same budget, to compare recovery against PASER's selection.

Each returns the selected sample ids in selection order. PASER itself and "PASER without the concept
filter" (tolerance 1) come from :func:`paser_assets.core.consistency.select`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np


def seeded_order(sample_ids: Sequence[str], seed: int) -> list[str]:
    """A random order that depends only on the seed and the ids (not on row order): sort by sha256(seed:id)."""
    return sorted(sample_ids, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())


def random_selection(sample_ids: Sequence[str], budget: int, seed: int) -> list[str]:
    """B samples drawn uniformly without replacement."""
    return seeded_order(sample_ids, seed)[:budget]


def top_score_selection(scores: Mapping[str, float], budget: int) -> list[str]:
    """The B samples with the highest score (ties by sample_id); NaN scores come last."""
    return sorted(scores, key=lambda s: (np.isnan(scores[s]), -np.nan_to_num(scores[s], nan=0.0), s))[:budget]


def instruction_following_difficulty(conditioned_nll: float, unconditioned_nll: float) -> float:
    """IFD = s(A | Q) / s(A): the response's mean NLL given the instruction over its NLL alone (Li et al., 2024)."""
    if not unconditioned_nll > 0:
        return float("nan")
    return conditioned_nll / unconditioned_nll


def ifd_selection(ifd: Mapping[str, float], budget: int) -> list[str]:
    """The B samples with the highest IFD below 1; as in Li et al. (2024), IFD >= 1 (the instruction does not
    help at all) is taken only when too few samples are left."""
    useful = {s: v for s, v in ifd.items() if v < 1}
    chosen = top_score_selection(useful, budget)
    if len(chosen) < budget:
        rest = {s: v for s, v in ifd.items() if s not in useful}
        chosen += top_score_selection({s: -v for s, v in rest.items()}, budget - len(chosen))
    return chosen


def token_matched_selection(tokens: Mapping[str, int], target: int, seed: int) -> list[str]:
    """Random samples (the seeded order of :func:`random_selection`) until their tokens reach ``target``:
    the last one is kept only if it brings the total closer to the target."""
    chosen: list[str] = []
    total = 0
    for sample_id in seeded_order(list(tokens), seed):
        if total >= target:
            break
        if abs(total + tokens[sample_id] - target) > abs(total - target) and chosen:
            break
        chosen.append(sample_id)
        total += tokens[sample_id]
    return chosen


def longest_selection(response_tokens: Mapping[str, int], budget: int) -> list[str]:
    """The B samples with the longest responses, in tokens (ties by sample_id) (Zhao et al., 2024)."""
    return sorted(response_tokens, key=lambda s: (-response_tokens[s], s))[:budget]
