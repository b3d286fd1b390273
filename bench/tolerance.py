"""Acceptance of the concept-consistency filter for several tolerances, on a materialized DuckDB file.

Run by hand after materializing the graph on a real pool, for example:

    PASER_DATASET=pool.jsonl PASER_DB=real.duckdb .venv/bin/paser materialize
    .venv/bin/python bench/tolerance.py --db real.duckdb --taus 0,0.1,0.2,0.25,0.3,0.5,1

For each tau it replays the selection (same scores, clusters, concepts and budgets as the stored
run) and prints, per cluster, the candidates considered, the selected count and the acceptance
rate, plus the overall acceptance after the first 3,000 candidates in walk order. The last line is
one JSON object with the overall figures per tau.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import duckdb
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paser_assets.core.consistency import BUDGET_FULL, SELECTED, Candidate, select


def load(db: str, schema: str, variant: str | None) -> tuple[list[Candidate], pd.DataFrame]:
    with duckdb.connect(db, read_only=True) as conn:
        catalog = conn.execute("SELECT current_database()").fetchall()[0][0]
        prefix = f'"{catalog}"."{schema}"'
        if variant is None:
            variant = conn.execute(f"SELECT min(variant) FROM {prefix}.degradation_scores").fetchall()[0][0]
        print(f"variant {variant}", file=sys.stderr)
        frame = conn.execute(
            f"""SELECT s.sample_id, c.cluster, s.ies, s.jsd, k.concepts
            FROM {prefix}.degradation_scores s JOIN {prefix}.clusters c USING (sample_id)
            JOIN {prefix}.sample_concepts k USING (sample_id) WHERE s.variant = ? ORDER BY s.sample_id""",
            [variant],
        ).df()
        budgets = conn.execute(
            f"SELECT cluster, cds, budget FROM {prefix}.capability_degradation WHERE variant = ?", [variant]
        ).df()
    candidates = [
        Candidate(r.sample_id, int(r.cluster), float(r.ies), float(r.jsd), frozenset(r.concepts))
        for r in frame.itertuples(index=False)
    ]
    return candidates, budgets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", required=True)
    parser.add_argument("--schema", default="paser")
    parser.add_argument("--variant", help="the variant to replay (default: the first)")
    parser.add_argument("--taus", default="0,0.1,0.2,0.25,0.3,0.5,1")
    parser.add_argument("--first", type=int, default=3000, help="report acceptance over the first N candidates")
    args = parser.parse_args()
    candidates, budgets = load(args.db, args.schema, args.variant)
    quota = dict(zip(budgets["cluster"].astype(int), budgets["budget"].astype(int), strict=True))
    cds = dict(zip(budgets["cluster"].astype(int), budgets["cds"].astype(float), strict=True))
    summary = {}
    for tau in [float(t) for t in args.taus.split(",")]:
        result = select(candidates, quota, cds, tau)
        considered = [d for d in result.decisions if d.decision != BUDGET_FULL]
        first = considered[: args.first]
        rows = []
        for cluster in sorted(quota):
            mine = [d for d in considered if d.cluster == cluster]
            chosen = sum(d.decision == SELECTED for d in mine)
            rows.append(
                {
                    "cluster": cluster,
                    "budget": quota[cluster],
                    "considered": len(mine),
                    "selected": chosen,
                    "acceptance": round(chosen / len(mine), 3) if mine else float("nan"),
                }
            )
        table = pd.DataFrame(rows)
        selected = [d for d in result.decisions if d.decision == SELECTED]
        mean_ies = sum(d.ies for d in selected) / max(len(selected), 1)
        mean_share = sum(d.conflict_share for d in selected) / max(len(selected), 1)
        acceptance = sum(d.decision == SELECTED for d in considered) / max(len(considered), 1)
        acceptance_first = sum(d.decision == SELECTED for d in first) / max(len(first), 1)
        print(
            f"\ntau = {tau}: budget {result.budget}, selected {result.selected}, shortfall {result.shortfall}, "
            f"refill rounds {result.refill_rounds}, acceptance {acceptance:.3f} "
            f"({acceptance_first:.3f} over the first {len(first)} candidates)"
        )
        print(table.to_string(index=False))
        summary[str(tau)] = {
            "selected": result.selected,
            "budget": result.budget,
            "shortfall": result.shortfall,
            "considered": len(considered),
            "acceptance": round(acceptance, 4),
            "acceptance_first": round(acceptance_first, 4),
            "selected_mean_ies": round(mean_ies, 6),
            "selected_mean_conflict_share": round(mean_share, 4),
        }
    print(json.dumps({"candidates": len(candidates), "taus": summary}))


if __name__ == "__main__":
    main()
