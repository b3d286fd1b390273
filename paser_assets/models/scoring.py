"""Teacher-forced, length-bucketed scoring of samples through the original and the pruned model.

For each sample the prompt (chat template, or the Alpaca template for models without one) is
followed by the reference response; both models read the same token ids once, and the JSD of
their next-token distributions is averaged over the response tokens only. The output head is
applied to response positions alone, a chunk at a time (see ``core.divergence``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from paser_assets.core.divergence import divergence_and_nll, log_softmax_parts
from paser_assets.core.efficiency import individual_efficiency
from paser_assets.core.topk import lumped_jsd, topk_summary
from paser_assets.models.original_cache import OriginalOutputCache, OriginalSummary

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{with_input}. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


def build_prompt(tokenizer: Any, instruction: str, input_text: str) -> str:
    """The prompt text: the tokenizer's chat template when it has one, else the Alpaca template."""
    request = f"{instruction}\n\n{input_text}" if input_text else instruction
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": request}], tokenize=False, add_generation_prompt=True
        )
    return ALPACA_PROMPT.format(
        with_input=", paired with an input that provides further context" if input_text else "",
        instruction=instruction,
        input_block=f"### Input:\n{input_text}\n\n" if input_text else "",
    )


@dataclass(frozen=True)
class EncodedSample:
    """Token ids of prompt + response; positions ``prompt_tokens..`` are the response tokens."""

    sample_id: str
    input_ids: tuple[int, ...]
    prompt_tokens: int
    truncated: bool

    @property
    def response_tokens(self) -> int:
        return len(self.input_ids) - self.prompt_tokens


