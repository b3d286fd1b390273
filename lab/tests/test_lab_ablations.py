"""The lab's building blocks (paser_lab.ablations): length strata, uniform draws, drift per token, excess NLL."""

from __future__ import annotations

import math

import pytest
from paser_lab.ablations import drift_per_token, excess_nll, length_strata, split_by_strata, uniform_selection

from paser_assets.core.baselines import seeded_order


def clusters_of(sizes: dict[int, int]) -> dict[str, int]:
    """sample_id -> cluster with ``sizes[c]`` samples in cluster c (ids ``c<c>-<i>``)."""
    return {f"c{cluster}-{i:02d}": cluster for cluster, size in sizes.items() for i in range(size)}


def per_cluster(selected: list[str], clusters: dict[str, int]) -> dict[int, int]:
    counts = {cluster: 0 for cluster in set(clusters.values())}
    for sample_id in selected:
        counts[clusters[sample_id]] += 1
    return counts


# -- length strata


def test_length_strata_are_quantile_bins_with_ties_kept_together() -> None:
    lengths = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert length_strata(lengths, 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # Seven one-token answers tie on every low edge: they share one bin, never split across two.
    tied = [1, 1, 1, 1, 1, 1, 1, 50, 60, 70]
    strata = length_strata(tied, 5)
    assert len(set(strata[:7].tolist())) == 1
    assert strata[7:].tolist() == sorted(strata[7:].tolist()) and strata[9] > strata[0]
    assert length_strata(lengths, 1).tolist() == [0] * 10
    assert length_strata([], 3).tolist() == []
    with pytest.raises(ValueError, match="at least one stratum"):
        length_strata(lengths, 0)


def test_a_clusters_budget_keeps_its_mix_of_strata() -> None:
    # A token budget of 100 over strata holding 600, 300 and 100 tokens: 60, 30 and 10.
    assert split_by_strata(100, [600, 300, 100]).tolist() == [60, 30, 10]
    assert split_by_strata(7, [5, 5, 0]).tolist() == [4, 3, 0]  # largest remainder, an empty stratum gets none
    assert split_by_strata(50, [10, 20]).tolist() == [10, 20]  # never more than a stratum holds
    assert int(split_by_strata(333, [120, 400, 77, 5]).sum()) == 333


# -- uniform_selection


def test_uniform_selection_splits_equally_across_clusters() -> None:
    clusters = clusters_of({0: 10, 1: 10, 2: 10})
    chosen = uniform_selection(clusters, 9, seed=0)
    assert len(chosen) == len(set(chosen)) == 9
    assert per_cluster(chosen, clusters) == {0: 3, 1: 3, 2: 3}


def test_uniform_selection_spreads_the_remainder_one_each() -> None:
    clusters = clusters_of({0: 10, 1: 10, 2: 10})
    counts = per_cluster(uniform_selection(clusters, 11, seed=0), clusters)
    assert sorted(counts.values()) == [3, 4, 4]
    assert sum(counts.values()) == 11


def test_a_small_cluster_gives_its_excess_to_the_others() -> None:
    clusters = clusters_of({0: 1, 1: 10, 2: 10, 3: 2})
    chosen = uniform_selection(clusters, 12, seed=1)
    counts = per_cluster(chosen, clusters)
    # B / k = 3 each, but cluster 0 holds 1 and cluster 3 holds 2: their excess (2 + 1) goes to clusters 1
    # and 2, 4.5 each; the odd unit goes to the lower cluster id.
    assert counts == {0: 1, 1: 5, 2: 4, 3: 2}
    assert len(chosen) == len(set(chosen)) == 12


@pytest.mark.parametrize("budget", [1, 5, 13, 22, 23])
def test_uniform_selection_sizes_sum_to_the_budget(budget: int) -> None:
    clusters = clusters_of({0: 1, 1: 10, 2: 7, 3: 2, 4: 3})
    chosen = uniform_selection(clusters, budget, seed=2)
    counts = per_cluster(chosen, clusters)
    assert sum(counts.values()) == len(chosen) == len(set(chosen)) == budget
    sizes = {0: 1, 1: 10, 2: 7, 3: 2, 4: 3}
    assert all(counts[c] <= sizes[c] for c in sizes)
    # Equal shares: an uncapped cluster never gets more than one sample over another uncapped cluster.
    uncapped = [counts[c] for c in sizes if counts[c] < sizes[c]]
    assert not uncapped or max(uncapped) - min(uncapped) <= 1
    # Only a cluster no bigger than the equal share (plus a remainder unit) is taken whole.
    assert all(counts[c] <= max(uncapped) + 1 for c in sizes if counts[c] == sizes[c] and uncapped)


def test_uniform_selection_draws_at_random_inside_each_cluster() -> None:
    clusters = clusters_of({0: 10, 1: 10})
    chosen = uniform_selection(clusters, 6, seed=3)
    for cluster in (0, 1):
        members = sorted(s for s, c in clusters.items() if c == cluster)
        assert [s for s in chosen if clusters[s] == cluster] == seeded_order(members, 3)[:3]
    assert uniform_selection(clusters, 6, seed=3) == chosen
    assert uniform_selection(clusters, 6, seed=4) != chosen


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
