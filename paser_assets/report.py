"""One self-contained HTML report per variant, written next to its export (``<export_dir>/<variant>/report.html``).

The report is for people: what the clusters are, how much each lost to pruning, how the budget was spread,
how k was chosen, which samples were selected and why the others were not, and (when recovery was run) how
well each method's fine-tune undid the damage. Every picture is a PNG inlined as a data URI and every
style is inline, so the file can be mailed or opened offline; every piece of text from the data is
escaped, since instructions are arbitrary user text.

The pieces are pure: :func:`load_report_data` reads the tables into a :class:`ReportData`,
:func:`render_report` turns one into HTML, and the chart builders (``*_chart``) turn frames into the
figures of :mod:`paser_assets.charts`, which the assets reuse for the Dagster UI.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from paser_assets import charts, storage
from paser_assets.core.consistency import BUDGET_FULL, CONCEPT_CONFLICT, SELECTED
from paser_assets.core.recovery_metrics import REFERENCE_ARMS
from paser_assets.models.adapters import TrainingRecord

REPORT_NAME = "report.html"
PREVIEW_ROWS = 20
TEXT_CHARS = 240  # instruction and input are cut to this in the previews; the export holds them whole


@dataclass(frozen=True)
class ReportData:
    """Everything one variant's report shows, as frames with the columns of the tables they come from.

    ``clusters``: sample_id, cluster, map_x, map_y. ``profiles``: cluster, size, top_keyphrases, examples.
    ``degradation``: capability_degradation of every variant (for the comparison). ``spectrum``:
    cluster_spectrum. ``selection``: the variant's selection rows with instruction and input.
    ``comparison``: the variant's recovery_comparison rows. ``loss_curves``: method -> (steps, losses).
    """

    variant: str
    clusters: pd.DataFrame
    profiles: pd.DataFrame
    degradation: pd.DataFrame
    spectrum: pd.DataFrame
    selection: pd.DataFrame
    comparison: pd.DataFrame = field(default_factory=pd.DataFrame)
    loss_curves: Mapping[str, tuple[Sequence[int], Sequence[float]]] = field(default_factory=dict)
    pruned: Mapping[str, object] = field(default_factory=dict)

    @property
    def budgets(self) -> pd.DataFrame:
        """This variant's rows of capability_degradation, by cluster."""
        rows = self.degradation[self.degradation["variant"] == self.variant]
        return rows.sort_values("cluster").reset_index(drop=True)

    @property
    def chosen_k(self) -> int:
        chosen = _chosen_k(self.spectrum)
        return chosen if chosen is not None else int(self.clusters["cluster"].nunique())


def _chosen_k(spectrum: pd.DataFrame) -> int | None:
    """The k that cluster_spectrum marks as chosen; None when the spectrum was not recorded."""
    chosen = spectrum[spectrum["chosen"].astype(bool)] if len(spectrum) else spectrum
    return int(chosen["k"].iloc[0]) if len(chosen) else None


# -- labels


def cluster_names(profiles: pd.DataFrame, clusters: pd.DataFrame, terms: int = 3) -> dict[int, str]:
    """Cluster id -> "id: keyphrase, keyphrase, keyphrase", from cluster_profiles.

    Empty (charts then show bare ids) when the profiles do not describe the current clusters, cluster by
    cluster and size by size: after a re-clustering the ids are reused for other groups of samples, and
    labelling them with the old keyphrases would be worse than no label."""
    if profiles.empty or clusters.empty:
        return {}
    counts = clusters["cluster"].value_counts()
    sizes = dict(zip(profiles["cluster"].astype(int), profiles["size"].astype(int), strict=True))
    if sizes != {int(c): int(n) for c, n in counts.items()}:
        return {}
    names = {}
    for cluster, phrases in zip(profiles["cluster"].astype(int), profiles["top_keyphrases"], strict=True):
        phrases = [str(p) for p in (phrases if phrases is not None else [])][:terms]
        names[cluster] = f"{cluster}: {', '.join(phrases)}" if phrases else str(cluster)
    return names


