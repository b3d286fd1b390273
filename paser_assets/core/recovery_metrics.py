"""The recovery comparison's metrics: held-out NLL four ways, perplexity, task accuracy, the harness's metrics,
recovery ratios."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from paser_assets.core.evaluation import (
    LENGTH_BAND_NAMES,
    TaskScore,
    length_band,
    macro_mean,
    mean_stderr,
    recovery_ratio,
    task_average,
    weighted_mean,
)

REFERENCE_ARMS = ("original", "pruned")  # their recovery ratios are 1 and 0 by definition: not charted
HEADLINE = ("heldout_nll", "heldout_nll_macro", "heldout_token_nll", "heldout_token_nll_macro", "task_average")


def metric_rows(
    heldout: pd.DataFrame,
    texts: pd.DataFrame,
    tasks: pd.DataFrame,
    group_kind: str,
    harness: pd.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """One model's metrics as (metric, value, stderr) rows: held-out NLL overall, macro, per group and per band
    of response length, perplexity per corpus, acc and acc_norm per task and the task average (of the plugin's
    own tasks), and every lm-evaluation-harness metric as ``harness:<task>:<metric>``.

    ``heldout_nll`` counts every held-out row once (the mean of each row's per-token NLL), so a 3-token answer
    weighs as much as a 200-token essay; ``heldout_token_nll`` counts every held-out token once (total NLL over
    total tokens, the log of the held-out perplexity). Both have their macro average over groups. The bands
    (``heldout_nll:length=1-3`` ...) show where a difference comes from: a one-word answer's NLL is mostly its
    form (the word, then the end), which fine-tuning on such answers learns fast."""
    nll, groups = heldout["nll"].tolist(), heldout["group"].tolist()
    tokens = heldout["tokens"].astype("float64").tolist()
    rows = [
        {"metric": "heldout_nll", "value": float(np.mean(nll)), "stderr": mean_stderr(nll)},
        {"metric": "heldout_nll_macro", "value": macro_mean(nll, groups), "stderr": math.nan},
        {"metric": "heldout_token_nll", "value": weighted_mean(nll, tokens), "stderr": math.nan},
        {"metric": "heldout_token_nll_macro", "value": macro_mean(nll, groups, tokens), "stderr": math.nan},
    ]
    for group, values in heldout.groupby("group")["nll"]:
        rows.append({"metric": f"heldout_nll:{group_kind}={group}", "value": float(values.mean()),
                     "stderr": mean_stderr(values.tolist())})  # fmt: skip
    bands = heldout["tokens"].map(length_band)
    for band in [name for name in LENGTH_BAND_NAMES if (bands == name).any()]:
        values = heldout.loc[bands == band, "nll"].tolist()
        rows.append({"metric": f"heldout_nll:length={band}", "value": float(np.mean(values)),
                     "stderr": mean_stderr(values)})  # fmt: skip
    for row in texts.itertuples(index=False):
        rows.append({"metric": f"ppl:{row.text}", "value": float(row.perplexity), "stderr": math.nan})
    scores: dict[str, TaskScore] = {}
    for row in tasks.itertuples(index=False):
        norm = None if pd.isna(row.acc_norm) else float(row.acc_norm)
        norm_se = None if pd.isna(row.acc_norm_stderr) else float(row.acc_norm_stderr)
        scores[row.task] = TaskScore(int(row.items), float(row.acc), float(row.acc_stderr), norm, norm_se)
        rows.append({"metric": f"acc:{row.task}", "value": float(row.acc), "stderr": float(row.acc_stderr)})
        if norm is not None:
            rows.append({"metric": f"acc_norm:{row.task}", "value": norm, "stderr": norm_se})
    if scores:
        rows.append({"metric": "task_average", "value": task_average(scores), "stderr": math.nan})
    for row in [] if harness is None else harness.itertuples(index=False):
        stderr = math.nan if pd.isna(row.stderr) else float(row.stderr)
        rows.append({"metric": f"harness:{row.task}:{row.metric}", "value": float(row.value), "stderr": stderr})
    return rows


def comparison_table(
    heldout: pd.DataFrame,
    texts: pd.DataFrame,
    tasks: pd.DataFrame,
    training: pd.DataFrame,
    order: list[str],
    harness: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """(method, metric, value, stderr, recovery_ratio, train_*) for every arm in ``order`` (original, pruned,
    then the methods). The held-out groups are the pool's labels when it has two or more, else the clusters.
    ``harness``: the arms' lm-evaluation-harness rows (arm, task, metric, value, stderr), if any."""
    labelled = heldout["family"].notna().all() and heldout["family"].nunique() >= 2
    group_kind = "family" if labelled else "cluster"
    heldout = heldout.assign(group=heldout[group_kind].astype(str))
    rows = []
    for arm in order:
        arm_harness = None if harness is None else harness[harness["arm"] == arm]
        for row in metric_rows(heldout[heldout["arm"] == arm], texts[texts["arm"] == arm], tasks[tasks["arm"] == arm],
                               group_kind, arm_harness):  # fmt: skip
            rows.append({"method": arm, **row})
    table = pd.DataFrame(rows, columns=["method", "metric", "value", "stderr"])
    reference = table[table["method"].isin(REFERENCE_ARMS)].pivot(index="metric", columns="method", values="value")
    table["recovery_ratio"] = [
        recovery_ratio(value, reference.at[metric, "pruned"], reference.at[metric, "original"])
        if metric in reference.index else math.nan
        for metric, value in zip(table["metric"], table["value"], strict=True)
    ]  # fmt: skip
    table = table.merge(training.rename(columns={"arm": "method"}), on="method", how="left")
    return table.astype({"train_samples": "Int64", "train_tokens": "Int64", "train_seconds": "float64"})
