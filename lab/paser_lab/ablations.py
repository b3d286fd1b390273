"""The pieces of PASER that the recovery study changed: other signals, orders, budgets in tokens, strata.

Pure functions over the candidates' frame (``paser_assets.methods.Candidates.frame``), built on the
product's public core (:mod:`paser_assets.core`); the arms in :mod:`paser_lab.arms` combine them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from paser_assets.core.allocation import allocate_budget, allocation_weights
from paser_assets.core.baselines import seeded_order
from paser_assets.core.efficiency import individual_efficiency

# Response-length strata inside each cluster for the stratified arms: quintiles, fixed in advance.
LENGTH_STRATA = 5


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


def token_budget(samples: int, mean_tokens: float) -> int:
    """T = round(B x mean tokens per selectable sample): the tokens a random selection of B samples has on average."""
    return round(samples * mean_tokens)


def length_strata(lengths: Sequence[int], strata: int) -> np.ndarray:
    """Stratum of each sample, 0 (shortest) to ``strata`` - 1: the quantile bin of its response length.

    The edges are the 1/S, ..., (S-1)/S quantiles; a length on an edge goes to the upper bin, so tied lengths
    share a bin (and bins may differ in size where many lengths tie)."""
    if strata < 1:
        raise ValueError(f"need at least one stratum, got {strata}")
    lengths = np.asarray(lengths, dtype=np.float64)
    if len(lengths) == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.quantile(lengths, np.arange(1, strata) / strata)
    return np.searchsorted(edges, lengths, side="right").astype(np.int64)


def split_by_strata(budget: int, stratum_sizes: Sequence[int]) -> np.ndarray:
    """n_cs = B_c x |S_cs| / |C_c| (largest remainder, capped by |S_cs|): a cluster's budget keeps the cluster's
    own mix of strata, as a random draw from it does on average. Sizes are samples, or tokens for a token budget."""
    sizes = np.asarray(stratum_sizes, dtype=np.int64)
    return allocate_budget(min(budget, int(sizes.sum())), sizes.astype(np.float64), sizes)


def uniform_selection(clusters: Mapping[str, int], budget: int, seed: int) -> list[str]:
    """n_c = B / k per cluster (largest remainder, capped by cluster size, the excess spread evenly),
    drawn at random inside each cluster."""
    by_cluster: dict[int, list[str]] = {}
    for sample_id, cluster in clusters.items():
        by_cluster.setdefault(int(cluster), []).append(sample_id)
    order = sorted(by_cluster)
    sizes = np.array([len(by_cluster[c]) for c in order])
    parts = allocate_budget(budget, np.ones(len(order)), sizes)
    selected: list[str] = []
    for cluster, part in zip(order, parts, strict=True):
        selected.extend(seeded_order(by_cluster[cluster], seed)[: int(part)])
    return selected


def budgets_in_unit(frame: pd.DataFrame, budgets: pd.DataFrame, unit: str, rule: str) -> pd.DataFrame:
    """The per-cluster budgets of capability_degradation, in samples; or, in ``unit`` "tokens", the token budget
    of :func:`token_budget` split by the same allocation ``rule`` and capped by the tokens each cluster has."""
    if unit == "samples":
        return budgets
    clusters = budgets["cluster"]
    sizes = frame.groupby("cluster").size().reindex(clusters).fillna(0).to_numpy(int)
    capacity = frame.groupby("cluster")["tokens"].sum().reindex(clusters).fillna(0).to_numpy(int)
    total = token_budget(int(budgets["budget"].sum()), float(frame["tokens"].mean()))
    weights = allocation_weights(rule, budgets["cds"].to_numpy(), sizes)
    return budgets.assign(budget=allocate_budget(total, weights, capacity))


def within_length_strata(
    frame: pd.DataFrame, budgets: pd.DataFrame, unit: str, strata: int = LENGTH_STRATA
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The candidates and per-cluster budgets with each cluster split into response-length strata (quantile bins
    of the pool's response tokens): stratum s of cluster c becomes cluster c x strata + s, with the CDS of c and
    the part of c's budget that its share of c's samples (or tokens, in ``unit`` "tokens") gives it.

    The instruction embedding does not see the form of the answer, and both IES and the drift per token favour
    some lengths (measured: 38% of PASER's samples are answers of 12 tokens or fewer, 21% of the pool's; 2% of
    the drift-per-token walk's), so a walk inside a stratum ranks like-sized samples only."""
    stratum = length_strata(frame["response_tokens"].to_numpy(), strata)
    keyed = frame.assign(cluster=frame["cluster"].astype(int) * strata + stratum)
    units = frame["tokens"].astype(int) if unit == "tokens" else pd.Series(1, index=frame.index)
    rows = []
    for cluster, cds, budget in budgets[["cluster", "cds", "budget"]].itertuples(index=False):
        in_cluster = frame["cluster"].astype(int) == int(cluster)
        sizes = [int(units[in_cluster & (stratum == s)].sum()) for s in range(strata)]
        for s, part in enumerate(split_by_strata(int(budget), sizes)):
            rows.append({"cluster": int(cluster) * strata + s, "cds": float(cds), "budget": int(part)})
    return keyed, pd.DataFrame(rows, columns=["cluster", "cds", "budget"])


def token_spend(frame: pd.DataFrame, budgets: pd.DataFrame, selected_ids: Iterable[str], rule: str) -> pd.DataFrame:
    """Per cluster, in training tokens: the token budget of :func:`budgets_in_unit` and what the selected
    samples among ``frame``'s rows spent of it (``cluster, budget, spent``)."""
    shares = budgets_in_unit(frame, budgets, "tokens", rule)
    chosen = frame[frame["sample_id"].isin(set(selected_ids))]
    spent = chosen.groupby("cluster")["tokens"].sum().reindex(shares["cluster"]).fillna(0).astype("int64")
    return shares[["cluster", "budget"]].assign(spent=spent.to_numpy()).reset_index(drop=True)


def with_signal(frame: pd.DataFrame, signal: Sequence[float] | pd.Series) -> pd.DataFrame:
    """The candidates with another per-sample degradation signal in place of the response JSD: ``jsd`` := the
    signal and ``ies`` := signal / log(cost), so that the CDS, the allocation and the walk all read it."""
    values = np.asarray(signal, dtype=np.float64)
    ies = [individual_efficiency(value, int(cost)) for value, cost in zip(values, frame["cost"], strict=True)]
    return frame.assign(jsd=values, ies=ies)


def instruction_divergence(
    original: Any, pruned: Any, tokenizer: Any, frame: pd.DataFrame, max_tokens: int
) -> dict[str, float]:
    """Per sample, the mean JSD of the two models' next-token distributions over the tokens of its instruction
    (and input), without the chat template or the response: the signal of PASER's reference code."""
    from paser_assets.models.response_scores import lead_token
    from paser_assets.models.scoring import EncodedSample, PairScorer, plan_batches

    samples = []
    for row in frame.itertuples(index=False):
        text = f"{row.instruction}\n{row.input}" if row.input else row.instruction
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"][: max_tokens - 1]
        samples.append(EncodedSample(row.sample_id, (*lead_token(tokenizer), *ids), 1, False))
    scorer = PairScorer(original, pruned, tokenizer.pad_token_id)
    divergence: dict[str, float] = {}
    for batch in plan_batches([len(s.input_ids) for s in samples]):
        for score in scorer.score([samples[i] for i in batch]):
            divergence[score.sample_id] = score.jsd
    return divergence