def load_cluster_names(conn: duckdb.DuckDBPyConnection) -> dict[int, str]:
    """:func:`cluster_names` of the tables in ``conn``; empty when the profiles are not there yet."""
    if not (storage.table_exists(conn, "cluster_profiles") and storage.table_exists(conn, "clusters")):
        return {}
    return cluster_names(
        storage.read_table(conn, "cluster_profiles", "cluster, size, top_keyphrases"),
        storage.read_table(conn, "clusters", "cluster"),
    )


def _label(names: Mapping[int, str], cluster: object) -> str:
    return names.get(int(cluster), str(cluster))


# -- charts built from the tables' frames (the assets show the same ones in the UI)


def _stderr(budgets: pd.DataFrame) -> np.ndarray:
    """Standard error of each cluster's CDS (a mean of ``size`` JSDs): jsd_std / sqrt(size)."""
    return budgets["jsd_std"].fillna(0.0).to_numpy() / np.sqrt(budgets["size"].clip(lower=1).to_numpy())


def cds_chart(budgets: pd.DataFrame, names: Mapping[int, str], variant: str) -> Figure:
    """CDS ± standard error and budget per cluster of one variant (its capability_degradation rows)."""
    total = int(budgets["budget"].sum())
    return charts.cds_figure(
        [_label(names, c) for c in budgets["cluster"]],
        budgets["cds"].tolist(),
        _stderr(budgets).tolist(),
        budgets["budget"].astype(int).tolist(),
        budgets["size"].astype(int).tolist(),
        f"{variant}: capability degradation and budget per cluster (budget {total})",
    )


def cds_comparison_chart(degradation: pd.DataFrame, names: Mapping[int, str]) -> Figure | None:
    """Each variant's CDS per cluster side by side; None with fewer than two variants."""
    variants = sorted(degradation["variant"].unique())
    if len(variants) < 2:
        return None
    clusters = sorted(int(c) for c in degradation["cluster"].unique())
    series = {}
    for variant in variants:
        rows = degradation[degradation["variant"] == variant].set_index("cluster").reindex(clusters)
        # A cluster the variant has no row for: no CDS bar, and no error bar either.
        series[variant] = (rows["cds"].tolist(), np.nan_to_num(_stderr(rows)).tolist())
    return charts.cds_comparison_figure(
        [_label(names, c) for c in clusters], series, f"CDS per cluster of {len(variants)} variants"
    )


def eigengap_chart(spectrum: pd.DataFrame) -> Figure:
    """The leading eigenvalues and eigengaps of the clustering (its cluster_spectrum rows), k marked."""
    spectrum = spectrum.sort_values("k")
    k = _chosen_k(spectrum) or 0
    criterion = str(spectrum["criterion"].iloc[0]) if len(spectrum) else ""
    how = "largest eigengap" if criterion.startswith("eigengap") else criterion or "unknown"
    return charts.eigengap_figure(
        spectrum["k"].astype(int).tolist(),
        spectrum["eigenvalue"].tolist(),
        spectrum["eigengap"].tolist(),  # NaN after the last eigenvalue: no bar
        k,
        f"Spectrum of the neighbour graph: k = {k} ({how})",
    )


def cluster_map_chart(data: ReportData, names: Mapping[int, str]) -> Figure:
    selected = set(data.selection.loc[data.selection["decision"] == SELECTED, "sample_id"])
    clusters = data.clusters
    mask = clusters["sample_id"].isin(selected).to_numpy()
    return charts.cluster_map_figure(
        clusters["map_x"].to_numpy(dtype=float),
        clusters["map_y"].to_numpy(dtype=float),
        clusters["cluster"].to_numpy(),
        f"{data.variant}: {len(clusters)} instructions in {clusters['cluster'].nunique()} clusters, "
        f"{int(mask.sum())} selected",
        names,
        mask,
    )


def _decision_groups(selection: pd.DataFrame) -> dict[str, pd.DataFrame]:
    groups = {
        "selected": selection[selection["decision"] == SELECTED],
        "rejected: concept conflict": selection[selection["decision"] == CONCEPT_CONFLICT],
        "not reached: budget full": selection[selection["decision"] == BUDGET_FULL],
    }
    return {name: rows for name, rows in groups.items() if len(rows)}


