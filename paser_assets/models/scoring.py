"""Teacher-forced, length-bucketed scoring of samples through the original and the pruned model.

For each sample the prompt (chat template, or the Alpaca template for models without one) is
followed by the reference response; both models read the same token ids once, and the JSD of
their next-token distributions is averaged over the response tokens only. The output head is
applied to response positions alone, a chunk at a time (see ``core.divergence``).

The models run where they were placed (``models.device``: a device and a dtype); every tensor is moved
there explicitly, so the GPU path is the CPU path with another device. Whatever the models' dtype, the
JSD kernel accumulates in float32/float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from jinja2 import TemplateError
from jinja2.exceptions import SecurityError

from paser_assets.core.divergence import chunked_divergence
from paser_assets.core.efficiency import individual_efficiency
from paser_assets.core.output_head import Float32Head, HeadPrecision, TargetCentredBFloat16Head, float32_head
from paser_assets.models.checkpoints import CheckpointError, fit_to_context
from paser_assets.models.device import Precision, model_precision, precision_key
from paser_assets.models.original_cache import OriginalOutputCache, OriginalStates, compact_states

MAX_TOKENS_SETTING = "PASER_MAX_TOKENS"  # scoring.max_tokens: the length scored, trained and evaluated

ALPACA_PROMPT = (
    "Below is an instruction that describes a task{with_input}. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"
)


def build_prompt(tokenizer: Any, instruction: str, input_text: str) -> str:
    """The prompt text: the tokenizer's chat template when it has one, else the Alpaca template."""
    request = f"{instruction}\n\n{input_text}" if input_text else instruction
    if getattr(tokenizer, "chat_template", None):
        return _apply_chat_template(tokenizer, request)
    return ALPACA_PROMPT.format(
        with_input=", paired with an input that provides further context" if input_text else "",
        instruction=instruction,
        input_block=f"### Input:\n{input_text}\n\n" if input_text else "",
    )


def _apply_chat_template(tokenizer: Any, request: str) -> str:
    """The tokenizer's chat template applied to one user message. transformers renders it in Jinja's immutable
    sandbox, so a template cannot run code; one that tries, or that fails otherwise, is the checkpoint's fault
    and a :class:`~paser_assets.models.checkpoints.CheckpointError` says so in one line."""
    try:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": request}], tokenize=False, add_generation_prompt=True
        )
    except SecurityError as error:
        raise CheckpointError(
            f"the chat template of {_template_owner(tokenizer)} tried to escape Jinja's sandbox "
            f"({_one_line(error)}): the sandbox refused it and no code ran, but that template cannot format "
            "prompts; use a checkpoint whose chat template (chat_template.jinja or chat_template in "
            "tokenizer_config.json) only formats messages"
        ) from None
    except TemplateError as error:
        raise CheckpointError(
            f"the chat template of {_template_owner(tokenizer)} cannot format a prompt: "
            f"{type(error).__name__}: {_one_line(error)}"
        ) from None


def _template_owner(tokenizer: Any) -> str:
    """The checkpoint a tokenizer was loaded from (its folder or hub id), as the chat template's owner."""
    name = getattr(tokenizer, "name_or_path", None)
    return str(name) if name else "the model"


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()).rstrip(".") or type(error).__name__


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

    Over ``max_tokens`` (or the model's context, when the tokenizer records a smaller one: see
    :func:`~paser_assets.models.checkpoints.fit_to_context`), the prompt keeps its last tokens (the template's
    assistant marker) up to half the limit and the response is cut; ``truncated`` records it.
    """
    max_tokens = fit_to_context(tokenizer, max_tokens, MAX_TOKENS_SETTING)
    # verbose=False: transformers would warn of a text longer than the model's limit; it is cut below.
    prompt_ids = tokenizer(build_prompt(tokenizer, instruction, input_text), add_special_tokens=False, verbose=False)[
        "input_ids"
    ]
    response_ids = tokenizer(output, add_special_tokens=False, verbose=False)["input_ids"]
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
    """Scores of a batch, plus the original's states for the original-output cache."""

    scores: list[SampleScore]
    states: dict[str, OriginalStates]  # new original states (empty when they came from the cache)
    used_cache: bool
    rounding_errors: list[float] = field(default_factory=list)  # |JSD from float16 states - unrounded JSD|


def _round_per_sample(
    hidden: torch.Tensor, batch: Sequence[EncodedSample]
) -> tuple[torch.Tensor, list[OriginalStates]]:
    """Final hidden states rounded to float16 per sample (float32 where float16 would overflow), as cached.

    Both models' states are rounded the same way before their output heads, whether the original's
    come from the cache or from a live pass, so a score never depends on the cache being warm (and
    identical models still score exactly 0). The rounding moves the JSD by about 1e-5 nats; states of a
    bfloat16 model fit float16 exactly. The rounded states are float32, back on ``hidden``'s device.
    """
    on_cpu = hidden.float().cpu()
    pieces, offset = [], 0
    for sample in batch:
        pieces.append(compact_states(on_cpu[offset : offset + sample.response_tokens].numpy()))
        offset += sample.response_tokens
    rounded = torch.from_numpy(np.concatenate([p.hidden.astype(np.float32) for p in pieces]))
    return rounded.to(hidden.device), pieces


