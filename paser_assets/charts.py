"""Pictures: matplotlib figures for the Dagster UI (markdown metadata) and the HTML report (data URIs).

Every chart is a function returning a :class:`matplotlib.figure.Figure`, so the UI and the report draw the
same picture; :func:`markdown` and :func:`data_uri` turn a figure into a PNG embedded as base64 (and close it).
Nothing here reads a table: callers hand in arrays and labels.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: assets run in worker processes without a display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

UI_DPI = 90
REPORT_DPI = 100
BLUE, ORANGE, GREY, RED = "#4c72b0", "#dd8452", "#b8b8b8", "#c44e52"


def png_bytes(figure: Figure, dpi: int = REPORT_DPI) -> bytes:
    """The figure as PNG bytes; the figure is closed (pyplot keeps every open figure alive otherwise)."""
    buffer = io.BytesIO()
    # No date or software stamp in the file: the same data gives the same bytes, so reports can be diffed.
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def data_uri(figure: Figure, dpi: int = REPORT_DPI) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(figure, dpi)).decode("ascii")


def markdown(figure: Figure, alt: str, dpi: int = UI_DPI) -> str:
    """The figure as a markdown image, which the Dagster UI shows in an asset's metadata."""
    return f"![{alt}]({data_uri(figure, dpi)})"


def _plain_ticks(axis: Axis) -> None:
    """Tick labels such as 1.2e-05 on the ticks themselves: JSDs of a mildly pruned model are tiny, and
    matplotlib's shared '1e-5' offset text sits on top of the axis label."""
    axis.set_major_locator(MaxNLocator(nbins=5))  # labels such as 1.2e-05 are wide: fewer of them
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))


def _palette(count: int) -> list[tuple[float, float, float, float]]:
    """Distinct colours for ``count`` categories: tab10, tab20, then a wrap of tab20 (the labels disambiguate)."""
    colours = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [colours(index % colours.N) for index in range(count)]


def _plain(text: str) -> str:
    """``text`` drawn as it is: a '$' pair in a keyphrase or a name would otherwise start matplotlib's mathtext."""
    return str(text).replace("$", r"\$")


def _wrap(label: str, width: int = 38) -> str:
    """A label cut to ``width`` characters, so that long keyphrases do not squeeze the plot."""
    label = str(label)
    return _plain(label if len(label) <= width else label[: width - 1] + "…")


def cluster_map_figure(
    x: np.ndarray,
    y: np.ndarray,
    labels: np.ndarray,
    title: str,
    names: Mapping[int, str] | None = None,
    selected: np.ndarray | None = None,
    size: tuple[float, float] = (9.0, 7.0),
) -> Figure:
    """The 2-D map coloured by cluster, each cluster labelled at its median by ``names`` (its keyphrases)
    or its id; ``selected`` (a boolean mask) draws those samples larger with a black edge."""
    figure, axes = plt.subplots(figsize=size)
    clusters = [int(c) for c in np.unique(labels)]
    colours = _palette(len(clusters))
    chosen = np.zeros(len(x), dtype=bool) if selected is None else np.asarray(selected, dtype=bool)
    # Marker size shrinks with the number of points so that 50k samples do not paint one blob.
    dot = float(np.clip(4000 / max(len(x), 1), 3, 30))
    for colour, cluster in zip(colours, clusters, strict=True):
        mask = labels == cluster
        name = names.get(cluster, str(cluster)) if names else str(cluster)
        axes.scatter(
            x[mask & ~chosen], y[mask & ~chosen], s=dot, color=colour, alpha=0.55, linewidths=0, label=_wrap(name)
        )
        if chosen[mask].any():
            axes.scatter(
                x[mask & chosen],
                y[mask & chosen],
                s=dot * 2.5 + 8,
                color=colour,
                edgecolors="black",
                linewidths=0.8,
                alpha=0.95,
            )
        axes.annotate(
            _wrap(name, 28),
            (float(np.median(x[mask])), float(np.median(y[mask]))),
            fontsize=8,
            weight="bold",
            ha="center",
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": colour, "alpha": 0.85},
        )
    axes.set_title(_plain(title))
    axes.set_xticks([])
    axes.set_yticks([])
    handles, texts = axes.get_legend_handles_labels()
    if selected is not None:
        handles.append(
            Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                markerfacecolor="white",
                markeredgecolor="black",
                markersize=7,
                label=f"selected ({int(chosen.sum())})",
            )
        )
        texts.append(handles[-1].get_label())
    if len(clusters) <= 24:
        axes.legend(
            handles,
            texts,
            markerscale=1.5,
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            title="cluster",
            frameon=False,
        )
    return figure


