"""Evaluation of a causal LM on text corpora (perplexity) and zero-shot multiple-choice tasks.

The protocols are in :mod:`paser_assets.core.evaluation`; this module tokenizes and runs the model. The
multiple-choice requests are tokenized as lm-evaluation-harness's ``HFLM`` does (no special tokens; a
context's trailing spaces moved to the continuation; the continuation's tokens are those of
context + continuation after the context's), and scored by the same batched pass as the held-out NLL
(:func:`paser_assets.models.training.response_nll`), with the output head in float32. The tasks PASER_EVAL_TASKS
gives lm-evaluation-harness (a harness task's name, or a harness YAML) run through the harness itself
(:mod:`paser_assets.models.harness`, an optional extra), on the same model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paser_assets.core.evaluation import (
    ItemScore,
    Style,
    TaskScore,
    choice_prompts,
    score_item,
    task_score,
    text_windows,
)
from paser_assets.models.scoring import EncodedSample
from paser_assets.models.training import response_nll
from paser_assets.progress import format_duration

if TYPE_CHECKING:
    from paser_assets.models.harness import HarnessResult


@dataclass(frozen=True)
class TaskItem:
    item_id: str
    context: str
    choices: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class TextScore:
    windows: int
    tokens: int  # tokens predicted: every token of a window but its first
    mean_nll: float


def read_task(path: str | Path, limit: int) -> list[TaskItem]:
    """The first ``limit`` items of a task file: JSON lines with ``context``, ``choices`` and ``label``."""
    items: list[TaskItem] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if len(items) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}, line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected an object with context, choices and label")
            context, choices, label = record.get("context"), record.get("choices"), record.get("label")
            if not isinstance(context, str) or not isinstance(choices, list) or len(choices) < 2:
                raise ValueError(f"{where}: needs a string 'context' and a list of at least 2 'choices'")
            if not all(isinstance(c, str) for c in choices):
                raise ValueError(f"{where}: every choice must be a string")
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
                raise ValueError(f"{where}: 'label' must be the index of a choice (0 to {len(choices) - 1})")
            items.append(TaskItem(str(record.get("id", line_number)), context, tuple(choices), label))
    if not items:
        raise ValueError(f"{path} holds no task items")
    return items


def encode_request(tokenizer: Any, request_id: str, context: str, continuation: str, max_length: int) -> EncodedSample:
    """A (context, continuation) pair as the harness tokenizes it; the continuation's tokens are scored.

    Too long a pair keeps its last ``max_length`` tokens (the harness truncates on the left too)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"] if context else []
    if not context_ids:  # nothing to condition on: the harness puts the end-of-text token first
        lead = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.bos_token_id
        whole, context_ids = [int(lead), *whole], [int(lead)]
    prompt = len(context_ids)
    if len(whole) <= prompt:
        raise ValueError(f"request {request_id}: the continuation {continuation!r} has no tokens of its own")
    truncated = len(whole) > max_length
    if truncated:
        cut = len(whole) - max_length
        whole, prompt = whole[cut:], max(1, prompt - cut)
    return EncodedSample(request_id, tuple(int(t) for t in whole), prompt, truncated)


def score_task(
    model: Any, tokenizer: Any, items: Sequence[TaskItem], style: Style, max_length: int = 2048
) -> tuple[TaskScore, list[ItemScore]]:
    """acc and acc_norm of ``model`` on ``items`` (zero-shot), and the per-item choices."""
    requests: list[EncodedSample] = []
    continuations: list[list[str]] = []
    for item in items:
        pairs = choice_prompts(style, item.context, item.choices)
        continuations.append([continuation for _, continuation in pairs])
        requests.extend(
            encode_request(tokenizer, f"{item.item_id}#{index}", context, continuation, max_length)
            for index, (context, continuation) in enumerate(pairs)
        )
    nll = response_nll(model, requests, tokenizer.pad_token_id)
    by_id = {r.sample_id: -nll[r.sample_id] * r.response_tokens for r in requests}  # sum of log-probs
    scored = [
        score_item([by_id[f"{item.item_id}#{i}"] for i in range(len(item.choices))], continuations[n], item.label)
        for n, item in enumerate(items)
    ]
    return task_score(scored, style), scored