def jsd_histogram_chart(selection: pd.DataFrame, variant: str) -> Figure:
    groups = {name: rows["jsd"].tolist() for name, rows in _decision_groups(selection).items()}
    return charts.histogram_figure(groups, f"{variant}: per-sample JSD of the candidates", "JSD (nats)")


def _recovery_metrics(comparison: pd.DataFrame) -> list[str]:
    metrics = set(comparison["metric"])
    return [m for m in ["heldout_nll", *sorted(m for m in metrics if str(m).startswith("ppl:"))] if m in metrics]


def _recovered_arms(comparison: pd.DataFrame) -> list[str]:
    return [m for m in dict.fromkeys(comparison["method"]) if m not in REFERENCE_ARMS]


def recovery_chart(comparison: pd.DataFrame, variant: str) -> Figure | None:
    """Recovery ratio per method on the held-out NLL and each perplexity; None without recovered arms."""
    metrics, arms = _recovery_metrics(comparison), _recovered_arms(comparison)
    if not metrics or not arms:
        return None
    ratios = comparison.pivot_table(index="method", columns="metric", values="recovery_ratio", aggfunc="first")
    ratios = ratios.reindex(index=arms, columns=metrics)
    series = {arm: ratios.loc[arm].tolist() for arm in arms}
    return charts.grouped_bars_figure(
        metrics, series, f"{variant}: recovery ratio per method", "(recovered − pruned) / (original − pruned)"
    )


def loss_chart(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], variant: str) -> Figure | None:
    curves = {method: curve for method, curve in curves.items() if len(curve[0])}
    if not curves:
        return None
    return charts.lines_figure(curves, f"{variant}: LoRA training loss per method", "step", "loss")