def encode_sample(
    tokenizer: Any, sample_id: str, instruction: str, input_text: str, output: str, max_tokens: int
) -> EncodedSample:
    """Tokenise prompt and response separately (no merge across the boundary) and end with EOS.

    Over ``max_tokens``, the prompt keeps its last tokens (the template's assistant marker) up to
    half the limit and the response is cut; ``truncated`` records it.
    """
    prompt_ids = tokenizer(build_prompt(tokenizer, instruction, input_text), add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(output, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = [*response_ids, tokenizer.eos_token_id]
    truncated = False
    if len(prompt_ids) + len(response_ids) > max_tokens:
        truncated = True
        if len(prompt_ids) > max_tokens // 2:
            prompt_ids = prompt_ids[-(max_tokens // 2) :]
        response_ids = response_ids[: max_tokens - len(prompt_ids)]
    if not prompt_ids:
        # The first response token needs a position to be predicted from.
        prompt_ids = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id]
    return EncodedSample(sample_id, tuple(prompt_ids + response_ids), len(prompt_ids), truncated)


def plan_batches(lengths: Sequence[int], token_budget: int = 8192, max_batch: int = 32) -> list[list[int]]:
    """Group indices into length-bucketed batches: sorted by length, each holding at most
    ``token_budget`` padded tokens and ``max_batch`` rows. The plan depends only on the lengths
    (ties broken by index), so a rerun over the same samples forms the same batches."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[index]  # sorted ascending, so the newest row is the longest
        if current and (len(current) + 1 > max_batch or (len(current) + 1) * longest > token_budget):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class SampleScore:
    sample_id: str
    jsd: float
    original_nll: float
    pruned_nll: float
    prompt_tokens: int
    response_tokens: int
    truncated: bool

    @property
    def cost(self) -> int:
        return (self.prompt_tokens + self.response_tokens) ** 2

    @property
    def ies(self) -> float:
        return individual_efficiency(self.jsd, self.cost)


def _final_hidden(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (after the final norm) without computing logits for every position."""
    outputs = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return outputs.last_hidden_state


def supports_hidden_state_scoring(model: Any) -> bool:
    """True when logits = output_embeddings(last_hidden_state), which lets us skip prompt positions."""
    config = model.config
    return not (getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))


@dataclass
class BatchScores:
    """Scores of a batch, plus what the original-output cache needs."""

    scores: list[SampleScore]
    summaries: dict[str, OriginalSummary]  # new original summaries (empty when read from the cache)
    lumped_errors: list[float]  # |exact - lumped| sample means, measured when both were computed
    used_cache: bool


def _per_sample_means(values: torch.Tensor, batch: Sequence[EncodedSample]) -> list[float]:
    means, offset = [], 0
    for sample in batch:
        means.append(float(values[offset : offset + sample.response_tokens].double().mean()))
        offset += sample.response_tokens
    return means


class PairScorer:
    """Scores batches of encoded samples through an (original, pruned) pair of models.

    ``original`` may be None when every batch is scored from the original-output cache.
    """

    def __init__(self, original: Any | None, pruned: Any, pad_token_id: int, chunk_size: int = 128) -> None:
        for name, model in (("original", original), ("pruned", pruned)):
            if model is not None and not supports_hidden_state_scoring(model):
                raise ValueError(f"the {name} model scales or caps its logits; its architecture is not supported")
        self.original = original
        self.pruned = pruned
        self.pad_token_id = pad_token_id
        self.chunk_size = chunk_size

    def _pack(self, batch: Sequence[EncodedSample]) -> tuple[torch.Tensor, ...]:
        width = max(len(sample.input_ids) for sample in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        rows, columns = [], []
        for row, sample in enumerate(batch):
            length = len(sample.input_ids)
            input_ids[row, :length] = torch.tensor(sample.input_ids)
            attention_mask[row, :length] = 1
            # Position t predicts token t + 1: the response tokens are predicted from prompt_tokens - 1 on.
            positions = range(sample.prompt_tokens - 1, length - 1)
            rows.extend([row] * len(positions))
            columns.extend(positions)
        return input_ids, attention_mask, torch.tensor(rows), torch.tensor(columns)

    def score(self, batch: Sequence[EncodedSample]) -> list[SampleScore]:
        """Exact scores of a batch (both models, full-vocabulary JSD)."""
        return self.score_batch(batch).scores

    @torch.inference_mode()
    def score_batch(
        self, batch: Sequence[EncodedSample], cache: OriginalOutputCache | None = None, top_k: int = 0
    ) -> BatchScores:
        """Score a batch. With ``top_k`` > 0 the JSD is the lumped top-k JSD (see ``core.topk``): read from
        ``cache`` when it holds every sample of the batch (only the pruned model runs), else computed
        from both models, with the original's summaries returned for the cache and the gap to the
        exact JSD measured."""
        input_ids, attention_mask, row_index, column_index = self._pack(batch)
        targets = input_ids[row_index, column_index + 1]
        hidden_pruned = _final_hidden(self.pruned, input_ids, attention_mask)[row_index, column_index]
        head_pruned = self.pruned.get_output_embeddings()
        count = targets.shape[0]
        jsd = torch.empty(count)
        nll_original = torch.empty(count)
        nll_pruned = torch.empty(count)
        use_cache = top_k > 0 and cache is not None and all(sample.sample_id in cache for sample in batch)
        summaries: dict[str, OriginalSummary] = {}
        errors: list[float] = []
        if use_cache:
            assert cache is not None
            cached = [cache.get(sample.sample_id) for sample in batch]
            top_ids = torch.from_numpy(np.concatenate([c.ids for c in cached]))
            top_log_p = torch.from_numpy(np.concatenate([c.log_probs for c in cached]))
            nll_original = torch.from_numpy(np.concatenate([c.nll for c in cached]))
            for start in range(0, count, self.chunk_size):
                rows = slice(start, start + self.chunk_size)
                logits = head_pruned(hidden_pruned[rows])
                jsd[rows] = lumped_jsd(top_ids[rows], top_log_p[rows], logits)
                nll_pruned[rows] = -log_softmax_parts(logits).gather(-1, targets[rows].view(-1, 1)).squeeze(-1)
        else:
            if self.original is None:
                raise ValueError("the original model is needed for samples missing from the original-output cache")
            hidden_original = _final_hidden(self.original, input_ids, attention_mask)[row_index, column_index]
            head_original = self.original.get_output_embeddings()
            exact = torch.empty(count)
            top_ids = torch.empty((count, max(top_k, 1)), dtype=torch.int32)
            top_log_p = torch.empty((count, max(top_k, 1)))
            for start in range(0, count, self.chunk_size):
                rows = slice(start, start + self.chunk_size)
                logits_original = head_original(hidden_original[rows])
                logits_pruned = head_pruned(hidden_pruned[rows])
                exact[rows], nll_original[rows], nll_pruned[rows] = divergence_and_nll(
                    logits_original, logits_pruned, targets[rows]
                )
                if top_k > 0:
                    top_ids[rows], top_log_p[rows] = topk_summary(logits_original, top_k)
                    jsd[rows] = lumped_jsd(top_ids[rows], top_log_p[rows], logits_pruned)
            if top_k > 0:
                offset = 0
                for sample in batch:
                    span = slice(offset, offset + sample.response_tokens)
                    offset += sample.response_tokens
                    summaries[sample.sample_id] = OriginalSummary(
                        top_ids[span].numpy().copy(), top_log_p[span].numpy().copy(), nll_original[span].numpy().copy()
                    )
                errors = [
                    abs(a - b)
                    for a, b in zip(_per_sample_means(exact, batch), _per_sample_means(jsd, batch), strict=True)
                ]
            else:
                jsd = exact
        scores = [
            SampleScore(sample.sample_id, j, o, p, sample.prompt_tokens, sample.response_tokens, sample.truncated)
            for sample, j, o, p in zip(
                batch,
                _per_sample_means(jsd, batch),
                _per_sample_means(nll_original, batch),
                _per_sample_means(nll_pruned, batch),
                strict=True,
            )
        ]
        return BatchScores(scores, summaries, errors, use_cache)
