"""The study's arms registered by the lab, materialized through the product's graph up to baseline_selections
(no training: the recovery itself is the product's, tested in tests/assets/test_recovery.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pandas as pd
import pytest
from paser_lab.ablations import LENGTH_STRATA, instruction_divergence, length_strata
from paser_lab.arms import ARMS

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.core.allocation import allocate_budget
from paser_assets.methods import Candidates, choose, registry
from paser_assets.runner import run_graph

VARIANT = "magnitude-50"
LAB_ARMS = [arm.name for arm in ARMS]
TOKEN_BUDGETS = ("paser_tokens", "paser_tokens_density", "paser_tokens_strata", "paser_tokens_density_strata")


@dataclass
class Arms:
    database: PaserDuckDB


def query(database: PaserDuckDB, sql: str, parameters: list | None = None) -> list[tuple]:
    with duckdb.connect(database.database, read_only=True) as conn:
        conn.execute("USE paser.paser")
        return conn.execute(sql, parameters or []).fetchall()


def scalar(database: PaserDuckDB, sql: str, parameters: list | None = None):
    return query(database, sql, parameters)[0][0]


@pytest.fixture(scope="module")
def recovery(tmp_path_factory: pytest.TempPathFactory, lab_tiny_llama_dir: Path) -> Arms:
    """Every lab arm's selection, with PASER's and random's, on a tiny model's scores."""
    tmp_path = tmp_path_factory.mktemp("lab-arms")
    config = PaserConfig(
        demo_size=96,
        original_model=str(lab_tiny_llama_dir),
        prune_method="magnitude",
        model_cache_dir=str(tmp_path / "models"),
        export_dir=str(tmp_path / "export"),
        include_recovery=True,
        recovery_methods=["paser", "random", *LAB_ARMS],
    )
    database = PaserDuckDB(database=str(tmp_path / "paser.duckdb"))
    selection = f'+key:"{VARIANT}/baseline_selections"'  # the variant's asset and everything upstream
    run = run_graph(build_definitions(config, database), dg.DagsterInstance.ephemeral(), selection)
    assert run.success, run.failures()
    return Arms(database)


class NoModels:
    def tokenizer(self):
        raise AssertionError("these arms load no model")

    pruned_model = original_model = tokenizer


def picks_of(frame: pd.DataFrame, budgets: pd.DataFrame, budget: int) -> dict[str, list[str]]:
    """The lab arms' choices from a candidates frame, as baseline_selections makes them (tolerance 0)."""
    candidates = Candidates(frame, budgets, (), 0, 0.0, "cds", 64, NoModels())
    names = [name for name in LAB_ARMS if name != "paser_instruction_jsd"]
    return choose(names, candidates, budget, log=lambda _: None)


def test_the_lab_registers_every_arm_through_the_entry_point() -> None:
    found = registry()
    assert set(LAB_ARMS) <= set(found)
    assert {found[name].source.split()[0] for name in LAB_ARMS} == {"paser-lab"}
    assert len(LAB_ARMS) == 15


def test_every_arm_selects_from_the_selectable_rows(recovery: Arms) -> None:
    database = recovery.database
    budget = scalar(database, "SELECT sum(budget) FROM capability_degradation WHERE variant = ?", [VARIANT])
    sql = "SELECT method, count(DISTINCT sample_id), count(*) FROM baseline_selections WHERE variant = ? GROUP BY 1"
    counts = {method: (distinct, rows) for method, distinct, rows in query(database, sql, [VARIANT])}
    assert set(counts) == {"paser", "random", *LAB_ARMS}
    assert all(distinct == rows > 0 for distinct, rows in counts.values())
    for arm in ("uniform", "top_jsd", "paser_no_concepts"):
        assert counts[arm][0] == budget, arm
    for arm in [m for m in LAB_ARMS if m.startswith("paser_") and m not in ("paser_no_concepts", *TOKEN_BUDGETS)]:
        assert 0 < counts[arm][0] <= budget, arm  # the concept filter may leave an arm short
    held = scalar(
        database,
        "SELECT count(*) FROM baseline_selections WHERE sample_id IN (SELECT sample_id FROM holdout_split)",
    )
    assert held == 0
    sql = "SELECT sample_id FROM baseline_selections WHERE method = ?"
    selections = {m: frozenset(row[0] for row in query(database, sql, [m])) for m in LAB_ARMS}
    assert len(set(selections.values())) >= 5


