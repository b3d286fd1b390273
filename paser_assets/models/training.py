"""Recovery fine-tuning of a pruned model with LoRA (peft), and held-out evaluation.

The loss is the mean NLL of the response tokens (prompt tokens are masked), the same positions the
degradation scores read; or, with ``loss="distillation"``, the mean KL divergence from the original model's
next-token distribution to the recovering model's at those positions. Batches are length-bucketed and their
order is shuffled by the seed, so a run is deterministic for a seed on the CPU. The learning rate follows
``transformers.get_scheduler`` (linear warm-up from 0, then cosine, linear or no decay), as the Hugging Face
Trainer's does; a batch may be split into micro-batches whose gradients are accumulated, and the decoder layers'
activations may be recomputed in the backward pass (gradient checkpointing), so that a 7B model fits one GPU.

Both run where a :class:`~paser_assets.models.device.Placement` says. In bfloat16 (or float16) the frozen
base weights are held in that dtype, the adapter's weights stay float32 (peft keeps them so; they are the
optimizer's master weights), and the passes run under ``torch.autocast``; the output head of the
evaluation runs in float32, since a bfloat16 logit of 20 is off by up to 0.06.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from paser_assets.core.output_head import float32_head
from paser_assets.models.device import Placement, autocast, model_precision, place_model
from paser_assets.models.scoring import EncodedSample, pack_batch, plan_batches
from paser_assets.progress import format_duration

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    learning_rate: float = 1e-3
    epochs: int = 2
    batch_size: int = 8
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    top_layers: int = 0  # 0: every decoder layer; N: only the top N (no gradient flows below them)
    seed: int = 0
    warmup: float = 0.1  # share of the steps over which the learning rate rises linearly from 0
    schedule: str = "cosine"  # after the warm-up: "cosine" or "linear" decay to 0, or "constant"
    loss: str = "response_nll"  # or "distillation": KL(original || recovering) over the response tokens
    # How a step is computed, not what it computes (neither is in the adapter's recipe): the batch split into
    # this many micro-batches whose gradients are accumulated, and activations recomputed in the backward pass.
    grad_accumulation: int = 1
    gradient_checkpointing: bool = False


LOSSES = ("response_nll", "distillation")
# PASER_LORA_SCHEDULE -> the name transformers.get_scheduler knows it by (each with a linear warm-up from 0).
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def learning_rate_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float, schedule: str) -> Any:
    """``transformers.get_scheduler`` for ``schedule`` over ``total_steps`` optimizer steps, the first
    ceil(warmup * total_steps) of them a linear warm-up from 0 (step t of the warm-up runs at lr * t / w)."""
    from transformers import get_scheduler

    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose {', '.join(SCHEDULES)}")
    warmup_steps = math.ceil(warmup * total_steps)
    return get_scheduler(SCHEDULES[schedule], optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def micro_batches(batch: Sequence[int], parts: int) -> list[list[int]]:
    """``batch`` split into at most ``parts`` consecutive micro-batches of nearly equal size (none empty)."""
    if parts < 1:
        raise ValueError(f"gradient accumulation needs at least 1 micro-batch, not {parts}")
    size, extra = divmod(len(batch), parts)
    pieces, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        if end > start:
            pieces.append(list(batch[start:end]))
        start = end
    return pieces


@dataclass
class TrainingLog:
    """Loss per optimizer step and how long training took."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    learning_rates: list[float] = field(default_factory=list)
    precision: str = "float32"


