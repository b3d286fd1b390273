"""Budget resolution and CDS-proportional allocation across clusters (paser_assets.core.allocation)."""

from __future__ import annotations

import numpy as np
import pytest

from paser_assets.core.allocation import (
    allocate_budget,
    largest_remainder,
    resolve_budget,
)

# -- resolve_budget


@pytest.mark.parametrize(
    ("budget", "pool_size", "expected"),
    [
        (0.2, 437, 87),  # 87.4 rounds down
        (0.5, 437, 219),  # 218.5 rounds half up
        (0.5, 5, 3),  # 2.5 rounds half up
        (0.25, 10, 3),  # 2.5 rounds half up
        (0.3, 10, 3),  # 3.0000000000000004 is 3
        (0.7, 10, 7),
        (0.999, 10, 10),
        (0.001, 10, 1),  # never zero samples
        (0.04, 10, 1),  # 0.4 would round to 0: at least one
    ],
)
def test_resolve_budget_fraction(budget, pool_size, expected):
    result = resolve_budget(budget, pool_size)
    assert result == expected
    assert isinstance(result, int)


@pytest.mark.parametrize(("budget", "pool_size"), [(1, 10), (5, 10), (5.0, 10), (10, 10), (10.0, 10), (1, 1)])
def test_resolve_budget_count(budget, pool_size):
    result = resolve_budget(budget, pool_size)
    assert result == int(budget)
    assert isinstance(result, int)


@pytest.mark.parametrize("budget", [0, 0.0, -1, -0.5, -100])
def test_resolve_budget_rejects_non_positive(budget):
    with pytest.raises(ValueError, match="must be positive"):
        resolve_budget(budget, 100)


@pytest.mark.parametrize("budget", [1.5, 2.25, 99.9])
def test_resolve_budget_rejects_fractional_counts(budget):
    with pytest.raises(ValueError, match="must be whole"):
        resolve_budget(budget, 100)


@pytest.mark.parametrize(("budget", "pool_size"), [(11, 10), (11.0, 10), (2, 1), (1000, 437)])
def test_resolve_budget_rejects_counts_over_the_pool(budget, pool_size):
    with pytest.raises(ValueError, match="exceeds"):
        resolve_budget(budget, pool_size)


# -- largest_remainder


def test_largest_remainder_exact_quotas():
    assert largest_remainder(6, np.array([1.0, 2.0, 3.0])).tolist() == [1, 2, 3]
    # 3 * 0.1 / 0.3 is 0.9999999999999998 in floating point: still one each.
    assert largest_remainder(3, np.array([0.1, 0.1, 0.1])).tolist() == [1, 1, 1]
    assert largest_remainder(30, np.array([0.1, 0.2, 0.3, 0.4])).tolist() == [3, 6, 9, 12]


def test_largest_remainder_gives_leftovers_to_largest_remainders():
    # quotas 10 * [0.15, 0.25, 0.6] = [1.5, 2.5, 6.0]: floors [1, 2, 6], one unit left for a .5 tie.
    assert largest_remainder(10, np.array([0.15, 0.25, 0.6])).tolist() == [1, 3, 6]
    # quotas [2.8, 1.4, 5.8]: floors [2, 1, 5], two left for remainders .8 and .8.
    assert largest_remainder(10, np.array([2.8, 1.4, 5.8])).tolist() == [3, 1, 6]


def test_largest_remainder_ties_by_weight_then_index():
    # Equal remainders (.5 each): the larger weight wins.
    assert largest_remainder(2, np.array([1.0, 3.0])).tolist() == [0, 2]
    assert largest_remainder(2, np.array([3.0, 1.0])).tolist() == [2, 0]
    # Equal remainders and weights: the lower index wins.
    assert largest_remainder(1, np.array([1.0, 1.0, 1.0])).tolist() == [1, 0, 0]
    assert largest_remainder(2, np.array([1.0, 1.0, 1.0])).tolist() == [1, 1, 0]
    assert largest_remainder(5, np.ones(4)).tolist() == [2, 1, 1, 1]


def test_largest_remainder_zero_weights_get_nothing():
    assert largest_remainder(7, np.array([0.0, 2.0, 0.0, 5.0])).tolist() == [0, 2, 0, 5]


def test_largest_remainder_degenerate_inputs():
    assert largest_remainder(0, np.array([1.0, 2.0])).tolist() == [0, 0]
    assert largest_remainder(5, np.array([])).tolist() == []
    assert largest_remainder(9, np.array([4.0])).tolist() == [9]