def _per_sample_means(values: torch.Tensor, batch: Sequence[EncodedSample]) -> list[float]:
    means, offset = [], 0
    for sample in batch:
        means.append(float(values[offset : offset + sample.response_tokens].double().mean()))
        offset += sample.response_tokens
    return means


def pack_batch(batch: Sequence[EncodedSample], pad_token_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ids and mask, and the (row, position) pairs whose next token is a response token."""
    width = max(len(sample.input_ids) for sample in batch)
    input_ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
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


# Below this the eager JSD kernel and float32 output heads are cheap next to the forward passes, and
# compiling costs 10-30 s.
COMPILE_MIN_VOCABULARY = 16384


def resolve_head_precision(setting: str, vocabulary: int, precision: Precision = "float32") -> HeadPrecision:
    """'auto' follows the models' precision: bfloat16 heads for bfloat16 models with a vocabulary of
    >= 16,384 tokens, float32 heads otherwise (float16 models too: float16 products are no faster on CPUs)."""
    if setting in ("float32", "bfloat16"):
        return setting  # type: ignore[return-value]
    if setting != "auto":
        raise ValueError(f"head precision must be 'auto', 'float32' or 'bfloat16', not {setting!r}")
    return "bfloat16" if precision == "bfloat16" and vocabulary >= COMPILE_MIN_VOCABULARY else "float32"


def head_precision_key(setting: str, precision_setting: str = "auto", device_setting: str = "auto") -> str:
    """The head-precision setting as it bears on stored scores, known before any model is loaded: the
    model's hash fixes its vocabulary, so what 'auto' resolves to varies only with the models' precision."""
    if setting != "auto":
        return setting
    return "auto:" + precision_key(precision_setting, device_setting).removeprefix("auto:")


# On a CPU the batch limits are fixed; on a GPU they follow its free memory (see gpu_token_budget).
CPU_TOKEN_BUDGET = 4096
CPU_MAX_BATCH = 16
GPU_MAX_BATCH = 512


def activation_bytes_per_token(config: Any, element_bytes: int, max_tokens: int) -> int:
    """Peak bytes per padded token of one teacher-forced pass: the residual stream and attention
    projections (about 6 x hidden), the MLP's activations (3 x intermediate) and one row of attention
    scores per head (the masked attention may materialise them)."""
    hidden = int(config.hidden_size)
    intermediate = int(getattr(config, "intermediate_size", 4 * hidden))
    heads = int(getattr(config, "num_attention_heads", 1))
    return element_bytes * (6 * hidden + 3 * intermediate + heads * max_tokens)


def gpu_token_budget(
    free_bytes: int, per_token_bytes: int, fixed_bytes: int = 0, share: float = 0.5, ceiling: int = 1 << 18
) -> int:
    """Padded tokens per batch that fit in ``share`` of ``free_bytes`` after ``fixed_bytes`` (the heads'
    chunk), at ``per_token_bytes`` each; at least 512, at most ``ceiling``. The other half of the free
    memory is headroom for the allocator's fragmentation and the JSD kernel's temporaries."""
    usable = int(free_bytes * share) - fixed_bytes
    return max(512, min(ceiling, usable // max(per_token_bytes, 1)))


def batch_limits(
    device: torch.device | str,
    model: Any,
    max_tokens: int,
    token_budget: int | None = None,
    max_batch: int | None = None,
    chunk_size: int = 128,
) -> tuple[int, int]:
    """(token budget, rows per batch): the settings where given; else fixed on a CPU, and on a GPU
    derived from its free memory once the models are on it."""
    device = torch.device(device)
    if device.type != "cuda":
        return token_budget or CPU_TOKEN_BUDGET, max_batch or CPU_MAX_BATCH
    if token_budget is None:
        free, _ = torch.cuda.mem_get_info(device)
        element_bytes = next(model.parameters()).element_size()
        vocabulary = model.get_output_embeddings().weight.shape[0]
        heads_chunk = 8 * 4 * chunk_size * vocabulary  # a few float32 (chunk x vocabulary) temporaries
        per_token = activation_bytes_per_token(model.config, element_bytes, max_tokens)
        token_budget = gpu_token_budget(free, per_token, heads_chunk)
    return token_budget, max_batch or GPU_MAX_BATCH


class PairScorer:
    """Scores batches of encoded samples through an (original, pruned) pair of models.

    ``original`` may be None when every batch is scored from the original-output cache. The models run on
    ``device`` (default: where the pruned model's weights are) in the dtype they are held in.
    """

    def __init__(
        self,
        original: Any | None,
        pruned: Any,
        pad_token_id: int,
        chunk_size: int = 128,
        compile_jsd: bool | None = None,
        head_precision: str = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        for name, model in (("original", original), ("pruned", pruned)):
            if model is not None and not supports_hidden_state_scoring(model):
                raise ValueError(f"the {name} model scales or caps its logits; its architecture is not supported")
        self.original = original
        self.pruned = pruned
        self.pad_token_id = pad_token_id
        self.chunk_size = chunk_size
        head_weight = pruned.get_output_embeddings().weight
        vocabulary = head_weight.shape[0]
        self.device = torch.device(device) if device is not None else head_weight.device
        self.precision = model_precision(pruned)
        # None: compile the JSD kernel when the vocabulary is large enough for it to pay off.
        self.compile_jsd = vocabulary >= COMPILE_MIN_VOCABULARY if compile_jsd is None else compile_jsd
        self.head_precision = resolve_head_precision(head_precision, vocabulary, self.precision)
        self._heads: dict[int, tuple[torch.Tensor, torch.nn.Module | Float32Head | TargetCentredBFloat16Head]] = {}

    def _head(self, module: torch.nn.Module) -> torch.nn.Module | Float32Head | TargetCentredBFloat16Head:
        """The output head at ``head_precision``: the module itself in float32, else a copy (bfloat16, or
        float32 over a lower-precision model) made once per weight tensor."""
        weight = module.weight
        # The weight is held with its copy, so its id() cannot be reused by another tensor meanwhile.
        if id(weight) not in self._heads:
            head = (
                float32_head(module)
                if self.head_precision == "float32"
                else TargetCentredBFloat16Head(weight, getattr(module, "bias", None))
            )
            self._heads[id(weight)] = (weight, head)
        return self._heads[id(weight)][1]

    def score(self, batch: Sequence[EncodedSample]) -> list[SampleScore]:
        """Scores of a batch (both models, full-vocabulary JSD)."""
        return self.score_batch(batch).scores

    @torch.inference_mode()
    def score_batch(
        self,
        batch: Sequence[EncodedSample],
        cache: OriginalOutputCache | None = None,
        original_head: torch.nn.Module | None = None,
        measure_rounding: bool = False,
    ) -> BatchScores:
        """Score a batch. With the original model loaded, both models run and, given a ``cache``, the
        original's states are returned for it. Without it (``original=None``), the original's logits
        come from ``original_head`` applied to the states in ``cache``, so only the pruned model runs.
        Both ways give the same numbers (see :func:`_round_per_sample`). With ``measure_rounding`` (and
        the original loaded), the JSD is also computed from the unrounded states, and the per-sample
        gap is returned in ``rounding_errors``."""
        input_ids, attention_mask, row_index, column_index = (
            t.to(self.device) for t in pack_batch(batch, self.pad_token_id)
        )
        targets = input_ids[row_index, column_index + 1]
        use_cache = self.original is None
        states: dict[str, OriginalStates] = {}
        if use_cache:
            if cache is None or not all(sample.sample_id in cache for sample in batch):
                raise ValueError("the original model is needed for samples missing from the original-output cache")
            if original_head is None:
                raise ValueError("scoring from cached original states needs the original model's output head")
            hidden_original = torch.from_numpy(
                np.concatenate([cache.get(sample.sample_id).hidden for sample in batch]).astype(np.float32)
            ).to(self.device)
            head_original = self._head(original_head)
        else:
            live = _final_hidden(self.original, input_ids, attention_mask)[row_index, column_index]
            hidden_original, pieces = _round_per_sample(live, batch)
            head_original = self._head(self.original.get_output_embeddings())
            if cache is not None:
                states = {sample.sample_id: piece for sample, piece in zip(batch, pieces, strict=True)}
        live_pruned = _final_hidden(self.pruned, input_ids, attention_mask)[row_index, column_index]
        hidden_pruned, _ = _round_per_sample(live_pruned, batch)
        head_pruned = self._head(self.pruned.get_output_embeddings())
        jsd, nll_original, nll_pruned = (
            t.cpu()
            for t in chunked_divergence(
                hidden_original,
                hidden_pruned,
                head_original,
                head_pruned,
                targets,
                self.chunk_size,
                self.compile_jsd,
            )
        )
        rounding_errors: list[float] = []
        if measure_rounding and not use_cache:
            exact = chunked_divergence(
                live,
                live_pruned,
                head_original,
                head_pruned,
                targets,
                self.chunk_size,
                self.compile_jsd,
            )[0].cpu()
            rounding_errors = [
                abs(a - b) for a, b in zip(_per_sample_means(jsd, batch), _per_sample_means(exact, batch), strict=True)
            ]
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
        return BatchScores(scores, states, use_cache, rounding_errors)
