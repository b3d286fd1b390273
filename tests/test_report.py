"""The HTML report on small hand-made frames: self-contained, one inlined PNG per picture, text escaped."""

from __future__ import annotations

import base64
import re
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from paser_assets.report import (
    REPORT_NAME,
    ReportData,
    cluster_names,
    rejection_reason,
    render_report,
    write_text_atomically,
)

VARIANT = "wanda-50"
SCRIPT = "<script>alert('x')</script> sort a list"
DATA_IMAGE = '<img src="data:image/png;base64,'


def frames(variants: int = 2, recovery: bool = True) -> ReportData:
    """Three clusters of 8 samples; sample s0 has a '<script>' instruction; every decision occurs."""
    rng = np.random.default_rng(0)
    ids = [f"s{i}" for i in range(24)]
    cluster = np.repeat([0, 1, 2], 8)
    clusters = pd.DataFrame(
        {"sample_id": ids, "cluster": cluster, "map_x": rng.normal(size=24) + cluster, "map_y": rng.normal(size=24)}
    )
    profiles = pd.DataFrame(
        {
            "cluster": [0, 1, 2],
            "size": [8, 8, 8],
            "top_keyphrases": [["python", "list", "sort"], ["poem", "rhyme"], ["<b>html</b>", "tag"]],
            "examples": [["Sort a list"], ["Write a poem"], ["Explain <b>"]],
        }
    )
    degradation = pd.concat(
        [
            pd.DataFrame(
                {
                    "variant": name,
                    "cluster": [0, 1, 2],
                    "size": [8, 8, 8],
                    "cds": [0.1 + 0.05 * v, 0.2, 0.05],
                    "jsd_std": [0.02, 0.03, 0.01],
                    "mean_ies": [0.01, 0.02, 0.005],
                    "budget": [3, 5, 2],
                    "budget_share": [0.3, 0.5, 0.2],
                }
            )
            for v, name in enumerate([VARIANT, "magnitude-50"][:variants])
        ]
    )
    spectrum = pd.DataFrame(
        {
            "k": [1, 2, 3, 4, 5],
            "eigenvalue": [1.0, 0.95, 0.9, 0.4, 0.35],
            "eigengap": [0.05, 0.05, 0.5, 0.05, np.nan],
            "chosen": [False, False, True, False, False],
            "criterion": "eigengap of the regularised normalised adjacency over k in [2, 4]",
        }
    )
    decisions = (["selected"] * 3 + ["concept_conflict"] * 2 + ["budget_full"] * 3) * 3
    selection = pd.DataFrame(
        {
            "sample_id": ids,
            "cluster": cluster,
            "rank": np.tile(np.arange(1, 9), 3),
            "ies": rng.uniform(size=24),
            "jsd": rng.uniform(0, 0.3, size=24),
            "decision": decisions,
            "score": 0.0,  # the walk's score is the IES: set below
            "conflict_pairs": [["list | poem", "<i> | sort"] if d == "concept_conflict" else [] for d in decisions],
            "conflict_share": [0.5 if d == "concept_conflict" else 0.0 for d in decisions],
            "refill_round": 0,
            "instruction": [SCRIPT, *(f"instruction {i}" for i in range(1, 24))],
            "input": "",
        }
    )
    selection["score"] = selection["ies"]
    comparison = pd.DataFrame()
    curves: dict[str, tuple[list[int], list[float]]] = {}
    if recovery:
        rows = []
        for method, nll, ppl, ratio in [
            ("original", 1.0, 10.0, 1.0),
            ("pruned", 2.0, 30.0, 0.0),
            ("paser", 1.4, 18.0, 0.6),
            ("random", 1.7, 24.0, 0.3),
        ]:
            trained = method not in ("original", "pruned")
            for metric, value in [("heldout_nll", nll), ("ppl:stdlib_docs", ppl), ("acc:tiny", 0.5)]:
                rows.append(
                    {
                        "variant": VARIANT,
                        "method": method,
                        "metric": metric,
                        "value": value,
                        "stderr": 0.01,
                        "recovery_ratio": ratio,
                        "train_samples": 10 if trained else pd.NA,
                        "train_tokens": 1000 if trained else pd.NA,
                        "train_seconds": 2.5 if trained else np.nan,
                    }
                )
        comparison = pd.DataFrame(rows).astype({"train_samples": "Int64", "train_tokens": "Int64"})
        curves = {"paser": ([1, 2, 3], [2.0, 1.5, 1.2]), "random": ([1, 2, 3], [2.0, 1.8, 1.7])}
    return ReportData(
        variant=VARIANT,
        clusters=clusters,
        profiles=profiles,
        degradation=degradation,
        spectrum=spectrum,
        selection=selection,
        comparison=comparison,
        loss_curves=curves,
        pruned={"kind": "recipe", "spec": "wanda:0.5", "sparsity": 0.5},
    )