def text_perplexity(model: Any, tokenizer: Any, text: str, window: int, max_tokens: int) -> TextScore:
    """Mean NLL over the non-overlapping windows of the text tokenized once (at most ``max_tokens`` tokens)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = text_windows(ids, window, max_tokens)
    if not windows:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one window of {window}")
    samples = [EncodedSample(f"window-{i:05d}", tuple(w), 1, False) for i, w in enumerate(windows)]
    nll = response_nll(model, samples, tokenizer.pad_token_id)
    predicted = sum(s.response_tokens for s in samples)
    mean = sum(nll[s.sample_id] * s.response_tokens for s in samples) / predicted
    return TextScore(len(windows), predicted, float(mean))


STDLIB_TEXT = "stdlib_docs"  # the name of the default corpus, Python's standard-library documentation


@dataclass(frozen=True)
class Evaluation:
    """One model on the held-out split (NLL per sample and the response tokens it is a mean over), the text
    corpora, the tasks the plugin scores and those lm-evaluation-harness runs."""

    heldout: dict[str, float]
    heldout_tokens: dict[str, int]
    texts: dict[str, TextScore]
    tasks: dict[str, TaskScore]
    seconds: float  # wall time of the whole evaluation: in the metadata, and the lab's study prices its ETA by it
    harness: tuple[HarnessResult, ...] = ()


def evaluation_texts(settings: Any) -> dict[str, str]:
    """The corpora named in PASER_EVAL_TEXT, read; or the standard-library documentation when none is named."""
    from paser_assets.models.general_text import general_text

    named = settings.texts()
    if not named:
        return {STDLIB_TEXT: general_text()}
    return {name: Path(path).read_text(encoding="utf-8", errors="replace") for name, path in named.items()}


def evaluate_model(
    model: Any, tokenizer: Any, heldout: Any, max_tokens: int, settings: Any, log: Callable[[str], None]
) -> Evaluation:
    """The held-out NLL of ``heldout``'s rows, the perplexity of every text corpus and the accuracy on every task
    of the evaluation ``settings``, the harness's tasks through lm-evaluation-harness. A task file that cannot be
    read, or a harness task that cannot be loaded, is a ValueError naming it."""
    from paser_assets.core.evaluation import style_for
    from paser_assets.models.response_scores import encode_rows
    from paser_assets.models.training import perplexity

    start = time.monotonic()
    encoded = encode_rows(tokenizer, heldout, max_tokens)
    per_sample = response_nll(model, encoded, tokenizer.pad_token_id)
    texts: dict[str, TextScore] = {}
    for name, text in evaluation_texts(settings).items():
        texts[name] = text_perplexity(model, tokenizer, text, settings.eval_window, settings.eval_max_tokens)
        log(f"perplexity on {name}: {perplexity(texts[name].mean_nll):.3f} ({texts[name].tokens} tokens)")
    tasks: dict[str, TaskScore] = {}
    for name, path in settings.tasks().items():
        try:
            items = read_task(path, settings.eval_task_items)
        except ValueError as error:
            raise ValueError(f"PASER_EVAL_TASKS {name}: {error}") from None
        tasks[name] = score_task(model, tokenizer, items, style_for(name))[0]
        log(f"{name}: acc {tasks[name].acc:.4f} on {tasks[name].items} items")
    harness_tasks = settings.harness_tasks()
    harness: list[HarnessResult] = []
    if harness_tasks:
        from paser_assets.models.harness import run_harness

        harness = run_harness(model, tokenizer, harness_tasks, settings.eval_task_items, log)
    seconds = time.monotonic() - start
    log(f"evaluated in {format_duration(seconds)}")
    tokens = {s.sample_id: s.response_tokens for s in encoded}
    return Evaluation(per_sample, tokens, texts, tasks, seconds, tuple(harness))