def _batch_tensors(batch: Sequence[EncodedSample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(sample.input_ids) for sample in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)  # -100: ignored by the loss (prompt and padding)
    for row, sample in enumerate(batch):
        length = len(sample.input_ids)
        input_ids[row, :length] = torch.tensor(sample.input_ids)
        attention_mask[row, :length] = 1
        labels[row, sample.prompt_tokens : length] = input_ids[row, sample.prompt_tokens : length]
    return input_ids, attention_mask, labels


def _labelled_logits(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, scored: torch.Tensor
) -> torch.Tensor:
    """The next-token logits at the positions that predict a labelled token, the output head applied there only:
    over a 49k vocabulary the head is a fifth of a small model's compute."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    return inner.get_output_embeddings()(hidden[:, :-1][scored])


def response_loss(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Mean NLL of the labelled (response) tokens: the model's own ``labels=`` loss, the prompt's positions
    skipping the output head."""
    targets = labels[:, 1:]
    scored = targets != -100
    logits = _labelled_logits(model, input_ids, attention_mask, scored)
    return torch.nn.functional.cross_entropy(logits.float(), targets[scored])


def distillation_loss(
    model: Any, teacher: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """L = mean over response tokens t of KL(p_original(. | x_<t) || p_model(. | x_<t)).

    Knowledge distillation (Hinton et al., 2015) with the unpruned model as the teacher: the recovery target
    is the original's whole next-token distribution, the one whose drift PASER's JSD measures, instead of the
    pool's reference answers, which the original model does not write either."""
    scored = labels[:, 1:] != -100
    with torch.no_grad():
        target = torch.log_softmax(_labelled_logits(teacher, input_ids, attention_mask, scored).float(), dim=-1)
    student = torch.log_softmax(_labelled_logits(model, input_ids, attention_mask, scored).float(), dim=-1)
    return torch.nn.functional.kl_div(student, target, reduction="batchmean", log_target=True)


def _set_checkpointing(model: Any, on: bool) -> None:
    """Activation (gradient) checkpointing of the decoder layers on or off: transformers' newer name where it has it."""
    if on:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()


def train_lora(
    model: Any,
    samples: Sequence[EncodedSample],
    pad_id: int,
    settings: LoraSettings,
    log: Callable[[str], None] | None = None,
    placement: Placement | None = None,
    teacher: Any | None = None,
    gradient_checkpointing: bool = False,
) -> tuple[Any, TrainingLog]:
    """Wrap ``model`` with LoRA adapters and train them on ``samples``; returns the peft model and its log.

    ``model`` (and ``teacher``, the original model that ``loss="distillation"`` needs) is first moved to
    ``placement``, in place (None: it trains where and as it is). ``gradient_checkpointing`` (or the settings')
    recomputes each decoder layer's activations in the backward pass instead of keeping them (torch's
    non-reentrant checkpoint): less memory for about a third more compute; it is switched off again after
    training. With ``settings.grad_accumulation`` = k, each optimizer step's batch of ``settings.batch_size``
    samples runs as k micro-batches, each one's mean loss weighted by its share of the batch's scored tokens,
    so the step's gradient is the whole batch's up to rounding."""
    from peft import LoraConfig, get_peft_model

    if not samples:
        raise ValueError("no samples to train on")
    if settings.loss not in LOSSES:
        raise ValueError(f"unknown recovery loss {settings.loss!r}; choose from {', '.join(LOSSES)}")
    if settings.loss == "distillation" and teacher is None:
        raise ValueError("loss='distillation' needs the original model as the teacher")
    if settings.schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {settings.schedule!r}; choose {', '.join(SCHEDULES)}")
    if settings.grad_accumulation < 1:
        raise ValueError(f"grad_accumulation must be at least 1, not {settings.grad_accumulation}")
    gradient_checkpointing = gradient_checkpointing or settings.gradient_checkpointing
    if placement is None:
        placement = Placement(next(model.parameters()).device, model_precision(model))
    place_model(model, placement)
    if settings.loss == "distillation":
        place_model(teacher, placement)
        teacher.eval()
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in settings.target_modules if t in present]
    if not targets:
        raise ValueError(f"none of the LoRA target modules {settings.target_modules} exists in the model")
    layers = None
    if settings.top_layers > 0:
        from paser_assets.models.pruning import decoder_layers

        count = len(decoder_layers(model))
        layers = list(range(max(0, count - settings.top_layers), count))
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )
    if gradient_checkpointing:
        _set_checkpointing(model, True)
    peft_model = get_peft_model(model, config)  # float32 adapter weights over a lower-precision base
    peft_model.train()
    optimizer = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad], lr=settings.learning_rate, weight_decay=0.0
    )
    batches = plan_batches([len(s.input_ids) for s in samples], token_budget=1 << 30, max_batch=settings.batch_size)
    total_steps = len(batches) * settings.epochs
    scheduler = learning_rate_scheduler(optimizer, total_steps, settings.warmup, settings.schedule)
    # float16 gradients can underflow: scale the loss (disabled, the scaler calls optimizer.step() as is).
    scaler = torch.amp.GradScaler(placement.device.type, enabled=placement.precision == "float16")
    record = TrainingLog(precision=placement.precision)
    start = time.monotonic()
    last_log = start
    step = 0
    for epoch in range(settings.epochs):
        order = list(range(len(batches)))
        random.Random(settings.seed * 1000 + epoch).shuffle(order)
        for index in order:
            parts = micro_batches(batches[index], settings.grad_accumulation)
            scored = [sum(samples[i].response_tokens for i in part) for part in parts]
            loss = 0.0
            for part, part_scored in zip(parts, scored, strict=True):
                input_ids, attention_mask, labels = (
                    t.to(placement.device) for t in _batch_tensors([samples[i] for i in part], pad_id)
                )
                with autocast(placement.device, placement.precision):
                    if settings.loss == "distillation":
                        part_loss = distillation_loss(peft_model, teacher, input_ids, attention_mask, labels)
                    else:
                        part_loss = response_loss(peft_model, input_ids, attention_mask, labels)
                    part_loss = part_loss * (part_scored / sum(scored))  # its share of the batch's mean
                scaler.scale(part_loss).backward()
                loss += float(part_loss.detach())
                record.tokens += int(attention_mask.sum())
            record.learning_rates.append(optimizer.param_groups[0]["lr"])  # the rate this step used
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            record.steps.append(step)
            record.losses.append(loss)
            now = time.monotonic()
            if log is not None and (now - last_log >= 10 or step == total_steps):
                last_log = now
                rate = step / (now - start)
                log(
                    f"LoRA step {step}/{total_steps}, loss {record.losses[-1]:.4f}, "
                    f"{rate:.2f} steps/s, ETA {format_duration((total_steps - step) / rate)}"
                )
    record.seconds = time.monotonic() - start
    if gradient_checkpointing:
        _set_checkpointing(model, False)
    peft_model.eval()
    return peft_model, record


