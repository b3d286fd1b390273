"""The measures pruning papers report recovery on, as pure functions over token ids and log-likelihoods.

- Perplexity (LLM-Pruner's ``ppl_dataset`` protocol): the text tokenized once, cut into non-overlapping
  windows of a fixed length, at most a fixed number of tokens, exp(mean token NLL) over all windows.
- Zero-shot multiple choice as lm-evaluation-harness scores it: the log-likelihood of each choice as a
  continuation of its context; ``acc`` by the largest sum, ``acc_norm`` by the largest sum per character
  of the continuation; WinoGrande by partial evaluation (the context up to the blank with each option
  filled in, the same rest of the sentence scored for both). Standard errors as the harness's
  ``mean_stderr``: the sample standard deviation over sqrt(n).
- The recovery ratio of a metric, and the macro average over groups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Style = Literal["question", "plain", "partial"]
STYLES: tuple[Style, ...] = ("question", "plain", "partial")


def text_windows(token_ids: Sequence[int], window: int, max_tokens: int) -> list[list[int]]:
    """Non-overlapping windows of ``window`` tokens from the start, at most ``max_tokens`` tokens in all.

    The last, shorter piece is dropped (as LLM-Pruner does), so every window has the same length."""
    if window < 2:
        raise ValueError(f"a perplexity window needs at least 2 tokens, got {window}")
    count = min(len(token_ids) // window, max_tokens // window)
    return [list(token_ids[i * window : (i + 1) * window]) for i in range(count)]


def mean_stderr(values: Sequence[float]) -> float:
    """SE = s / sqrt(n), s the sample standard deviation (lm-evaluation-harness's ``mean_stderr``)."""
    if len(values) < 2:
        return math.nan
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1) / math.sqrt(len(values)))


def choice_prompts(style: Style, context: str, choices: Sequence[str]) -> list[tuple[str, str]]:
    """(context, continuation) per choice, as the harness builds them for the task's style.

    - ``question`` (ARC, PIQA): context "Question: {context}\\nAnswer:", continuation " {choice}";
    - ``plain`` (HellaSwag): context as given, continuation " {choice}";
    - ``partial`` (WinoGrande): the sentence up to the blank ``_`` with the choice filled in, continuation
      " " + the rest of the sentence after the blank.
    """
    if style == "question":
        return [(f"Question: {context}\nAnswer:", f" {choice}") for choice in choices]
    if style == "plain":
        return [(context, f" {choice}") for choice in choices]
    if style == "partial":
        if "_" not in context:
            raise ValueError("a partially evaluated item needs a blank '_' in its context")
        blank = context.index("_")
        rest = " " + context[blank + 1 :].strip()
        return [(context[:blank] + choice, rest) for choice in choices]
    raise ValueError(f"unknown task style {style!r}; choose from {', '.join(STYLES)}")


def style_for(task_name: str) -> Style:
    """The harness's prompt style for a task, by its name: winogrande* is partial, hellaswag* plain, the rest
    (arc*, piqa*, and any other question-answer task) question style."""
    name = task_name.lower()
    if name.startswith("winogrande"):
        return "partial"
    if name.startswith("hellaswag"):
        return "plain"
    return "question"


def has_norm(style: Style) -> bool:
    """Whether the harness reports ``acc_norm`` for a style: not for WinoGrande, whose continuation is shared."""
    return style != "partial"


@dataclass(frozen=True)
class ItemScore:
    """One item: the index the model chose by total log-likelihood and by log-likelihood per character."""

    label: int
    choice: int
    choice_norm: int

    @property
    def correct(self) -> float:
        return float(self.choice == self.label)

    @property
    def correct_norm(self) -> float:
        return float(self.choice_norm == self.label)


