"""Concept-consistent selection: walk each cluster in IES order (or another score's), skip samples whose concepts
conflict.

A Concept Consistency Graph (CCG) holds the concepts of the samples selected so far, with an edge
between two concepts that occurred together in one selected sample. A candidate's pair of concepts
(u, v) is a *conflict* when both u and v are in the graph but never co-occurred. PASER's reference
rule rejects a candidate with any conflict; here a candidate is rejected when the share of its
concept pairs that conflict exceeds a tolerance tau, so tau = 0 is the strict rule and tau = 1
turns the filter off.

Refill rule: clusters are walked in decreasing CDS order. When a cluster runs out of candidates
before its budget is filled (its candidates were rejected as conflicts), the total shortfall is
split again among the clusters that still have unvisited candidates, in proportion to their CDS
(largest remainder, capped by what each has left), and their walks continue from where they
stopped. This repeats until the budget is met or no candidate is left; any remaining shortfall is
reported.

Budgets count samples by default. With a token budget every candidate carries its training tokens
(``budget_units``), the budgets and the shortfall are in tokens, and a cluster's walk stops at the first
accepted sample that reaches its budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from paser_assets.core.allocation import allocate_budget

SELECTED = "selected"
CONCEPT_CONFLICT = "concept_conflict"
BUDGET_FULL = "budget_full"


@dataclass(frozen=True)
class Candidate:
    sample_id: str
    cluster: int
    ies: float
    jsd: float
    concepts: frozenset[str]
    # What the sample takes from its cluster's budget: 1 under a sample budget, its training tokens under a
    # token budget (then the budgets are in tokens, and a cluster's last sample may overshoot its budget).
    budget_units: int = 1
    # What the cluster's walk ranks by, highest first; None: the IES (the paper's rule).
    score: float | None = None

    @property
    def walk_score(self) -> float:
        return self.ies if self.score is None else self.score


@dataclass(frozen=True)
class Decision:
    sample_id: str
    cluster: int
    rank: int  # 1 = the first of its cluster's walk: the highest IES, or the highest score of the ranking
    ies: float
    jsd: float
    score: float  # what the walk ranked by: the IES, or the ranking's score
    decision: str
    conflict_pairs: tuple[tuple[str, str], ...]
    conflict_share: float
    refill_round: int  # 0 = first pass; > 0 = considered while refilling; -1 = never considered


class ConceptGraph:
    """Concepts of selected samples and how often each pair co-occurred."""

    def __init__(self) -> None:
        self.nodes: set[str] = set()
        self.edges: dict[tuple[str, str], int] = {}

    def conflicts(self, concepts: Iterable[str]) -> list[tuple[str, str]]:
        """Pairs (u, v) of ``concepts`` with u and v both in the graph but no edge between them."""
        present = sorted(c for c in set(concepts) if c in self.nodes)
        return [pair for pair in combinations(present, 2) if pair not in self.edges]

    def add(self, concepts: Iterable[str]) -> None:
        unique = sorted(set(concepts))
        self.nodes.update(unique)
        for pair in combinations(unique, 2):
            self.edges[pair] = self.edges.get(pair, 0) + 1


def conflict_share(conflicts: Sequence[tuple[str, str]], concept_count: int) -> float:
    """share = |conflicting pairs| / C(k, 2) for a candidate with k concepts (0 when k < 2)."""
    pairs = concept_count * (concept_count - 1) // 2
    return len(conflicts) / pairs if pairs else 0.0


def walk_order(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Highest walk score (the IES unless the candidate carries another score) first; ties by higher JSD, then
    sample_id; NaN scores last."""

    def key(c: Candidate) -> tuple[bool, float, float, str]:
        score = c.walk_score
        return math.isnan(score), -(score if not math.isnan(score) else 0.0), -c.jsd, c.sample_id

    return sorted(candidates, key=key)


@dataclass
class SelectionResult:
    decisions: list[Decision]
    graph: ConceptGraph
    budget: int
    selected: int
    refill_rounds: int
    shortfall: int = field(init=False)

    def __post_init__(self) -> None:
        self.shortfall = self.budget - self.selected


def select(
    candidates: Iterable[Candidate],
    budgets: Mapping[int, int],
    degradation: Mapping[int, float],
    tolerance: float,
) -> SelectionResult:
    """Run the concept-consistent walk over all clusters (see the module docstring for the rules)."""
    if not 0.0 <= tolerance <= 1.0:
        raise ValueError(f"the conflict tolerance must lie in [0, 1], got {tolerance}")
    by_cluster: dict[int, list[Candidate]] = {}
    for candidate in candidates:
        by_cluster.setdefault(candidate.cluster, []).append(candidate)
    queues = {cluster: walk_order(items) for cluster, items in by_cluster.items()}
    clusters = sorted(queues, key=lambda c: (-degradation.get(c, 0.0), c))
    quota = {c: int(budgets.get(c, 0)) for c in clusters}
    position = dict.fromkeys(clusters, 0)
    chosen = dict.fromkeys(clusters, 0)
    graph = ConceptGraph()
    decisions: list[Decision] = []
    total_budget = sum(quota.values())
    refill_round = 0
    while True:
        for cluster in clusters:
            queue = queues[cluster]
            while chosen[cluster] < quota[cluster] and position[cluster] < len(queue):
                candidate = queue[position[cluster]]
                position[cluster] += 1
                conflicts = graph.conflicts(candidate.concepts)
                share = conflict_share(conflicts, len(candidate.concepts))
                accepted = not conflicts if tolerance == 0 else share <= tolerance
                if accepted:
                    graph.add(candidate.concepts)
                    chosen[cluster] += candidate.budget_units
                decisions.append(
                    Decision(
                        candidate.sample_id,
                        cluster,
                        position[cluster],
                        candidate.ies,
                        candidate.jsd,
                        candidate.walk_score,
                        SELECTED if accepted else CONCEPT_CONFLICT,
                        () if accepted else tuple(conflicts),
                        share,
                        refill_round,
                    )
                )
        shortfall = total_budget - sum(chosen.values())
        left = np.array([sum(c.budget_units for c in queues[k][position[k] :]) for k in clusters], dtype=np.int64)
        if shortfall <= 0 or left.sum() == 0:
            break
        weights = [degradation.get(c, 0.0) if n else 0.0 for c, n in zip(clusters, left, strict=True)]
        extra = allocate_budget(int(min(shortfall, left.sum())), weights, left)
        for cluster, more in zip(clusters, extra, strict=True):
            quota[cluster] = chosen[cluster] + int(more)
        refill_round += 1
    for cluster in clusters:
        for rank, candidate in enumerate(queues[cluster][position[cluster] :], start=position[cluster] + 1):
            decisions.append(
                Decision(
                    candidate.sample_id,
                    cluster,
                    rank,
                    candidate.ies,
                    candidate.jsd,
                    candidate.walk_score,
                    BUDGET_FULL,
                    (),
                    0.0,
                    -1,
                )
            )
    return SelectionResult(decisions, graph, total_budget, sum(chosen.values()), refill_round)