def test_largest_remainder_random_sums_and_proportionality():
    rng = np.random.default_rng(0)
    for _ in range(200):
        size = int(rng.integers(1, 20))
        weights = rng.exponential(size=size) * (rng.random(size) > 0.2)
        if weights.sum() == 0:
            weights[0] = 1.0
        total = int(rng.integers(0, 500))
        parts = largest_remainder(total, weights)
        assert parts.dtype == np.int64
        assert parts.sum() == total
        quotas = total * weights / weights.sum()
        # Every part is its quota rounded down or up.
        assert np.all(np.abs(parts - quotas) < 1.0)
        assert np.all(parts[weights == 0] == 0)
        assert np.array_equal(parts, largest_remainder(total, weights.copy()))


# -- allocate_budget


def test_allocate_proportional_when_nothing_is_capped():
    allocation = allocate_budget(60, [1.0, 2.0, 3.0], [100, 100, 100])
    assert allocation.tolist() == [10, 20, 30]
    assert allocation.dtype == np.int64


def test_allocate_caps_a_tiny_high_degradation_cluster_and_redistributes():
    # Cluster 0 would get 85 * 10/14 = 60 but holds 5; the remaining 80 go 1:3 to the others.
    allocation = allocate_budget(85, [10.0, 1.0, 3.0], [5, 1000, 1000])
    assert allocation.tolist() == [5, 20, 60]
    assert allocation.sum() == 85


def test_allocate_capping_cascades():
    # Capping cluster 0 raises cluster 1's share above its size, which is then capped too.
    allocation = allocate_budget(100, [50.0, 30.0, 10.0, 10.0], [10, 40, 1000, 1000])
    assert allocation.tolist() == [10, 40, 25, 25]


def test_allocate_ties():
    assert allocate_budget(10, [1.0, 1.0, 1.0], [10, 10, 10]).tolist() == [4, 3, 3]
    # quotas [5.5, 2.75, 2.75]: the two leftover units go to the .75 remainders
    assert allocate_budget(11, [2.0, 1.0, 1.0], [10, 10, 10]).tolist() == [5, 3, 3]
    assert allocate_budget(95, [10.0, 1.0, 1.0], [5, 200, 200]).tolist() == [5, 45, 45]
    assert allocate_budget(96, [10.0, 1.0, 1.0], [5, 200, 200]).tolist() == [5, 46, 45]


def test_allocate_zero_degradation_clusters_get_nothing_while_others_have_room():
    assert allocate_budget(30, [0.0, 1.0, 2.0], [50, 50, 50]).tolist() == [0, 10, 20]
    assert allocate_budget(100, [0.0, 1.0, 1.0], [500, 50, 50]).tolist() == [0, 50, 50]


def test_allocate_zero_degradation_clusters_take_the_rest_by_size_once_others_are_full():
    # Clusters 1 and 2 are exhausted (100 samples); the remaining 20 go to the zero-CDS cluster.
    assert allocate_budget(120, [0.0, 1.0, 2.0], [50, 50, 50]).tolist() == [20, 50, 50]
    # Two zero-CDS clusters share the rest 10:30 by their sizes.
    assert allocate_budget(25, [0.0, 0.0, 5.0], [10, 30, 5]).tolist() == [5, 15, 5]


def test_allocate_all_zero_degradation_splits_by_size():
    assert allocate_budget(50, [0.0, 0.0, 0.0], [10, 20, 70]).tolist() == [5, 10, 35]
    assert allocate_budget(2, [0.0, 0.0], [1, 1]).tolist() == [1, 1]


def test_allocate_capacity_zero_clusters_get_nothing():
    assert allocate_budget(10, [5.0, 1.0, 1.0], [0, 10, 10]).tolist() == [0, 5, 5]
    assert allocate_budget(10, [0.0, 1.0, 0.0], [0, 10, 0]).tolist() == [0, 10, 0]
    assert allocate_budget(4, [0.0, 0.0, 0.0], [0, 4, 0]).tolist() == [0, 4, 0]


def test_allocate_budget_equal_to_total_capacity_takes_everything():
    capacity = [3, 0, 17, 8, 1]
    allocation = allocate_budget(29, [0.5, 9.0, 0.0, 2.0, 0.1], capacity)
    assert allocation.tolist() == capacity


def test_allocate_budget_zero():
    assert allocate_budget(0, [1.0, 2.0], [5, 5]).tolist() == [0, 0]
    assert allocate_budget(0, [], []).tolist() == []


def test_allocate_accepts_numpy_inputs_and_does_not_modify_them():
    degradation = np.array([3.0, 1.0, 0.0])
    capacity = np.array([2, 10, 10])
    allocate_budget(8, degradation, capacity)
    assert degradation.tolist() == [3.0, 1.0, 0.0] and capacity.tolist() == [2, 10, 10]