# -- HTML

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
nav a { margin-right: 1em; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.5em; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.5em; vertical-align: top; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { max-width: 32em; white-space: pre-wrap; word-break: break-word; }
.note { color: #555; font-size: 0.9em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _missing(value: object) -> bool:
    """None, NaN or pd.NA (the nullable integer columns of recovery_comparison give pd.NA)."""
    return value is None or (np.isscalar(value) and bool(pd.isna(value))) or value is pd.NA


def _cut(text: object, limit: int = TEXT_CHARS) -> str:
    text = "" if _missing(text) else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _number(value: object, digits: int = 4) -> str:
    """Integers with thousands separators, floats to ``digits`` significant digits: the JSD of a mildly pruned
    model is around 1e-5, which a fixed number of decimals would show as 0.0000."""
    if _missing(value):
        return "–"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    return f"{float(value) + 0.0:.{digits}g}"  # + 0.0 turns -0.0 into 0.0


def _table(header: Sequence[str], rows: Iterable[Sequence[tuple[str, str]]]) -> str:
    """An HTML table; each cell is (css class, already escaped html)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="{c}">{v}</td>' for c, v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(figure: Figure, alt: str, caption: str) -> str:
    return (
        f'<figure><img src="{charts.data_uri(figure)}" alt="{_e(alt)}"><figcaption>{_e(caption)}</figcaption></figure>'
    )


def _facts(data: ReportData) -> str:
    budgets, selection = data.budgets, data.selection
    budget = int(budgets["budget"].sum()) if len(budgets) else 0
    selected = int((selection["decision"] == SELECTED).sum())
    criterion = str(data.spectrum["criterion"].iloc[0]) if len(data.spectrum) else "not recorded"
    facts = [("variant", data.variant)]
    if data.pruned:
        sparsity = data.pruned.get("sparsity")
        spec = f"{data.pruned.get('kind', '')} {data.pruned.get('spec', '')}".strip()
        if not _missing(sparsity):
            spec += f" (measured sparsity {float(sparsity):.1%})"
        facts.append(("pruned model", spec))
    spending = [("budget", f"{budget:,}"), ("selected", f"{selected:,} (shortfall {max(budget - selected, 0):,})")]
    facts += [
        ("instructions in the pool", f"{len(data.clusters):,}"),
        ("candidates (held-out split excluded)", f"{len(selection):,}"),
        ("chosen k (clusters)", f"k = {data.chosen_k}: {criterion}"),
        *spending,
        ("rejected as concept conflicts", f"{int((selection['decision'] == CONCEPT_CONFLICT).sum()):,}"),
        ("never reached (budget full)", f"{int((selection['decision'] == BUDGET_FULL).sum()):,}"),
    ]
    return '<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts) + "</dl>"


def _cluster_table(data: ReportData, names: Mapping[int, str]) -> str:
    budgets = data.budgets.assign(stderr=_stderr(data.budgets))
    chosen = data.selection[data.selection["decision"] == SELECTED].groupby("cluster").size()
    budget_of = _budget_of(data.budgets)
    examples = {}
    if names and "examples" in data.profiles:  # only when the profiles describe these clusters
        examples = {
            int(c): (list(e) if e is not None else [])
            for c, e in zip(data.profiles["cluster"], data.profiles["examples"], strict=True)
        }
    rows = []
    for row in budgets.itertuples(index=False):
        cluster = int(row.cluster)
        example = examples.get(cluster, [])
        rows.append(
            [
                ("text", _e(_label(names, cluster))),
                ("num", _number(int(row.size))),
                ("num", f"{_number(row.cds)} ± {_number(row.stderr, 2)}"),
                ("num", _number(budget_of.get(cluster, 0))),
                ("num", _number(int(chosen.get(cluster, 0)))),
                ("text", _e(_cut(example[0], 160)) if example else ""),
            ]
        )
    return _table(["cluster", "candidates", "CDS ± s.e.", "budget", "selected", "typical instruction"], rows)


def _budget_of(shares: pd.DataFrame) -> dict[int, int]:
    """cluster -> budget of a per-cluster budget frame."""
    return dict(zip(shares["cluster"].astype(int), shares["budget"].astype(int), strict=True))


def _sample_rows(rows: pd.DataFrame, names: Mapping[int, str], reasons: Mapping[str, str] | None) -> str:
    """The preview table of samples with their scores and decisions."""
    header = ["cluster", "rank", "instruction", "input", "JSD", "IES", "decision"]
    header += ["reason"] if reasons is not None else []
    cells = []
    for row in rows.itertuples(index=False):
        cell = [
            ("text", _e(_label(names, row.cluster))),
            ("num", _number(int(row.rank))),
            ("text", _e(_cut(row.instruction))),
            ("text", _e(_cut(row.input))),
            ("num", _number(row.jsd)),
            ("num", _number(row.ies)),
            ("text", _e(row.decision)),
        ]
        if reasons is not None:
            cell.append(("text", _e(reasons.get(row.sample_id, ""))))
        cells.append(cell)
    return _table(header, cells)


def rejection_reason(
    decision: str,
    pairs: Sequence[str] | None,
    share: float | None,
    budget: int | None,
) -> str:
    """Why a candidate was not selected, in words: the concept pairs it would have broken, or the full budget."""
    if decision == CONCEPT_CONFLICT:
        pairs = [str(p) for p in (pairs if pairs is not None else [])]
        if not pairs:
            return "concept conflict"
        shown = "; ".join(pairs[:4]) + (f"; +{len(pairs) - 4} more" if len(pairs) > 4 else "")
        whose = f"{float(share):.0%} of its concept pairs" if share is not None and not pd.isna(share) else "pairs"
        return f"{whose} are in the graph of the selection but never together there: {shown}"
    if decision == BUDGET_FULL:
        of = "" if budget is None else f" of {budget}"
        return f"not reached: the cluster's budget{of} was filled by samples of higher IES"
    return str(decision)


def _previews(data: ReportData, names: Mapping[int, str]) -> str:
    selection = data.selection
    selected = selection[selection["decision"] == SELECTED]
    selected = selected.sort_values(["score", "sample_id"], ascending=[False, True])
    rejected = selection[selection["decision"] != SELECTED].copy()
    # Conflicts first (the interesting rejections), each kind in the walks' order.
    rejected["order"] = (rejected["decision"] != CONCEPT_CONFLICT).astype(int)
    rejected = rejected.sort_values(["order", "score", "sample_id"], ascending=[True, False, True])
    budget_of = _budget_of(data.budgets)
    shown_rejected = rejected.head(PREVIEW_ROWS)
    reasons = {
        row.sample_id: rejection_reason(
            row.decision,
            row.conflict_pairs,
            row.conflict_share,
            budget_of.get(int(row.cluster)),
        )
        for row in shown_rejected.itertuples(index=False)
    }
    parts = [
        f'<h2 id="selected">Selected samples</h2><p class="note">{min(len(selected), PREVIEW_ROWS)} of '
        f"{len(selected):,} selected, highest IES first (text cut to {TEXT_CHARS} characters; the "
        "export holds every one whole).</p>",
        _sample_rows(selected.head(PREVIEW_ROWS), names, None),
        f'<h2 id="rejected">Rejected samples</h2><p class="note">{len(shown_rejected)} of {len(rejected):,} not '
        f"selected, concept conflicts first, highest IES first.</p>",
        _sample_rows(shown_rejected, names, reasons) if len(shown_rejected) else "<p>None.</p>",
    ]
    return "".join(parts)


def _recovery(data: ReportData) -> str:
    """The recovery section; empty without recovery rows for the variant."""
    comparison = data.comparison
    if comparison.empty:
        return ""
    parts = [
        '<h2 id="recovery">Recovery</h2><p class="note">As recorded in recovery_comparison when this report was '
        "written: materialize selection_export again after recovery_comparison to bring it up to date.</p>"
    ]
    chart = recovery_chart(comparison, data.variant)
    if chart is not None:
        parts.append(
            _figure(
                chart,
                "recovery ratio per method",
                "1 = all of the damage on that metric undone (the original model), 0 = none (the pruned model); "
                "no bar where the ratio is undefined (the original and pruned models score alike).",
            )
        )
    metrics = [m for m in [*_recovery_metrics(comparison), "task_average"] if m in set(comparison["metric"])]
    by_arm = {arm: rows.set_index("metric") for arm, rows in comparison.groupby("method", sort=False)}
    rows = []
    for arm, table in by_arm.items():
        cells = [("text", _e(arm))]
        for metric in metrics:
            value = table["value"].get(metric)
            stderr = table["stderr"].get(metric)
            text = _number(value, 5) + ("" if _missing(stderr) else f" ± {_number(stderr, 2)}")
            cells.append(("num", text))
        first = table.iloc[0]
        cells += [
            ("num", _number(table["recovery_ratio"].get("heldout_nll"), 3)),
            ("num", _number(None if pd.isna(first["train_samples"]) else int(first["train_samples"]))),
            ("num", _number(None if pd.isna(first["train_tokens"]) else int(first["train_tokens"]))),
            ("num", _number(first["train_seconds"], 3)),
        ]
        rows.append(cells)
    header = ["method", *metrics, "recovery ratio (held-out NLL)", "train samples", "train tokens", "train seconds"]
    parts.append(_table(header, rows))
    losses = loss_chart(data.loss_curves, data.variant)
    if losses is not None:
        parts.append(_figure(losses, "LoRA loss curves", "Training loss of each method's LoRA fine-tune, per step."))
    return "".join(parts)


def render_report(data: ReportData) -> str:
    """The report of one variant as a self-contained HTML page."""
    names = cluster_names(data.profiles, data.clusters)
    budgets = data.budgets
    title = f"PASER selection report: {data.variant}"
    sections = [
        f"<h1>{_e(title)}</h1>",
        '<nav><a href="#map">cluster map</a><a href="#cds">degradation</a><a href="#k">choice of k</a>'
        '<a href="#jsd">JSD</a><a href="#selected">selected</a><a href="#rejected">rejected</a>'
        + ('<a href="#recovery">recovery</a>' if len(data.comparison) else "")
        + "</nav>",
        _facts(data),
        '<h2 id="map">Cluster map</h2>',
        _figure(
            cluster_map_chart(data, names),
            "cluster map",
            "Each point is an instruction on the 2-D map of its embedding, coloured by cluster and labelled by "
            "the cluster's top keyphrases; selected samples are drawn larger with a black edge.",
        ),
        '<h2 id="cds">Capability degradation and budget per cluster</h2>',
        _figure(
            cds_chart(budgets, names, data.variant),
            "CDS and budget per cluster",
            "Left: the Capability Degradation Score (mean JSD between the original and the pruned model over "
            "the cluster's samples) with its standard error. Right: the samples the cluster may contribute "
            "(orange) out of its candidates (grey).",
        ),
        _cluster_table(data, names),
    ]
    comparison = cds_comparison_chart(data.degradation, names)
    if comparison is not None:
        sections.append(
            _figure(
                comparison,
                "CDS per cluster of every variant",
                "The same clusters scored against each pruned variant in the database.",
            )
        )
    sections.append('<h2 id="k">Choice of the number of clusters</h2>')
    if len(data.spectrum):
        sections.append(
            _figure(
                eigengap_chart(data.spectrum),
                "eigengap",
                f"Leading eigenvalues of the regularised normalised adjacency and the gaps between "
                f"them; the clustering used k = {data.chosen_k}.",
            )
        )
    else:
        sections.append(f"<p>k = {data.chosen_k}; its spectrum was not recorded (materialize clusters again).</p>")
    sections += [
        '<h2 id="jsd">Per-sample JSD</h2>',
        _figure(
            jsd_histogram_chart(data.selection, data.variant),
            "per-sample JSD",
            "Mean JSD over the response tokens of every candidate, by decision.",
        ),
        _previews(data, names),
        _recovery(data),
    ]
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


# -- reading the tables and writing the file


def _optional(conn: duckdb.DuckDBPyConnection, table: str, sql: str, params: list[object]) -> pd.DataFrame:
    """The rows of ``sql`` when ``table`` exists (recovery and the spectrum may never have been materialized)."""
    return conn.execute(sql, params).df() if storage.table_exists(conn, table) else pd.DataFrame()


def load_report_data(conn: duckdb.DuckDBPyConnection, variant: str) -> ReportData:
    """The report's frames for ``variant`` from the tables in ``conn`` (a connection in the package's schema)."""
    clusters = conn.execute("SELECT sample_id, cluster, map_x, map_y FROM clusters ORDER BY sample_id").df()
    profiles = _optional(conn, "cluster_profiles", "SELECT * FROM cluster_profiles ORDER BY cluster", [])
    degradation = conn.execute("SELECT * FROM capability_degradation ORDER BY variant, cluster").df()
    spectrum = _optional(conn, "cluster_spectrum", "SELECT * FROM cluster_spectrum ORDER BY k", [])
    selection = conn.execute(
        """
        SELECT s.sample_id, s.cluster, s.rank, s.ies, s.jsd, coalesce(s.score, s.ies) AS score, s.decision,
               s.conflict_pairs, s.conflict_share, s.refill_round, p.instruction, p.input
        FROM selection s JOIN recovery_pool p USING (sample_id)
        WHERE s.variant = ? ORDER BY s.cluster, s.rank
        """,
        [variant],
    ).df()
    pruned = _optional(
        conn, "pruned_model", "SELECT kind, spec, sparsity FROM pruned_model WHERE variant = ?", [variant]
    )
    comparison = _optional(
        conn, "recovery_comparison", "SELECT * FROM recovery_comparison WHERE variant = ?", [variant]
    )
    adapters = _optional(
        conn,
        "recovered_adapters",
        "SELECT method, path FROM recovered_adapters WHERE variant = ? ORDER BY method",
        [variant],
    )
    curves = {}
    for method, path in zip(adapters.get("method", []), adapters.get("path", []), strict=True):
        record = TrainingRecord.read(Path(path)) if Path(path).is_dir() else None  # adapters may have been removed
        if record is not None:
            curves[str(method)] = (record.steps, record.losses)
    return ReportData(
        variant=variant,
        clusters=clusters,
        profiles=profiles,
        degradation=degradation,
        spectrum=spectrum,
        selection=selection,
        comparison=comparison,
        loss_curves=curves,
        pruned=pruned.iloc[0].to_dict() if len(pruned) else {},
    )


def write_text_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`storage.write_atomically`: a reader sees the old report or the
    new one, never half of one."""
    # 0644: a report is meant to be shared like the export.
    storage.write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"), mode=0o644)


def write_report(conn: duckdb.DuckDBPyConnection, variant: str, folder: Path) -> Path:
    """Write ``folder / report.html`` for ``variant`` from the tables in ``conn``; returns its path."""
    path = Path(folder) / REPORT_NAME
    data = load_report_data(conn, variant)
    write_text_atomically(path, render_report(data))
    return path