def cluster_map(
    x: np.ndarray,
    y: np.ndarray,
    labels: np.ndarray,
    title: str,
    names: Mapping[int, str] | None = None,
    selected: np.ndarray | None = None,
) -> str:
    """:func:`cluster_map_figure` as a markdown image."""
    return markdown(cluster_map_figure(x, y, labels, title, names, selected), "cluster map")


def cds_figure(
    labels: Sequence[str],
    cds: Sequence[float],
    stderr: Sequence[float],
    budget: Sequence[int],
    size: Sequence[int],
    title: str,
) -> Figure:
    """Per cluster, side by side: the CDS with its standard error, and the budget against the cluster's size.

    Horizontal bars, one row per cluster, so that keyphrase labels stay readable with 24 clusters."""
    rows = np.arange(len(labels))
    figure, (left, right) = plt.subplots(
        1, 2, figsize=(11.0, 1.4 + 0.36 * len(labels)), sharey=True, gridspec_kw={"width_ratios": [3, 2]}
    )
    left.barh(rows, list(cds), xerr=list(stderr), color=BLUE, ecolor="black", capsize=3)
    left.set_yticks(rows, [_wrap(label) for label in labels], fontsize=8)
    left.invert_yaxis()  # cluster 0 (the largest) on top
    left.set_xlabel("CDS = mean JSD of the cluster (nats), ± standard error")
    _plain_ticks(left.xaxis)
    right.barh(rows, list(size), color=GREY, label="samples in the cluster")
    right.barh(rows, list(budget), color=ORANGE, label="budget")
    for row, value in zip(rows, budget, strict=True):
        right.annotate(
            str(int(value)),
            (float(value), float(row)),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    right.set_xlabel("samples")
    right.legend(fontsize=7, loc="lower right")
    figure.suptitle(_plain(title))
    return figure


def cds_comparison_figure(
    labels: Sequence[str], series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str
) -> Figure:
    """Grouped horizontal bars: per cluster, each variant's CDS (``series``: variant -> (cds, stderr))."""
    rows = np.arange(len(labels))
    height = 0.8 / max(len(series), 1)
    figure, axes = plt.subplots(figsize=(10.0, 1.4 + 0.2 * len(labels) * max(len(series), 2)))
    for index, (colour, (variant, (cds, stderr))) in enumerate(zip(_palette(len(series)), series.items(), strict=True)):
        axes.barh(
            rows - 0.4 + height * (index + 0.5),
            list(cds),
            height=height,
            xerr=list(stderr),
            color=colour,
            ecolor="black",
            capsize=2,
            label=_plain(variant),
        )
    axes.set_yticks(rows, [_wrap(label) for label in labels], fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("CDS = mean JSD of the cluster (nats), ± standard error")
    _plain_ticks(axes.xaxis)
    axes.set_title(_plain(title))
    axes.legend(fontsize=8, title="variant", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return figure


def eigengap_figure(
    positions: Sequence[int], eigenvalues: Sequence[float], gaps: Sequence[float], chosen: int, title: str
) -> Figure:
    """The leading eigenvalues and the gaps between neighbours, the chosen number of clusters marked."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8.0, 6.0), sharex=True)
    top.plot(list(positions), list(eigenvalues), marker="o", color=BLUE)
    top.set_ylabel("eigenvalue λ_k")
    bars = bottom.bar(list(positions), list(gaps), color=[RED if k == chosen else BLUE for k in positions])
    bottom.set_ylabel("eigengap λ_k − λ_(k+1)")
    bottom.set_xlabel("k (number of clusters)")
    for axes in (top, bottom):
        axes.axvline(chosen, color=RED, linestyle="--", linewidth=1)
    finite_gaps = [g for g in gaps if np.isfinite(g)]
    if finite_gaps:
        bottom.set_ylim(0.0, max(max(finite_gaps), 1e-9) * 1.2)  # room for the label above the chosen bar
    if chosen in positions:
        bar = bars[list(positions).index(chosen)]
        bottom.annotate(
            f"chosen k = {chosen}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            xytext=(6, 4),
            textcoords="offset points",
            color=RED,
            weight="bold",
        )
    top.set_title(_plain(title))
    return figure


def histogram_figure(groups: Mapping[str, Sequence[float]], title: str, xlabel: str, bins: int = 30) -> Figure:
    """Stacked histograms of several groups on common bins: the bars add up to the whole distribution, and
    each colour shows which share of every bin went which way (counts, not densities: the sizes matter)."""
    values = [np.asarray(v, dtype=float) for v in groups.values()]
    values = [v[np.isfinite(v)] for v in values]
    finite = np.concatenate(values) if values else np.array([])
    edges = np.histogram_bin_edges(finite if finite.size else np.array([0.0, 1.0]), bins=bins)
    figure, axes = plt.subplots(figsize=(8.0, 4.0))
    if values:
        colours = [BLUE, ORANGE, GREY, RED][: len(values)] if len(values) <= 4 else _palette(len(values))
        names = [_plain(f"{name} ({len(data)})") for name, data in zip(groups, values, strict=True)]
        axes.hist(values, bins=edges, stacked=True, color=colours, label=names, edgecolor="white", linewidth=0.4)
        axes.legend(fontsize=8)
    axes.set_title(_plain(title))
    axes.set_xlabel(xlabel)
    _plain_ticks(axes.xaxis)
    axes.set_ylabel("samples")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of samples, never half a one
    return figure


def grouped_bars_figure(
    categories: Sequence[str], series: Mapping[str, Sequence[float]], title: str, ylabel: str
) -> Figure:
    """Vertical grouped bars: per category (a metric), one bar per series (a method); lines at 0 and 1 mark
    the pruned and the original model for a recovery ratio."""
    positions = np.arange(len(categories))
    width = 0.8 / max(len(series), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 + 0.9 * len(categories) * max(len(series), 1) * 0.5), 4.5))
    for index, (colour, (name, values)) in enumerate(zip(_palette(len(series)), series.items(), strict=True)):
        axes.bar(positions - 0.4 + width * (index + 0.5), list(values), width=width, color=colour, label=_plain(name))
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.axhline(1.0, color=RED, linewidth=0.8, linestyle="--")
    axes.set_xticks(
        positions,
        [_wrap(c, 24) for c in categories],
        rotation=20 if len(categories) > 4 else 0,
        ha="right" if len(categories) > 4 else "center",
    )
    axes.set_ylabel(ylabel)
    axes.set_title(_plain(title))
    axes.legend(fontsize=8, title="method", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return figure


def lines_figure(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str, ylabel: str
) -> Figure:
    """One line per series (name -> (x, y))."""
    figure, axes = plt.subplots(figsize=(8.0, 4.0))
    for colour, (name, (x, y)) in zip(_palette(len(series)), series.items(), strict=True):
        axes.plot(list(x), list(y), color=colour, label=_plain(name))
    axes.set_title(_plain(title))
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if len(series) > 1:
        axes.legend(fontsize=8)
    return figure


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str) -> str:
    """A bar chart as a markdown image."""
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    axes.bar([str(label) for label in labels], list(values), color=BLUE)
    axes.set_title(_plain(title))
    axes.set_ylabel(ylabel)
    axes.tick_params(axis="x", labelrotation=45 if len(labels) > 12 else 0)
    return markdown(figure, title)


def line_chart(x: Sequence[float], y: Sequence[float], title: str, xlabel: str, ylabel: str) -> str:
    """A line chart as a markdown image."""
    return markdown(lines_figure({ylabel: (x, y)}, title, xlabel, ylabel), title)