def test_the_token_budget_spends_what_a_random_selection_of_the_sample_budget_has_on_average(
    recovery: Arms,
) -> None:
    database = recovery.database
    tokens = dict(
        query(
            database,
            """SELECT s.sample_id, d.prompt_tokens + d.response_tokens FROM selection s
            JOIN degradation_scores d USING (variant, sample_id) WHERE s.variant = ?""",
            [VARIANT],
        )
    )
    budget = scalar(database, "SELECT sum(budget) FROM capability_degradation WHERE variant = ?", [VARIANT])
    target = round(budget * sum(tokens.values()) / len(tokens))
    sql = "SELECT sample_id FROM baseline_selections WHERE variant = ? AND method = ? ORDER BY rank"
    clusters = scalar(database, "SELECT count(*) FROM capability_degradation WHERE variant = ?", [VARIANT])
    chosen = {arm: [row[0] for row in query(database, sql, [VARIANT, arm])] for arm in TOKEN_BUDGETS}
    for arm in TOKEN_BUDGETS:
        spent = sum(tokens[sample_id] for sample_id in chosen[arm])
        # Every cluster (every stratum of a cluster, for the strata arm) stops at the first sample that reaches its
        # share, so each overshoots by less than one sample.
        parts = clusters * (LENGTH_STRATA if arm.endswith("_strata") else 1)
        assert target <= spent < target + parts * max(tokens.values()), arm
    # PASER's own selection spends fewer tokens per sample than the average row: the token budget takes more.
    paser = [row[0] for row in query(database, "SELECT sample_id FROM selection WHERE decision = 'selected'")]
    if sum(tokens[s] for s in paser) < target:
        assert len(chosen["paser_tokens"]) > len(paser)
    # The density arm walks each cluster by JSD x response tokens / training tokens, highest first.
    scores = query(
        database,
        """SELECT d.sample_id, c.cluster, d.jsd * d.response_tokens / (d.prompt_tokens + d.response_tokens)
        FROM degradation_scores d JOIN clusters c USING (sample_id) WHERE d.variant = ?""",
        [VARIANT],
    )
    density, cluster_of = {i: e for i, _, e in scores}, {i: c for i, c, _ in scores}
    for cluster in set(cluster_of[i] for i in chosen["paser_tokens_density"]):
        walked = [density[i] for i in chosen["paser_tokens_density"] if cluster_of[i] == cluster]
        assert walked == sorted(walked, reverse=True), cluster
    assert chosen["paser_tokens_density"] != chosen["paser_tokens"]
    # The strata arms walk by IES or by density, inside each (cluster, response-length stratum).
    lengths = dict(query(database, "SELECT sample_id, response_tokens FROM degradation_scores WHERE variant = ?",
                         [VARIANT]))  # fmt: skip
    ids = sorted(lengths)
    stratum = dict(zip(ids, length_strata([lengths[i] for i in ids], LENGTH_STRATA), strict=True))
    ies = dict(query(database, "SELECT sample_id, ies FROM degradation_scores WHERE variant = ?", [VARIANT]))
    for arm, order in (("paser_tokens_strata", ies), ("paser_tokens_density_strata", density)):
        for part in {(cluster_of[i], stratum[i]) for i in chosen[arm]}:
            walked = [order[i] for i in chosen[arm] if (cluster_of[i], stratum[i]) == part]
            assert walked == sorted(walked, reverse=True), (arm, part)
    assert chosen["paser_tokens_strata"] != chosen["paser_tokens"]


def test_instruction_divergence_is_the_mean_jsd_over_the_instruction_tokens(tmp_path: Path) -> None:
    """The reference code's signal: JSD of the two models' next-token distributions at the instruction's own
    positions, checked against the models' full logits; zero for a model against itself."""
    import torch
    from tiny_models import build_tiny_llama, build_tiny_tokenizer

    from paser_assets.core.divergence import jensen_shannon

    tokenizer = build_tiny_tokenizer()
    original, pruned = (build_tiny_llama(len(tokenizer), seed=seed) for seed in (0, 1))
    rows = pd.DataFrame(
        {
            "sample_id": ["a", "b"],
            "instruction": ["Summarise the report.", "Name three colours of the sky at dusk"],
            "input": ["", "over the sea"],
            "output": ["ignored", "also ignored"],
        }
    )
    divergence = instruction_divergence(original, pruned, tokenizer, rows, max_tokens=64)
    for row in rows.itertuples():
        text = f"{row.instruction}\n{row.input}" if row.input else row.instruction
        ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            expected = jensen_shannon(original(ids).logits[0, :-1], pruned(ids).logits[0, :-1]).mean().item()
        assert divergence[row.sample_id] == pytest.approx(expected, rel=1e-4), row.sample_id
    assert divergence["a"] != pytest.approx(divergence["b"])
    same = instruction_divergence(original, original, tokenizer, rows, max_tokens=64)
    assert max(same.values()) == pytest.approx(0.0, abs=1e-6)