def save_adapter(peft_model: Any, folder: Path) -> Path:
    """Save the LoRA adapter as safetensors (``adapter_model.safetensors`` + ``adapter_config.json``)."""
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def load_adapter(model: Any, folder: Path) -> Any:
    """``model`` with the adapter in ``folder`` applied (safetensors only), in eval mode."""
    from peft import PeftModel

    if not (folder / "adapter_model.safetensors").exists():
        raise FileNotFoundError(f"{folder} holds no adapter_model.safetensors")
    recovered = PeftModel.from_pretrained(model, str(folder))
    recovered.eval()
    return recovered


@torch.inference_mode()
def response_nll(
    model: Any,
    samples: Sequence[EncodedSample],
    pad_id: int,
    token_budget: int = 4096,
    chunk_size: int = 128,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Mean NLL of each sample's response tokens under ``model`` (prompt and padding excluded).

    The decoder runs on ``device`` (default: where the model's weights are) under autocast to the model's
    dtype, so that a float32 adapter on a bfloat16 base runs in bfloat16 too; the output head runs in
    float32 on response positions only, a chunk at a time, as in scoring.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model's LoRA'd base
    head = float32_head(inner.get_output_embeddings())
    device = torch.device(device) if device is not None else next(inner.parameters()).device
    precision = model_precision(inner)
    result: dict[str, float] = {}
    for batch_indices in plan_batches([len(s.input_ids) for s in samples], token_budget=token_budget, max_batch=32):
        batch = [samples[i] for i in batch_indices]
        input_ids, attention_mask, row_index, column_index = (t.to(device) for t in pack_batch(batch, pad_id))
        with autocast(device, precision):
            hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hidden = hidden.last_hidden_state[row_index, column_index]
        targets = input_ids[row_index, column_index + 1]
        nll = torch.cat(
            [
                torch.nn.functional.cross_entropy(
                    head(hidden[start : start + chunk_size]).float(),
                    targets[start : start + chunk_size],
                    reduction="none",
                )
                for start in range(0, len(targets), chunk_size)
            ]
        ).cpu()
        offset = 0
        for sample in batch:
            result[sample.sample_id] = float(nll[offset : offset + sample.response_tokens].double().mean())
            offset += sample.response_tokens
    return result


def perplexity(mean_nll: float) -> float:
    """exp(mean NLL), the per-token perplexity."""
    return math.exp(mean_nll) if math.isfinite(mean_nll) and mean_nll < 700 else math.inf
