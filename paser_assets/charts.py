"""Pictures for the Dagster UI, embedded in markdown metadata as PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: assets run in worker processes without a display
import matplotlib.pyplot as plt
import numpy as np


def _to_markdown(figure: plt.Figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{encoded})"


def cluster_map(x: np.ndarray, y: np.ndarray, labels: np.ndarray, title: str) -> str:
    """Scatter plot of the 2-D map coloured by cluster, as a markdown image."""
    figure, axes = plt.subplots(figsize=(6.4, 5.2))
    clusters = np.unique(labels)
    colours = plt.get_cmap("tab20" if len(clusters) > 10 else "tab10")
    for index, cluster in enumerate(clusters):
        mask = labels == cluster
        axes.scatter(x[mask], y[mask], s=4, color=colours(index % colours.N), label=str(cluster), alpha=0.7)
        axes.annotate(str(cluster), (float(np.median(x[mask])), float(np.median(y[mask]))), fontsize=9, weight="bold")
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    if len(clusters) <= 20:
        axes.legend(markerscale=3, fontsize=7, loc="best", title="cluster")
    return _to_markdown(figure, "cluster map")


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, ylabel: str) -> str:
    """A bar chart as a markdown image."""
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    axes.bar([str(label) for label in labels], list(values), color="#4c72b0")
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.tick_params(axis="x", labelrotation=45 if len(labels) > 12 else 0)
    return _to_markdown(figure, title)


def line_chart(x: Sequence[float], y: Sequence[float], title: str, xlabel: str, ylabel: str) -> str:
    figure, axes = plt.subplots(figsize=(6.4, 3.6))
    axes.plot(list(x), list(y), color="#4c72b0")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    return _to_markdown(figure, title)
