"""PASER's selection over a table of candidates, and the tables that record it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from paser_assets.core.allocation import allocate_budget, allocation_weights, resolve_budget
from paser_assets.core.consistency import BUDGET_FULL, SELECTED, Candidate, SelectionResult, select

BUDGET_UNITS = ("samples", "tokens")  # what the per-cluster budgets count: samples (the paper), or training tokens


def cluster_budgets(frame: pd.DataFrame, budget_setting: float, rule: str = "cds") -> tuple[pd.DataFrame, int]:
    """Per cluster: size, CDS = mean JSD of its samples, the spread, mean IES and its share of the budget
    (largest remainder in proportion to the allocation rule's weight, CDS by default, capped by the
    cluster's size); and the total budget."""
    per_cluster = (
        frame.groupby("cluster")
        .agg(size=("jsd", "size"), cds=("jsd", "mean"), jsd_std=("jsd", "std"), mean_ies=("ies", "mean"))
        .reset_index()
        .sort_values("cluster")
    )
    budget = resolve_budget(budget_setting, int(per_cluster["size"].sum()))
    sizes = per_cluster["size"].to_numpy()
    allocation = allocate_budget(budget, allocation_weights(rule, per_cluster["cds"].to_numpy(), sizes), sizes)
    table = per_cluster.assign(
        size=per_cluster["size"].astype("int64"),
        jsd_std=per_cluster["jsd_std"].fillna(0.0),
        budget=allocation.astype(np.int64),
        budget_share=allocation / budget,
    )[["cluster", "size", "cds", "jsd_std", "mean_ies", "budget", "budget_share"]]
    return table.reset_index(drop=True), budget


def paser_select(
    frame: pd.DataFrame, budgets: pd.DataFrame, tolerance: float, budget_unit: str = "samples"
) -> SelectionResult:
    """Each cluster c walked in decreasing IES = JSD / log(cost) until its budget n_c, skipping concept conflicts.

    ``frame``: one row per candidate (``sample_id, cluster, ies, jsd, concepts, tokens``); ``budgets``: per
    cluster ``cluster, cds, budget``. A ``score`` column in ``frame``, where there is one, is the walk's order
    instead of the IES; ``budget_unit`` "tokens": the budgets count the rows' training ``tokens``. Both serve
    the study's ablations (``lab/``); the product walks by IES under a sample budget."""
    if budget_unit not in BUDGET_UNITS:
        raise ValueError(f"the budget unit must be one of {', '.join(BUDGET_UNITS)}, got {budget_unit!r}")
    given = "score" in frame.columns
    candidates = [
        Candidate(
            row.sample_id,
            int(row.cluster),
            float(row.ies),
            float(row.jsd),
            frozenset(row.concepts),
            int(row.tokens) if budget_unit == "tokens" else 1,
            float(row.score) if given else None,
        )
        for row in frame.itertuples(index=False)
    ]
    clusters = budgets["cluster"].astype(int)
    return select(
        candidates,
        dict(zip(clusters, budgets["budget"].astype(int), strict=True)),
        dict(zip(clusters, budgets["cds"].astype(float), strict=True)),
        tolerance,
    )


def selected_ids(result: SelectionResult) -> list[str]:
    """The selected sample ids in the order they were chosen."""
    return [d.sample_id for d in result.decisions if d.decision == SELECTED]


def decision_table(result: SelectionResult, variant: str) -> pd.DataFrame:
    """The rows of the selection table: every candidate considered, with its decision."""
    decisions = result.decisions
    table = pd.DataFrame(
        {
            "variant": variant,
            "sample_id": [d.sample_id for d in decisions],
            "cluster": [d.cluster for d in decisions],
            "rank": [d.rank for d in decisions],
            "ies": [d.ies for d in decisions],
            "jsd": [d.jsd for d in decisions],
            "score": [d.score for d in decisions],
            "decision": [d.decision for d in decisions],
            "conflict_pairs": [[f"{a} | {b}" for a, b in d.conflict_pairs] for d in decisions],
            "conflict_share": [d.conflict_share for d in decisions],
            "refill_round": [d.refill_round for d in decisions],
        }
    )
    return table.astype({"variant": str, "cluster": "int64", "rank": "int64", "refill_round": "int64"})


def graph_table(result: SelectionResult, variant: str) -> pd.DataFrame:
    """The rows of the concept_graph table: concept pairs of the selected samples and their co-occurrences."""
    edges = sorted(result.graph.edges.items())
    graph = pd.DataFrame(
        {
            "variant": variant,
            "concept_a": [a for (a, _), _ in edges],
            "concept_b": [b for (_, b), _ in edges],
            "cooccurrences": [count for _, count in edges],
        }
    )
    return graph.astype({"variant": str, "cooccurrences": "int64"})


def acceptance_per_cluster(table: pd.DataFrame, budgets: pd.DataFrame) -> pd.DataFrame:
    """Per cluster: candidates considered, selected and rejected as conflicts, the budget and the acceptance rate."""
    per_cluster = (
        table.groupby("cluster")
        .agg(
            considered=("decision", lambda d: int((d != BUDGET_FULL).sum())),
            selected=("decision", lambda d: int((d == SELECTED).sum())),
            conflicts=("decision", lambda d: int((d == "concept_conflict").sum())),
        )
        .reset_index()
        .merge(budgets[["cluster", "budget"]], on="cluster")
    )
    per_cluster["acceptance_rate"] = (per_cluster["selected"] / per_cluster["considered"].clip(lower=1)).round(3)
    return per_cluster