@pytest.fixture(scope="module")
def page() -> str:
    return render_report(frames())


def test_the_report_is_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, flags=re.IGNORECASE)
    assert not re.search(r"<script|<link|<iframe|@import|url\(", page, flags=re.IGNORECASE)
    assert page.count("<img") == page.count(DATA_IMAGE)  # every picture is inlined


def test_one_inlined_png_per_picture(page: str) -> None:
    # map, CDS and budget, CDS of both variants, eigengap, JSD histogram, recovery ratios, loss curves
    assert page.count(DATA_IMAGE) == 7
    for encoded in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page):
        assert base64.b64decode(encoded).startswith(b"\x89PNG\r\n\x1a\n")
    # one variant and no recovery: the comparison and both recovery pictures are left out, not drawn empty
    alone = render_report(frames(variants=1, recovery=False))
    assert alone.count(DATA_IMAGE) == 4
    assert 'id="recovery"' not in alone


def test_every_text_from_the_data_is_escaped(page: str) -> None:
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; sort a list" in page
    assert "<b>html</b>" not in page and "2: &lt;b&gt;html&lt;/b&gt;, tag" in page  # a keyphrase label
    assert "&lt;i&gt; | sort" in page  # a conflict pair in the rejection reason
    assert "<i>" not in page


def test_the_report_names_the_variant_k_clusters_and_reasons(page: str) -> None:
    assert f"PASER selection report: {VARIANT}" in page
    assert "k = 3: eigengap of the regularised normalised adjacency" in page
    assert "0: python, list, sort" in page
    assert "wanda:0.5 (measured sparsity 50.0%)" in page
    assert "50% of its concept pairs are in the graph of the selection but never together there" in page
    assert "not reached: the cluster&#x27;s budget of 3 was filled by samples of higher IES" in page
    # the recovery table: the held-out NLL with its standard error, the training each arm used
    assert "1.4 ± 0.01" in page and "1,000" in page


def test_previews_show_the_highest_ies_first_and_conflicts_before_budget_full() -> None:
    data = frames(recovery=False)
    page = render_report(data)
    selected = data.selection[data.selection["decision"] == "selected"].sort_values("ies", ascending=False)
    rejected_table = page[page.index('id="rejected"') :]
    first_selected = page.index(f">{selected['instruction'].iloc[0]}<")
    second_selected = page.index(f">{selected['instruction'].iloc[1]}<")
    assert first_selected < second_selected < page.index('id="rejected"')
    assert rejected_table.index("concept_conflict") < rejected_table.index("budget_full")


def test_cluster_names_need_profiles_of_the_current_clusters() -> None:
    data = frames()
    assert cluster_names(data.profiles, data.clusters)[1] == "1: poem, rhyme"
    # After a re-clustering the profiles' sizes no longer match: bare ids rather than another cluster's words.
    stale = data.profiles.assign(size=[10, 6, 8])
    assert cluster_names(stale, data.clusters) == {}
    assert "0: python" not in render_report(replace(data, profiles=stale))


def test_rejection_reason_without_pairs_or_budget() -> None:
    assert rejection_reason("concept_conflict", [], 0.0, None) == "concept conflict"
    assert rejection_reason("budget_full", None, None, None).startswith("not reached: the cluster's budget was")
    assert rejection_reason("budget_full", None, None, 12) == (
        "not reached: the cluster's budget of 12 was filled by samples of higher IES"
    )


def test_the_report_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / REPORT_NAME
    write_text_atomically(path, "first")
    assert path.read_text() == "first" and stat.S_IMODE(path.stat().st_mode) == 0o644
    with pytest.raises(TypeError):
        write_text_atomically(path, b"not text")  # type: ignore[arg-type]  # fails half-way through the write
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == [REPORT_NAME]  # the temporary file was removed


def test_tiny_degradations_keep_their_digits() -> None:
    # A mildly pruned model's JSD is around 1e-5: fixed decimals would print every CDS as 0.0000.
    data = frames(variants=1, recovery=False)
    small = data.degradation.assign(cds=data.degradation["cds"] * 1e-4, jsd_std=data.degradation["jsd_std"] * 1e-4)
    page = render_report(replace(data, degradation=small))
    assert '<td class="num">1e-05 ± 7.1e-07</td>' in page
    assert "0.0000" not in page
