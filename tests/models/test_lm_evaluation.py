"""Perplexity and zero-shot multiple choice on the tiny Llama (paser_assets.models.evaluation), checked
against a direct computation from the model's logits."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from paser_assets.core.evaluation import choice_prompts
from paser_assets.models.evaluation import TaskItem, encode_request, read_task, score_task, text_perplexity

TEXT = " ".join(f"The {w} sorted the list and wrote a short summary of the report." for w in ["cat", "dog"] * 40)


def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | everything before), straight from the full sequence's logits."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([whole])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return float(sum(logprobs[t - 1, whole[t]] for t in range(len(context_ids), len(whole))))


def test_requests_are_tokenized_as_the_harness_does(tokenizer) -> None:
    sample = encode_request(tokenizer, "r", "Question: why?\nAnswer: ", "because", 2048)
    # The context's trailing space moves to the continuation.
    context_ids = tokenizer("Question: why?\nAnswer:", add_special_tokens=False)["input_ids"]
    whole = tokenizer("Question: why?\nAnswer: because", add_special_tokens=False)["input_ids"]
    assert sample.input_ids == tuple(whole) and sample.prompt_tokens == len(context_ids)
    empty = encode_request(tokenizer, "e", "", "hello", 2048)
    assert empty.input_ids[0] == tokenizer.eos_token_id and empty.prompt_tokens == 1
    cut = encode_request(tokenizer, "c", "word " * 50, "end", 16)
    assert len(cut.input_ids) == 16 and cut.truncated and cut.response_tokens >= 1


def test_choice_scores_match_the_log_likelihoods_from_the_logits(tiny_pair) -> None:
    model, tokenizer = tiny_pair
    items = [
        TaskItem("a", "Which word sorts first?", ("apple", "the list", "zebra crossing"), 0),
        TaskItem("b", "What did the cat write?", ("a summary", "numbers"), 1),
        TaskItem("c", "The dog sorted _ and wrote it down.", ("the list", "a report"), 0),
    ]
    styles = {"a": "question", "b": "question", "c": "partial"}
    for item in items:
        style = styles[item.item_id]
        pairs = choice_prompts(style, item.context, item.choices)
        expected = [continuation_logprob(model, tokenizer, c, x) for c, x in pairs]
        _, [scored] = score_task(model, tokenizer, [item], style)
        assert scored.choice == max(range(len(expected)), key=expected.__getitem__)
        per_char = [ll / len(x) for ll, (_, x) in zip(expected, pairs, strict=True)]
        assert scored.choice_norm == max(range(len(per_char)), key=per_char.__getitem__)


def test_a_task_whose_answer_is_the_models_own_greedy_continuation_is_answered(sharp_pair, tokenizer) -> None:
    """Choice 0 is what the (sharpened) model itself would write next; the others are other text."""
    model = sharp_pair[0]
    items = []
    for n, context in enumerate(["Sort the list", "Write a short summary", "The cat", "Convert 5 km"]):
        ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            generated = model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids) :]
        greedy = tokenizer.decode(generated)
        items.append(TaskItem(str(n), context, (greedy, " of the report and", " zebra 42 xyz"), 0))
    score, per_item = score_task(model, tokenizer, items, "plain")
    assert [i.choice for i in per_item] == [0, 0, 0, 0]
    assert score.acc == 1.0 and score.items == 4


def test_perplexity_is_exp_of_the_mean_nll_over_the_windows(tiny_pair) -> None:
    model, tokenizer = tiny_pair
    result = text_perplexity(model, tokenizer, TEXT, window=32, max_tokens=100)
    assert result.windows == 3 and result.tokens == 3 * 31  # 100 tokens hold 3 whole windows of 32
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    losses = []
    for start in range(0, 96, 32):
        window = torch.tensor([ids[start : start + 32]])
        with torch.inference_mode():
            losses.append(float(model(input_ids=window, labels=window).loss))
    assert result.mean_nll == pytest.approx(sum(losses) / 3, rel=1e-4)
    assert math.exp(result.mean_nll) > 1
    with pytest.raises(ValueError, match="fewer than one window"):
        text_perplexity(model, tokenizer, "short", window=32, max_tokens=100)


def test_task_files_are_read_up_to_n_items_with_errors_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "task.jsonl"
    rows = [{"id": i, "context": f"q{i}", "choices": ["a", "b"], "label": i % 2} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = read_task(path, 3)
    assert [i.item_id for i in items] == ["0", "1", "2"] and items[1].label == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"context": "q", "choices": ["a", "b"], "label": 2}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: 'label' must be the index of a choice"):
        read_task(bad, 10)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1: not JSON"):
        read_task(broken, 10)