@pytest.mark.parametrize(
    ("budget", "degradation", "capacity", "message"),
    [
        (5, [1.0, 2.0], [5], "one entry per cluster"),
        (5, [1.0, -0.1], [5, 5], "non-negative"),
        (5, [1.0, float("nan")], [5, 5], "finite"),
        (5, [1.0, float("inf")], [5, 5], "finite"),
        (5, [1.0, 1.0], [5, -1], "capacities must be non-negative"),
        (-1, [1.0, 1.0], [5, 5], "between 0 and"),
        (11, [1.0, 1.0], [5, 5], "between 0 and"),
        (1, [], [], "between 0 and"),
    ],
)
def test_allocate_validates_inputs(budget, degradation, capacity, message):
    with pytest.raises(ValueError, match=message):
        allocate_budget(budget, degradation, capacity)


def test_allocate_random_properties():
    """Seeded random cases: exact sum, within capacity, monotone in CDS, zero CDS last."""
    rng = np.random.default_rng(20250218)
    for case in range(300):
        clusters = int(rng.integers(1, 16))
        capacity = rng.integers(0, 60, size=clusters) * (rng.random(clusters) > 0.1)
        if capacity.sum() == 0:
            capacity[int(rng.integers(clusters))] = int(rng.integers(1, 60))
        degradation = rng.exponential(size=clusters) * (rng.random(clusters) > 0.25)
        if case % 7 == 0:
            degradation = np.round(degradation, 1)  # many exact ties
        total = int(capacity.sum())
        budget = int(rng.integers(0, total + 1)) if case % 10 else total
        allocation = allocate_budget(budget, degradation, capacity)
        context = (case, budget, degradation.tolist(), capacity.tolist(), allocation.tolist())

        assert allocation.shape == (clusters,), context
        assert int(allocation.sum()) == budget, context
        assert np.all(allocation >= 0) and np.all(allocation <= capacity), context
        assert np.array_equal(allocation, allocate_budget(budget, degradation, capacity)), context

        uncapped = np.flatnonzero(allocation < capacity)
        for a in uncapped:
            for b in uncapped:
                if degradation[a] > degradation[b]:
                    assert allocation[a] >= allocation[b] - 1, context
        # A cluster with CDS 0 gets samples only when every cluster with CDS > 0 is full.
        positive = degradation > 0
        if np.any(allocation[~positive] > 0):
            assert np.array_equal(allocation[positive], capacity[positive]), context
        # A budget that the positive-CDS clusters can absorb leaves zero-CDS clusters empty.
        if budget <= capacity[positive].sum():
            assert np.all(allocation[~positive] == 0), context


def test_allocation_rules_weigh_cds_size_both_or_neither() -> None:
    from paser_assets.core.allocation import allocation_weights

    cds, sizes = [0.2, 0.1, 0.4], [10, 40, 5]
    assert list(allocation_weights("cds", cds, sizes)) == cds
    assert list(allocation_weights("cds_size", cds, sizes)) == pytest.approx([2.0, 4.0, 2.0])
    assert list(allocation_weights("proportional", cds, sizes)) == sizes
    assert list(allocation_weights("uniform", cds, sizes)) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="allocation rule"):
        allocation_weights("greedy", cds, sizes)
    # By CDS alone the big, least degraded cluster gets least; by CDS x size it gets the most.
    assert list(allocate_budget(20, allocation_weights("cds", cds, sizes), sizes)) == [10, 5, 5]
    assert list(allocate_budget(20, allocation_weights("cds_size", cds, sizes), sizes)) == [5, 10, 5]


def test_the_allocation_setting_offers_exactly_the_rules() -> None:
    """The setting's Literal repeats the rule names (a type needs literals): it must list the same ones."""
    import typing

    from paser_assets.core.allocation import ALLOCATION_RULES, allocation_weights
    from paser_assets.settings import SelectionSettings

    # The product offers the paper's rule and CDS x size; the other two serve the study's arms (lab/).
    offered = typing.get_args(SelectionSettings.model_fields["allocation"].annotation)
    assert offered == ("cds", "cds_size") and set(offered) <= set(ALLOCATION_RULES)
    for rule in ALLOCATION_RULES:
        assert len(allocation_weights(rule, [0.1, 0.2], [3, 4])) == 2


def test_paser_select_counts_samples_or_tokens_and_nothing_else() -> None:
    import pandas as pd

    from paser_assets.core.selection import BUDGET_UNITS, paser_select

    assert BUDGET_UNITS == ("samples", "tokens")
    with pytest.raises(ValueError, match="budget unit must be one of samples, tokens, got 'bytes'"):
        paser_select(pd.DataFrame(), pd.DataFrame(), 0.5, "bytes")