def test_the_order_ablations_walk_each_cluster_by_their_own_order(recovery: Arms) -> None:
    """paser_order_jsd walks each cluster by JSD alone, highest first, at PASER's per-cluster budgets."""
    database = recovery.database
    sql = "SELECT sample_id FROM baseline_selections WHERE variant = ? AND method = ? ORDER BY rank"
    rows = query(
        database,
        """SELECT d.sample_id, c.cluster, d.jsd FROM degradation_scores d JOIN clusters c USING (sample_id)
        WHERE d.variant = ?""",
        [VARIANT],
    )
    jsd, cluster_of = {i: j for i, _, j in rows}, {i: c for i, c, _ in rows}
    by_jsd = [row[0] for row in query(database, sql, [VARIANT, "paser_order_jsd"])]
    for cluster in set(cluster_of.values()):
        walked = [jsd[i] for i in by_jsd if cluster_of[i] == cluster]
        assert walked == sorted(walked, reverse=True), cluster
    selected = "SELECT sample_id FROM selection WHERE variant = ? AND decision = 'selected'"
    paser = [row[0] for row in query(database, selected, [VARIANT])]
    shares = {c: sum(cluster_of[i] == c for i in paser) for c in set(cluster_of.values())}
    for arm in ("paser_order_jsd", "paser_order_random"):
        chosen = [row[0] for row in query(database, sql, [VARIANT, arm])]
        assert {c: sum(cluster_of[i] == c for i in chosen) for c in shares} == shares, arm
    # The selection table keeps the real IES of every row (the ablations do not write their order over it).
    assert (
        scalar(
            database,
            """SELECT count(*) FROM selection s JOIN degradation_scores d USING (variant, sample_id)
        WHERE s.variant = ? AND s.ies IS DISTINCT FROM d.ies""",
            [VARIANT],
        )
        == 0
    )


def test_the_excess_nll_arms_walk_each_cluster_by_the_excess_nll(recovery: Arms) -> None:
    """paser_excess_nll walks each cluster by max(0, pruned NLL - original NLL) / log(cost), the no-cost arm by the
    excess alone, both at PASER's sample budget."""
    database = recovery.database
    rows = query(
        database,
        """SELECT d.sample_id, c.cluster, greatest(d.pruned_nll - d.original_nll, 0), ln(d.cost)
        FROM degradation_scores d JOIN clusters c USING (sample_id) WHERE d.variant = ?""",
        [VARIANT],
    )
    cluster_of = {i: c for i, c, _, _ in rows}
    walk_keys = {
        "paser_excess_nll": {i: excess / log_cost for i, _, excess, log_cost in rows},
        "paser_excess_nll_no_cost": {i: excess for i, _, excess, _ in rows},
    }
    budget = scalar(database, "SELECT sum(budget) FROM capability_degradation WHERE variant = ?", [VARIANT])
    sql = "SELECT sample_id FROM baseline_selections WHERE variant = ? AND method = ? ORDER BY rank"
    for arm, key in walk_keys.items():
        chosen = [row[0] for row in query(database, sql, [VARIANT, arm])]
        assert len(chosen) == budget, arm
        for cluster in set(cluster_of.values()):
            walked = [key[i] for i in chosen if cluster_of[i] == cluster]
            assert walked == sorted(walked, reverse=True), (arm, cluster)


def test_the_excess_nll_arms_allocate_by_the_mean_excess_nll() -> None:
    """Without concept conflicts (no refill), each cluster's share is the allocation by its mean excess NLL, not by
    its CDS of JSD: here the JSD favours cluster 0 and the excess NLL cluster 2."""
    clusters, per_cluster = 3, 10
    rows = []
    for c in range(clusters):
        for k in range(per_cluster):
            rows.append({
                "sample_id": f"c{c}-{k}", "cluster": c, "jsd": 0.3 - 0.1 * c + 0.001 * k,
                "original_nll": 2.0, "pruned_nll": 2.0 + 0.2 * (c + 1) + 0.01 * k,
                "cost": (10 + k) ** 2, "response_tokens": 5 + k, "tokens": 10 + k, "concepts": [],
            })  # fmt: skip
    candidates = pd.DataFrame(rows)
    candidates["ies"] = candidates["jsd"] / np.log(candidates["cost"])
    cds = candidates.groupby("cluster")["jsd"].mean().to_numpy()
    sizes = [per_cluster] * clusters
    budgets = pd.DataFrame({"cluster": range(clusters), "cds": cds, "budget": allocate_budget(12, cds, sizes)})
    picks = picks_of(candidates, budgets, 12)
    mean_excess = (candidates["pruned_nll"] - candidates["original_nll"]).groupby(candidates["cluster"]).mean()
    expected = list(allocate_budget(12, mean_excess.to_numpy(), sizes))
    for arm in ("paser_excess_nll", "paser_excess_nll_no_cost"):
        counts = [sum(i.startswith(f"c{c}-") for i in picks[arm]) for c in range(clusters)]
        assert counts == expected, arm
    assert expected[2] > expected[0] and budgets["budget"].iloc[0] > budgets["budget"].iloc[2]
    # Inside a cluster the excess grows with k and the cost too: IES and the excess alone take different ends.
    assert "c2-9" in picks["paser_excess_nll_no_cost"] and "c2-0" in picks["paser_excess_nll"]