def score_item(loglikelihoods: Sequence[float], continuations: Sequence[str], label: int) -> ItemScore:
    """acc: argmax_i ll_i; acc_norm: argmax_i ll_i / len(choice_i) (first index on ties, as numpy).

    The length is the choice's, in characters, without the space that joins it to the context: what
    lm-evaluation-harness 0.4 divides by (``len(choice)``, the target delimiter not counted)."""
    lls = np.asarray(loglikelihoods, dtype=np.float64)
    lengths = np.asarray([max(len(c.removeprefix(" ")), 1) for c in continuations], dtype=np.float64)
    return ItemScore(label, int(np.argmax(lls)), int(np.argmax(lls / lengths)))


@dataclass(frozen=True)
class TaskScore:
    items: int
    acc: float
    acc_stderr: float
    acc_norm: float | None
    acc_norm_stderr: float | None


def task_score(items: Sequence[ItemScore], style: Style) -> TaskScore:
    """acc and acc_norm (None where the harness has none) over the items, each with its standard error."""
    if not items:
        raise ValueError("no items to score")
    correct = [i.correct for i in items]
    norm = [i.correct_norm for i in items]
    with_norm = has_norm(style)
    return TaskScore(
        items=len(items),
        acc=float(np.mean(correct)),
        acc_stderr=mean_stderr(correct),
        acc_norm=float(np.mean(norm)) if with_norm else None,
        acc_norm_stderr=mean_stderr(norm) if with_norm else None,
    )


def task_average(scores: Mapping[str, TaskScore]) -> float:
    """The mean over tasks of acc_norm, or of acc where a task has no acc_norm."""
    if not scores:
        return math.nan
    return float(np.mean([s.acc_norm if s.acc_norm is not None else s.acc for s in scores.values()]))


def recovery_ratio(recovered: float, pruned: float, original: float) -> float:
    """(recovered - pruned) / (original - pruned): 0 is no recovery, 1 all of the damage undone."""
    gap = original - pruned
    if not math.isfinite(gap) or abs(gap) < 1e-12:
        return math.nan
    return (recovered - pruned) / gap


def macro_mean(values: Sequence[float], groups: Sequence[object], weights: Sequence[float] | None = None) -> float:
    """The mean over groups of each group's mean, so that one big group cannot hide the others.

    With ``weights`` each group's mean is weighted, sum_i w_i v_i / sum_i w_i (a token-weighted NLL: the
    weights are the tokens each value is a mean over)."""
    weights = [1.0] * len(values) if weights is None else weights
    if len(values) != len(groups) or len(values) != len(weights):
        raise ValueError("one group and one weight per value")
    if not values:
        return math.nan
    by_group: dict[object, list[tuple[float, float]]] = {}
    for value, group, weight in zip(values, groups, weights, strict=True):
        by_group.setdefault(group, []).append((float(value), float(weight)))
    return float(np.mean([weighted_mean(*zip(*pairs, strict=True)) for pairs in by_group.values()]))


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """sum_i w_i v_i / sum_i w_i; NaN when the weights sum to 0."""
    total = float(np.sum(weights))
    if total <= 0:
        return math.nan
    return float(np.dot(np.asarray(values, dtype=np.float64), np.asarray(weights, dtype=np.float64)) / total)


# Bands of response length, in tokens (end of sequence included): a word or two and the end, a phrase or a
# sentence, a paragraph, and longer. Fixed edges, so that bands compare across pools and runs.
LENGTH_BANDS: tuple[tuple[int, int | None], ...] = ((1, 3), (4, 12), (13, 60), (61, None))


LENGTH_BAND_NAMES = tuple(f"{low}+" if high is None else f"{low}-{high}" for low, high in LENGTH_BANDS)


def length_band(tokens: int) -> str:
    """The name of the band of :data:`LENGTH_BANDS` that a response of ``tokens`` tokens falls in: "1-3", "61+"."""
    for (low, high), name in zip(LENGTH_BANDS, LENGTH_BAND_NAMES, strict=True):
        if tokens >= low and (high is None or tokens <= high):
            return name
    raise ValueError(f"a response has at least one token, got {tokens}")
