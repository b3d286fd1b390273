"""Does a lower scoring precision change what PASER selects? Compare two score sets of the same rows.

The rows are clustered once (the project's sentence model and spectral clustering, at the default
semantic settings); each score set then goes through the selection the assets run: CDS per cluster,
budget allocation (``core.allocation``), IES ranking and the concept-consistent walk
(``core.consistency``) at the default budget and conflict tolerance, over all rows (no held-out split).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from paser_assets.core.allocation import allocate_budget, resolve_budget
from paser_assets.core.clustering import spectral_clustering
from paser_assets.core.concepts import extract_concepts
from paser_assets.core.consistency import SELECTED, Candidate, select
from paser_assets.core.efficiency import attention_cost, individual_efficiency
from paser_assets.models.sentence import embed_texts, embedding_text
from paser_assets.resources import PaserConfig


@dataclass(frozen=True)
class Pool:
    """The rows being scored, with what selection needs besides the scores."""

    ids: list[str]
    clusters: np.ndarray
    concepts: list[frozenset[str]]
    costs: list[int]


@dataclass(frozen=True)
class Selection:
    cds: dict[int, float]
    budget: dict[int, int]
    selected: frozenset[str]


def prepare_pool(
    rows: Sequence[Mapping[str, str]], ids: Sequence[str], token_counts: Sequence[tuple[int, int]], device: str
) -> Pool:
    """Cluster the rows on their instruction embeddings and extract their concepts, as the assets do."""
    config = PaserConfig()
    texts = [embedding_text(r["instruction"], r["input"]) for r in rows]
    embeddings = embed_texts(config.semantic.embedding_model, texts, device=device)
    clustering = spectral_clustering(
        embeddings,
        config.semantic.n_clusters,
        n_neighbors=config.semantic.n_neighbors,
        regularization=config.semantic.graph_regularization,
        max_clusters=config.semantic.max_clusters,
        seed=config.seed,
    )
    concepts = extract_concepts(
        [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in rows], config.selection.concepts_per_sample
    )
    costs = [attention_cost(prompt, response) for prompt, response in token_counts]
    return Pool(list(ids), clustering.labels, [frozenset(c) for c in concepts], costs)


def paser_selection(pool: Pool, jsd: Mapping[str, float]) -> Selection:
    """CDS, budget per cluster and the selected ids for one score set, at the default settings."""
    config = PaserConfig()
    clusters = sorted(set(pool.clusters.tolist()))
    values = np.array([jsd[i] for i in pool.ids])
    cds = {c: float(values[pool.clusters == c].mean()) for c in clusters}
    sizes = [int((pool.clusters == c).sum()) for c in clusters]
    budget = resolve_budget(config.selection.budget, len(pool.ids))
    allocation = allocate_budget(budget, [cds[c] for c in clusters], sizes)
    budgets = {c: int(b) for c, b in zip(clusters, allocation, strict=True)}
    candidates = [
        Candidate(sample_id, int(cluster), individual_efficiency(jsd[sample_id], cost), jsd[sample_id], concepts)
        for sample_id, cluster, cost, concepts in zip(pool.ids, pool.clusters, pool.costs, pool.concepts, strict=True)
    ]
    result = select(candidates, budgets, cds, config.selection.conflict_tolerance)
    return Selection(cds, budgets, frozenset(d.sample_id for d in result.decisions if d.decision == SELECTED))


def compare(pool: Pool, reference: Mapping[str, float], other: Mapping[str, float]) -> dict:
    """The fidelity figures of ``other`` against ``reference`` (both: sample id -> JSD)."""
    first, second = paser_selection(pool, reference), paser_selection(pool, other)
    a = np.array([reference[i] for i in pool.ids])
    b = np.array([other[i] for i in pool.ids])
    union = first.selected | second.selected
    return {
        "jsd_mean_abs_diff": float(f"{np.abs(a - b).mean():.3e}"),
        "jsd_max_abs_diff": float(f"{np.abs(a - b).max():.3e}"),
        "jsd_spearman": round(float(spearmanr(a, b).statistic), 5) if len(a) > 2 else None,
        "clusters": len(first.cds),
        "cds_max_rel_diff": round(max(abs(second.cds[c] - v) / v for c, v in first.cds.items() if v > 0), 5),
        "budget_per_cluster": {"reference": first.budget, "other": second.budget},
        "selected": len(first.selected),
        "selection_jaccard": round(len(first.selected & second.selected) / len(union), 4) if union else 1.0,
    }
