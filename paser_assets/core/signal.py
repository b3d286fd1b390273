"""Is there still a signal to select on? Two tests of one variant's scores, as pure functions.

PASER gives the budget to clusters in proportion to their Capability Degradation Score (CDS, the mean JSD of
a cluster's samples). That only means something while the CDS tells clusters apart, and while the pruned
model still predicts anything:

- **CDS separates the clusters.** The most and least degraded clusters must differ by more than
  :data:`SEPARATION_Z` standard errors of the difference of their means (from the pooled within-cluster
  standard deviation of JSD). Within that, the ranking of clusters, and so the budget split, is noise.
  And the CDS must not be saturated: every cluster within :data:`SATURATION_NATS` of ln 2, the JSD of two
  distributions that share no mass, means the pruned model disagrees with the original everywhere alike.
- **The pruned model is not guessing.** Its mean response NLL must stay below :data:`UNIFORM_SHARE` of
  ln(vocabulary size), the NLL of a uniform distribution over the vocabulary: above it the model predicts
  about as well as chance, and its distance from the original no longer says which capability broke.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from paser_assets.core.divergence import LN2

SEPARATION_Z = 2.0  # about a 95% two-sided bound; taking the extreme pair only makes the spread larger
SATURATION_NATS = 0.01
UNIFORM_SHARE = 0.9  # below a unigram model's NLL already; a model that far up has lost its predictions


@dataclass(frozen=True)
class SignalReport:
    """What the tests found for one variant; ``problems`` says, in words, every test that failed."""

    clusters: int
    cds_spread: float  # max - min CDS over the clusters, nats
    spread_standard_error: float  # of the difference between the most and least degraded clusters' means
    max_distance_from_ln2: float  # of any cluster's CDS; below SATURATION_NATS for all: saturated
    mean_pruned_nll: float | None
    uniform_nll: float | None  # ln(vocabulary size); None when the vocabulary is unknown
    problems: tuple[str, ...]
    between_cluster_share: float = math.nan  # of the samples' JSD variance; see between_cluster_share()

    @property
    def healthy(self) -> bool:
        return not self.problems


def cluster_spread(sizes: Sequence[int], cds: Sequence[float], jsd_std: Sequence[float]) -> tuple[float, float]:
    """(max - min CDS, standard error of that difference), from the pooled within-cluster standard deviation.

    The standard error is NaN when no cluster has two samples (no within-cluster variation to pool).
    """
    n = np.asarray(sizes, dtype=np.float64)
    means = np.asarray(cds, dtype=np.float64)
    stds = np.nan_to_num(np.asarray(jsd_std, dtype=np.float64))
    high, low = int(np.argmax(means)), int(np.argmin(means))
    freedom = float(np.sum(n - 1))
    if freedom <= 0:
        return float(means[high] - means[low]), math.nan
    pooled = math.sqrt(float(np.sum((n - 1) * stds**2)) / freedom)
    return float(means[high] - means[low]), pooled * math.sqrt(1 / n[high] + 1 / n[low])


def between_cluster_share(sizes: Sequence[int], cds: Sequence[float], jsd_std: Sequence[float]) -> float:
    """eta^2 = sum_c |C_c| (CDS_c - mu)^2 / sum_i (JSD_i - mu)^2, the share of the JSD variance between clusters.

    It bounds what the allocation step can do: at 0 every cluster drifted alike and any split of the budget
    is as good as a proportional one; at 1 the clusters say all there is to know. ``jsd_std`` is each
    cluster's sample standard deviation (ddof 1, as pandas computes it); NaN when there is no variance at all.
    """
    n = np.asarray(sizes, dtype=np.float64)
    means = np.asarray(cds, dtype=np.float64)
    stds = np.nan_to_num(np.asarray(jsd_std, dtype=np.float64))
    mean = float(np.sum(n * means) / np.sum(n)) if np.sum(n) > 0 else math.nan
    between = float(np.sum(n * (means - mean) ** 2))
    within = float(np.sum((n - 1).clip(min=0) * stds**2))
    total = between + within
    # Below 1e-20 nats^2 per sample the JSDs are equal up to rounding (they lie in [0, ln 2]).
    return between / total if total > 1e-20 * max(1.0, float(np.sum(n))) else math.nan


def assess_signal(
    sizes: Sequence[int],
    cds: Sequence[float],
    jsd_std: Sequence[float],
    mean_pruned_nll: float | None = None,
    vocabulary: int | None = None,
    mean_original_nll: float | None = None,
) -> SignalReport:
    """The two tests of the module docstring on one variant's clusters (size, CDS, JSD standard deviation)
    and its samples' mean pruned NLL; the NLL test is skipped when the vocabulary size is unknown."""
    problems = []
    if len(cds) == 0:
        return SignalReport(0, 0.0, math.nan, math.nan, mean_pruned_nll, None, ("no cluster has a CDS",))
    spread, error = cluster_spread(sizes, cds, jsd_std)
    distance = float(np.max(np.abs(LN2 - np.asarray(cds, dtype=np.float64))))
    if len(cds) < 2:
        problems.append("there is one cluster: CDS has nothing to separate")
    elif math.isnan(error):
        problems.append("no cluster has two samples: CDS differences cannot be told from noise")
    elif spread <= SEPARATION_Z * error:
        problems.append(
            f"CDS does not separate the clusters: the most and least degraded differ by {spread:.4g} nats, "
            f"within {SEPARATION_Z:g} standard errors ({SEPARATION_Z * error:.4g}) of that difference"
        )
    if distance <= SATURATION_NATS:
        problems.append(
            f"CDS is saturated: every cluster is within {SATURATION_NATS} nats of ln 2, so the pruned model "
            "shares almost no probability mass with the original anywhere"
        )
    uniform = math.log(vocabulary) if vocabulary and vocabulary > 1 else None
    if uniform is not None and mean_pruned_nll is not None and mean_pruned_nll >= UNIFORM_SHARE * uniform:
        original = (
            f"; the original's is {mean_original_nll:.3f}, so it is near uniform too (an untrained model?)"
            if mean_original_nll is not None and mean_original_nll >= UNIFORM_SHARE * uniform
            else ""
        )
        problems.append(
            f"the pruned model predicts about as well as chance: its mean response NLL {mean_pruned_nll:.3f} is "
            f"{mean_pruned_nll / uniform:.0%} of ln({vocabulary}) = {uniform:.3f}, a uniform guess{original}"
        )
    share = between_cluster_share(sizes, cds, jsd_std)
    return SignalReport(len(cds), spread, error, distance, mean_pruned_nll, uniform, tuple(problems), share)
