"""Split a selection budget across clusters in proportion to their capability degradation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def resolve_budget(budget: float, pool_size: int) -> int:
    """A budget given as a count (>= 1) or as a fraction of the pool (0 < budget < 1), as a count.

    A fraction rounds half up, so 0.2 of 437 samples is 87; a count larger than the pool is an error.
    """
    if budget <= 0:
        raise ValueError(f"the budget must be positive, got {budget}")
    if budget < 1:
        return max(1, int(np.floor(budget * pool_size + 0.5 + 1e-9)))  # 1e-9: 0.145 * 100 is 14.4999...
    if budget != int(budget):
        raise ValueError(f"a budget of 1 or more is a count of samples and must be whole, got {budget}")
    if budget > pool_size:
        raise ValueError(f"the budget of {int(budget)} samples exceeds the {pool_size} selectable samples")
    return int(budget)


def largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integer parts of ``total`` proportional to ``weights`` that sum to ``total`` exactly.

    Each part gets floor(total * w_i / sum w); the leftover units go to the largest fractional
    remainders, ties broken by larger weight, then by lower index.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if total == 0 or len(weights) == 0:
        return np.zeros(len(weights), dtype=np.int64)
    quotas = total * weights / weights.sum()
    parts = np.floor(quotas + 1e-9).astype(np.int64)  # 1e-9 keeps exact quotas such as 3.0 from flooring to 2
    leftover = total - int(parts.sum())
    remainders = quotas - parts
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], -weights[i], i))
    for index in order[:leftover]:
        parts[index] += 1
    return parts


def allocate_budget(budget: int, degradation: Sequence[float], capacity: Sequence[int]) -> np.ndarray:
    """Budget per cluster: n_c proportional to CDS_c, n_c <= |C_c|, sum n_c = B.

    Clusters whose proportional share exceeds their size get their size; the rest of the budget is
    split again among the others in proportion to CDS, until no share exceeds its cluster. When the
    remaining clusters all have CDS 0, the rest is split in proportion to their sizes.
    """
    degradation = np.asarray(degradation, dtype=np.float64)
    capacity = np.asarray(capacity, dtype=np.int64)
    if degradation.shape != capacity.shape:
        raise ValueError("degradation and capacity need one entry per cluster")
    if np.any(degradation < 0) or not np.all(np.isfinite(degradation)):
        raise ValueError("capability degradation scores must be finite and non-negative")
    if np.any(capacity < 0):
        raise ValueError("cluster capacities must be non-negative")
    if budget < 0 or budget > capacity.sum():
        raise ValueError(f"the budget {budget} must lie between 0 and the {int(capacity.sum())} available samples")
    allocation = np.zeros(len(capacity), dtype=np.int64)
    active = capacity > 0
    remaining = budget
    while remaining > 0:
        weights = np.where(active, degradation, 0.0)
        if weights.sum() <= 0:
            weights = np.where(active, capacity - allocation, 0).astype(np.float64)
        share = remaining * weights / weights.sum()
        room = capacity - allocation
        saturated = active & (share >= room)
        if saturated.any():
            allocation[saturated] = capacity[saturated]
            remaining = budget - int(allocation.sum())
            active &= ~saturated
            continue
        allocation += largest_remainder(remaining, weights)
        remaining = 0
    return allocation


# The allocation rules of allocation_weights, in the order the settings document them.
ALLOCATION_RULES = ("cds", "cds_size", "proportional", "uniform")


def allocation_weights(rule: str, degradation: Sequence[float], sizes: Sequence[int]) -> np.ndarray:
    """The weight w_c that n_c is proportional to: CDS_c ("cds", the paper), CDS_c x |C_c| ("cds_size"),
    |C_c| ("proportional") or 1 ("uniform")."""
    degradation = np.asarray(degradation, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    if rule == "cds":
        return degradation
    if rule == "cds_size":
        return degradation * sizes
    if rule == "proportional":
        return sizes
    if rule == "uniform":
        return np.ones_like(sizes)
    raise ValueError(f"unknown allocation rule {rule!r}; choose from {', '.join(ALLOCATION_RULES)}")
