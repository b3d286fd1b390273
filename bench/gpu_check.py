"""The GPU path checked offline: scoring and LoRA through the plugin's own code, on random-weight models of real shapes.

Run on the GPU machine from the repository root, with that machine's Python as it is (no install, no network):

    PYTHONPATH=. python3 bench/gpu_check.py --device cuda

It needs torch, transformers, peft, numpy and scipy only (not Dagster, DuckDB, umap, gguf, datasets, dask or
snowballstemmer: the modules it imports load none of them, and the JSON lists any that got loaded). Nothing is
downloaded and no packaged model is read: each model is built from its configuration with random weights, since
the architecture, not the values, decides what a pass costs. Three Llama-architecture shapes:

- ``smollm2-135m``: SmolLM2-135M's dimensions (576 hidden, 30 layers, 49,152 tokens, tied head);
- ``llama-1b``: Llama-3.2-1B's (2,048 hidden, 16 layers, 128,256 tokens, tied head);
- ``llama-8b``: Llama-3.1-8B's (4,096 hidden, 14,336 MLP, 32 layers, 32/8 heads, 128,256 tokens, untied head;
  the RoPE frequency scaling is left out: it changes no cost).

For each, the original is built on ``--device`` in bfloat16 and its pruned partner is a copy pruned in place by the
plugin's ``prune_model`` (Wanda 50%, calibrated on random ids; ``--prune random`` zeroes a fixed random half of
every decoder linear instead). The samples are random token ids with a prompt/response split like instruction data
(log-normal lengths, prompt ~15% and response ~30% of ``--max-tokens`` at the median, cut to it).

Measured per shape, each step timed with the GPU synchronised, after an untimed warm-up batch (which pays for the
JSD kernel's torch.compile at vocabularies of 16,384 and more):

1. scoring through ``PairScorer`` (response-position output heads, the JSD kernel, length-bucketed batches from
   ``plan_batches`` under ``batch_limits``, i.e. the GPU token budget from free memory), first with both models
   in bfloat16, then converted in place to float32 (the same weights, exactly): tokens per second, the ratio to a
   bare forward of the two models over the same batches (full logits, as plain inference; ``ratio_to_floor`` =
   floor time / scoring time), the achieved TFLOP/s and their share of the bfloat16 matrix peak measured at the
   start with one large matrix product (and of the float32 peak for the float32 pass), peak GPU memory;
   per-sample JSD of bfloat16 against float32: mean and max absolute difference, Spearman correlation. A pass that
   runs out of GPU memory is retried with half the token budget (recorded as ``oom_retries``).
2. LoRA recovery steps (``train_lora``, the plugin's defaults: r 16 on every decoder linear of every layer, batches
   of 8) with gradient checkpointing, on the pruned model in bfloat16 at the 1B and 8B shapes: step time, tokens
   per second, peak GPU memory. An untimed step comes first.

Progress goes to stderr with the elapsed time. The result is one JSON line on stdout, also written to
``$OUT/gpu_check.json`` when ``OUT`` is set; a section that fails records its error there and the others still run
(exit status 1). With ``--device cuda`` and no GPU visible it stops at once with one line (exit status 2).
``--device cpu --tiny`` runs the same code on tiny shapes in seconds: the CI test does, so that it cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here reads the hub; never wait for a network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Not on the GPU machine, and not needed by the code checked here: the JSON lists any that gets imported.
HEAVY_MODULES = ("dagster", "duckdb", "umap", "gguf", "datasets", "dask", "snowballstemmer")
START = time.monotonic()
GIB = 1 << 30


def log(message: str) -> None:
    print(f"gpu_check [{time.monotonic() - START:6.1f} s] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Shape:
    """A Llama-architecture model's dimensions, the rows scored on it and whether LoRA steps run on it."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocabulary: int
    tied: bool
    rope_theta: float
    context: int
    rows: int
    lora: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linear_parameters(self) -> int:
        """Weights of the decoder linears (q, k, v, o and the gated MLP) over all layers."""
        kv = self.kv_heads * self.head_dim
        return self.layers * (
            2 * self.hidden * self.hidden + 2 * self.hidden * kv + 3 * self.hidden * self.intermediate
        )


SHAPES = (
    Shape("smollm2-135m", 576, 1536, 30, 9, 3, 49152, True, 1e5, 8192, rows=1024, lora=False),
    Shape("llama-1b", 2048, 8192, 16, 32, 8, 128256, True, 5e5, 131072, rows=512, lora=True),
    Shape("llama-8b", 4096, 14336, 32, 32, 8, 128256, False, 5e5, 131072, rows=128, lora=True),
)
# --tiny: the same names and code paths in seconds on a CPU. The vocabulary of 16,384 engages the bfloat16
# output heads as at the real shapes (the JSD kernel is compiled only when --compile-jsd on asks for it).
TINY_SHAPES = (
    Shape("smollm2-135m", 48, 96, 2, 4, 2, 512, True, 1e5, 1024, rows=12, lora=False),
    Shape("llama-1b", 64, 128, 2, 4, 2, 16384, True, 5e5, 1024, rows=12, lora=True),
    Shape("llama-8b", 64, 192, 3, 4, 2, 16384, False, 5e5, 1024, rows=10, lora=True),
)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


def significant(value: float, digits: int = 4) -> float:
    """``value`` rounded to ``digits`` significant digits (tiny CPU figures stay non-zero)."""
    return float(f"{value:.{digits}g}")


def first_line(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    return text[:400]


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Clock:
    """Wall time of GPU work: synchronises before reading the clock."""

    def __init__(self, device: Any) -> None:
        self.device = device

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, function: Callable[[], Any]) -> float:
        self.sync()
        start = time.perf_counter()
        function()
        self.sync()
        return time.perf_counter() - start


def reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: Any) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / GIB, 2) if device.type == "cuda" else None


def allocated_gib(device: Any) -> float | None:
    import torch

    return round(torch.cuda.memory_allocated(device) / GIB, 2) if device.type == "cuda" else None


def matmul_peak_tflops(device: Any, dtype: Any, size: int, repeats: int) -> float:
    """TFLOP/s of one large square matrix product, repeated: the matrix peak this GPU reaches in practice."""
    import torch

    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    clock = Clock(device)
    for _ in range(2):
        a @ b
    seconds = clock.time(lambda: [a @ b for _ in range(repeats)])
    return significant(2 * size**3 * repeats / seconds / 1e12)


def build_model(shape: Shape, device: Any, seed: int) -> Any:
    """A Llama of ``shape`` with random weights (transformers' own initialisation), made on ``device`` in bfloat16."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=shape.vocabulary,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.context,
        rms_norm_eps=1e-5,
        rope_theta=shape.rope_theta,
        tie_word_embeddings=shape.tied,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.to(device).eval()  # made there already; the move only guards against a transformers that is not


def random_samples(count: int, vocabulary: int, max_tokens: int, seed: int, prefix: str) -> list[Any]:
    """Random token ids with instruction-data lengths: log-normal prompt (median 15% of ``max_tokens``, at most half)
    and response (median 30%, the rest cut), the response ending with EOS; ``truncated`` where the cut applied."""
    import numpy as np

    from paser_assets.models.scoring import EncodedSample

    rng = np.random.default_rng(seed)
    prompts = np.clip(rng.lognormal(math.log(0.15 * max_tokens), 0.5, count), 4, max_tokens // 2).astype(int)
    wanted = np.maximum(rng.lognormal(math.log(0.3 * max_tokens), 0.7, count), 2).astype(int)
    samples = []
    for index, (prompt, response) in enumerate(zip(prompts, wanted, strict=True)):
        kept = int(min(response, max_tokens - prompt))
        ids = rng.integers(3, vocabulary, size=int(prompt) + kept)
        ids[0], ids[-1] = BOS_ID, EOS_ID
        samples.append(EncodedSample(f"{prefix}{index}", tuple(int(i) for i in ids), int(prompt), kept < response))
    return samples


def prune_partner(original: Any, method: str, shape: Shape, seed: int) -> tuple[Any, dict[str, Any]]:
    """A copy of ``original`` pruned to 50% in place: the plugin's ``prune_model`` (Wanda on random calibration ids,
    or magnitude), or a fixed random mask (``random``)."""
    import torch

    from paser_assets.models.pruning import PruneRecipe, decoder_layers, measured_sparsity, prune_model

    device = next(original.parameters()).device
    start = time.perf_counter()
    pruned = copy.deepcopy(original)
    if method == "random":
        generator = torch.Generator(device=device).manual_seed(seed)
        with torch.no_grad():
            for layer in decoder_layers(pruned):
                for module in layer.modules():
                    if isinstance(module, torch.nn.Linear):
                        keep = torch.rand(module.weight.shape, device=device, generator=generator) >= 0.5
                        module.weight.mul_(keep)
    else:
        recipe = PruneRecipe(method, 0.5, calibration_samples=8, calibration_tokens=128)
        calibration = None
        if method == "wanda":
            generator = torch.Generator().manual_seed(seed)
            calibration = torch.randint(3, shape.vocabulary, (8, min(128, shape.context)), generator=generator)
            calibration = calibration.to(device)
        prune_model(pruned, recipe, calibration)
    Clock(device).sync()
    return pruned, {
        "method": method,
        "sparsity": round(measured_sparsity(pruned), 4),
        "seconds": round(time.perf_counter() - start, 2),
    }


@contextlib.contextmanager
def warnings_recorded(into: list[str]) -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for item in caught:
        text = str(item.message).splitlines()[0][:300]
        if text not in into:
            into.append(text)
            log(f"warning: {text}")


def floor_rows(model: Any, batch: Sequence[Any], device: Any) -> int:
    """Rows of ``batch`` per bare forward pass on a GPU: as many as 60% of the memory left allows for their full
    logits and activations (the plugin's estimate per token), so that the floor's time is not that of failed tries."""
    import torch

    from paser_assets.models.scoring import activation_bytes_per_token

    if device.type != "cuda":
        return len(batch)
    free, _ = torch.cuda.mem_get_info(device)
    available = free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    width = max(len(s.input_ids) for s in batch)
    element = next(model.parameters()).element_size()
    vocabulary = model.get_output_embeddings().weight.shape[0]
    per_row = width * (vocabulary * element + activation_bytes_per_token(model.config, element, width))
    return max(1, min(len(batch), int(0.6 * available) // per_row))


def forward_floor(models: Sequence[Any], batch: Sequence[Any], device: Any) -> int:
    """The two models' bare forward passes over ``batch`` (full logits, nothing else, as plain inference), in pieces
    of :func:`floor_rows` rows, halving a piece that still runs out of memory; returns the number of pieces past the
    first and of such halvings."""
    import torch

    from paser_assets.models.scoring import pack_batch

    rows = floor_rows(models[0], batch, device)
    if rows < len(batch):
        return sum(1 + forward_floor(models, batch[i : i + rows], device) for i in range(0, len(batch), rows)) - 1
    try:
        input_ids, attention_mask, _, _ = (t.to(device) for t in pack_batch(batch, PAD_ID))
        with torch.inference_mode():
            for model in models:
                logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
                del logits
        return 0
    except Exception as error:
        if not is_out_of_memory(error) or len(batch) == 1:
            raise
        error.__traceback__ = None
    free_memory()
    half = len(batch) // 2
    return 1 + forward_floor(models, batch[:half], device) + forward_floor(models, batch[half:], device)


def jsd_kernel(scorer: Any) -> str:
    """How the scorer's JSD kernel ran: compiled, eager, or eager after torch.compile failed (no C compiler...)."""
    from paser_assets.core import divergence

    if not scorer.compile_jsd:
        return "eager"
    return (
        "eager (torch.compile failed)" if divergence._compiled_kernel is divergence.divergence_and_nll else "compiled"
    )


def decoder_flops(shape: Shape, samples: Sequence[Any], head_positions: Callable[[Any], int]) -> float:
    """Matrix FLOPs of one model's pass over ``samples`` (real tokens, padding not counted): the decoder linears,
    causal attention (QK^T and AV) and the output head on ``head_positions(sample)`` positions."""
    total = 0.0
    for sample in samples:
        length = len(sample.input_ids)
        total += 2 * shape.linear_parameters() * length
        total += 2 * shape.layers * length * length * shape.hidden
        total += 2 * shape.vocabulary * shape.hidden * head_positions(sample)
    return total


def timed_batches(
    scorer: Any,
    models: tuple[Any, Any],
    samples: Sequence[Any],
    batches: list[list[int]],
    shape: Shape,
    device: Any,
    notes: list[str],
) -> tuple[tuple[float, float, float, int], dict[str, float]]:
    """(warm-up, scoring and floor seconds, floor splits) and the per-sample JSD: the first batch untimed, then each
    batch through the bare forward floor and through the scorer in turn."""
    clock = Clock(device)
    precision = scorer.precision
    jsd: dict[str, float] = {}
    warm = [samples[i] for i in batches[0]]
    with warnings_recorded(notes):
        warmup_s = clock.time(lambda: scorer.score(warm))
        warmup_s += clock.time(lambda: forward_floor(models, warm, device))
    log(f"{shape.name} {precision}: warm-up {warmup_s:.1f} s")
    reset_peak(device)
    score_s = floor_s = 0.0
    floor_splits = 0
    for number, indices in enumerate(batches, start=1):
        batch = [samples[i] for i in indices]

        def floor(batch: list[Any] = batch) -> None:
            nonlocal floor_splits
            floor_splits += forward_floor(models, batch, device)

        def score(batch: list[Any] = batch) -> None:
            jsd.update({s.sample_id: s.jsd for s in scorer.score(batch)})

        floor_s += clock.time(floor)
        with warnings_recorded(notes):
            score_s += clock.time(score)
        if number % 10 == 0 or number == len(batches):
            done = f"batch {number}/{len(batches)}, scoring {score_s:.2f} s, floor {floor_s:.2f} s"
            log(f"{shape.name} {precision}: {done}")
    return (warmup_s, score_s, floor_s, floor_splits), jsd


def score_pass(
    original: Any,
    pruned: Any,
    samples: Sequence[Any],
    shape: Shape,
    device: Any,
    args: argparse.Namespace,
    peaks: dict[str, float | None],
    notes: list[str],
) -> tuple[dict[str, Any], dict[str, float]]:
    """Scores ``samples`` through ``PairScorer`` in the models' precision, alternating batch by batch with the bare
    forward floor; returns the figures and the per-sample JSD."""
    from paser_assets.models.device import model_precision
    from paser_assets.models.scoring import PairScorer, batch_limits, plan_batches

    precision = model_precision(pruned)
    token_budget, max_batch = batch_limits(device, pruned, args.max_tokens)
    compile_jsd = {"auto": None, "on": True, "off": False}[args.compile_jsd]
    lengths = [len(s.input_ids) for s in samples]
    result: dict[str, Any] = {
        "precision": precision,
        "auto_token_budget": token_budget,
        "max_batch": max_batch,
        "model_memory_gib": allocated_gib(device),
    }
    oom_retries = 0
    while True:
        batches = plan_batches(lengths, token_budget, max_batch)
        scorer = PairScorer(original, pruned, PAD_ID, compile_jsd=compile_jsd)
        log(
            f"{shape.name} {precision}: {len(samples)} rows, {sum(lengths)} tokens in {len(batches)} batches "
            f"(<= {token_budget} tokens, {max_batch} rows), heads {scorer.head_precision}, "
            f"JSD kernel {'compiled' if scorer.compile_jsd else 'eager'} (the first batch is the warm-up)"
        )
        try:
            timings, jsd = timed_batches(scorer, (original, pruned), samples, batches, shape, device, notes)
            break
        except Exception as error:
            if not is_out_of_memory(error) or oom_retries >= 2 or token_budget <= 512:
                raise
            log(f"{shape.name} {precision}: out of memory at a token budget of {token_budget}; halving it")
            oom_retries += 1
            error.__traceback__ = None  # its frames hold the batch's tensors
            del scorer
            free_memory()
            token_budget //= 2
    warmup_s, score_s, floor_s, floor_splits = timings
    tokens = sum(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    score_flops = 2 * decoder_flops(shape, samples, lambda s: s.response_tokens)
    floor_flops = 2 * decoder_flops(shape, samples, lambda s: len(s.input_ids))
    achieved = score_flops / score_s / 1e12
    result.update(
        {
            "token_budget": token_budget,
            "oom_retries": oom_retries,
            "head_precision": scorer.head_precision,
            "jsd_kernel": jsd_kernel(scorer),
            "rows": len(samples),
            "tokens": tokens,
            "padded_share": round(1 - tokens / padded, 4),
            "batches": len(batches),
            "warmup_s": round(warmup_s, 2),
            "seconds": round(score_s, 3),
            "tokens_per_s": round(tokens / score_s, 1),
            "floor_seconds": round(floor_s, 3),
            "floor_tokens_per_s": round(tokens / floor_s, 1),
            "floor_splits": floor_splits,
            "ratio_to_floor": round(floor_s / score_s, 3),
            "tflops": significant(achieved),
            "floor_tflops": significant(floor_flops / floor_s / 1e12),
            "share_of_bf16_peak": significant(achieved / peaks["bfloat16"]) if peaks.get("bfloat16") else None,
            "peak_memory_gib": peak_gib(device),
        }
    )
    if precision == "float32" and peaks.get("float32"):
        result["share_of_fp32_peak"] = significant(achieved / peaks["float32"])
    del scorer
    return result, jsd


def fidelity(reference: dict[str, float], other: dict[str, float]) -> dict[str, Any]:
    """Per-sample JSD of ``other`` (bfloat16) against ``reference`` (float32) over the samples both scored."""
    import numpy as np
    from scipy.stats import spearmanr

    ids = sorted(set(reference) & set(other))
    a = np.array([reference[i] for i in ids])
    b = np.array([other[i] for i in ids])
    difference = np.abs(a - b)
    correlation = spearmanr(a, b)[0] if len(ids) > 2 else float("nan")
    return {
        "rows": len(ids),
        "jsd_mean_fp32": float(a.mean()),
        "jsd_mean_bf16": float(b.mean()),
        "jsd_mean_abs_diff": float(difference.mean()),
        "jsd_max_abs_diff": float(difference.max()),
        "jsd_mean_rel_diff": float((difference / np.maximum(a, 1e-12)).mean()),
        "jsd_spearman": round(float(correlation), 5) if math.isfinite(correlation) else None,
    }


def lora_steps(pruned: Any, shape: Shape, device: Any, args: argparse.Namespace) -> dict[str, Any]:
    """LoRA steps through ``train_lora`` with gradient checkpointing on the pruned model in bfloat16: one untimed
    step, the adapters removed again, then ``--train-steps`` timed steps."""
    from paser_assets.models.device import Placement
    from paser_assets.models.training import LoraSettings, train_lora

    settings = LoraSettings(epochs=1, batch_size=args.train_batch, seed=args.seed, warmup=0.0, schedule="constant")
    placement = Placement(device, "bfloat16")
    samples = random_samples(
        args.train_batch * args.train_steps, shape.vocabulary, args.max_tokens, args.seed + 1, "train-"
    )
    warm = samples[: args.train_batch]
    peft_model, _ = train_lora(pruned, warm, PAD_ID, settings, placement=placement, gradient_checkpointing=True)
    base = peft_model.unload()  # the LoRA layers taken out again, no merge: the pruned model as it was
    del peft_model
    free_memory()
    weights = allocated_gib(device)
    reset_peak(device)
    log(f"{shape.name} LoRA: {len(samples)} rows, {args.train_steps} steps of {args.train_batch}")
    peft_model, record = train_lora(
        base, samples, PAD_ID, settings, log=log, placement=placement, gradient_checkpointing=True
    )
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    result = {
        "precision": record.precision,
        "gradient_checkpointing": True,
        "lora_r": settings.r,
        "trainable_parameters": trainable,
        "steps": len(record.steps),
        "rows_per_step": args.train_batch,
        "tokens": record.tokens,
        "seconds": round(record.seconds, 3),
        "step_s": round(record.seconds / len(record.steps), 4),
        "tokens_per_s": round(record.tokens / record.seconds, 1),
        "first_loss": round(record.losses[0], 4),
        "last_loss": round(record.losses[-1], 4),
        "model_memory_gib": weights,
        "peak_memory_gib": peak_gib(device),
    }
    assert all(math.isfinite(loss) for loss in record.losses), f"non-finite LoRA loss: {record.losses}"
    del peft_model
    return result


def section(
    report: dict[str, Any],
    key: str,
    errors: list[str],
    where: str,
    function: Callable[[], Any],
    args: argparse.Namespace,
) -> Any:
    """``report[key] = function()``; an error is recorded (and its traceback logged) instead of raised; past the
    time budget the section is skipped."""
    elapsed = time.monotonic() - START
    if elapsed > args.budget_s:
        report[key] = {"skipped": f"time budget of {args.budget_s} s spent ({elapsed:.0f} s)"}
        log(f"{where}: skipped, time budget spent")
        return None
    try:
        value = function()
    except Exception as error:
        traceback.print_exc(file=sys.stderr)
        message = f"{where}: {first_line(error)}"
        errors.append(message)
        report[key] = {"error": message}
        log(f"FAILED {message}")
        error.__traceback__ = None
        free_memory()
        return None
    report[key] = value
    return value


def check_shape(
    shape: Shape, device: Any, args: argparse.Namespace, peaks: dict[str, float | None], errors: list[str]
) -> dict[str, Any]:
    from paser_assets.models.device import Placement, place_model

    report: dict[str, Any] = {"dimensions": {k: v for k, v in asdict(shape).items() if k not in ("name", "rows")}}
    notes: list[str] = []
    models: dict[str, Any] = {}

    def build() -> dict[str, Any]:
        models["original"] = build_model(shape, device, args.seed)
        log(f"{shape.name}: built in bfloat16 on {device} ({allocated_gib(device)} GiB)")
        models["pruned"], pruning = prune_partner(models["original"], args.prune, shape, args.seed)
        log(f"{shape.name}: pruned ({pruning}), {allocated_gib(device)} GiB allocated")
        return {
            "parameters": sum(p.numel() for p in models["original"].parameters()),
            "attention": models["original"].config._attn_implementation,
            "pair_memory_gib": allocated_gib(device),
            **pruning,
        }

    log(f"{shape.name}: building the pair")
    if section(report, "model", errors, f"{shape.name} build", build, args) is None:
        return report
    rows = args.rows if args.rows else shape.rows
    samples = random_samples(rows, shape.vocabulary, args.max_tokens, args.seed, "s")
    scores: dict[str, dict[str, float]] = {}
    scoring: dict[str, Any] = {}
    report["scoring"] = scoring
    for precision in ("bfloat16", "float32"):

        def run(precision: str = precision) -> dict[str, Any]:
            for name in ("original", "pruned"):
                place_model(models[name], Placement(device, precision))  # bfloat16 -> float32 is exact
            figures, scores[precision] = score_pass(
                models["original"], models["pruned"], samples, shape, device, args, peaks, notes
            )
            log(f"{shape.name} {precision}: {figures}")
            return figures

        section(scoring, precision, errors, f"{shape.name} scoring {precision}", run, args)
    if len(scores) == 2:
        report["fidelity"] = fidelity(scores["float32"], scores["bfloat16"])
        bf16, fp32 = scoring["bfloat16"], scoring["float32"]
        report["bf16_speedup"] = round(bf16["tokens_per_s"] / fp32["tokens_per_s"], 3)
        report["bf16_ratio_to_fp32_floor"] = round(bf16["tokens_per_s"] / fp32["floor_tokens_per_s"], 3)
        log(f"{shape.name} fidelity: {report['fidelity']}")
    models.pop("original", None)
    free_memory()
    if shape.lora and "pruned" in models:
        section(
            report,
            "lora",
            errors,
            f"{shape.name} LoRA",
            lambda: lora_steps(models["pruned"], shape, device, args),
            args,
        )
        if "error" not in report["lora"] and "skipped" not in report["lora"]:
            log(f"{shape.name} LoRA: {report['lora']}")
    models.clear()
    free_memory()
    report["warnings"] = notes
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for a CPU: the CI test runs this")
    parser.add_argument("--shapes", default=None, help="comma-separated shape names (default: all three)")
    parser.add_argument("--rows", type=int, default=0, help="rows scored per shape (default: 1024, 512, 128)")
    parser.add_argument("--max-tokens", type=int, default=None, help="prompt + response tokens (512; tiny 64)")
    parser.add_argument("--prune", choices=("wanda", "magnitude", "random"), default="wanda")
    parser.add_argument("--train-steps", type=int, default=None, help="timed LoRA steps (8; tiny 2)")
    parser.add_argument("--train-batch", type=int, default=8, help="rows per LoRA step")
    parser.add_argument(
        "--compile-jsd",
        choices=("auto", "on", "off"),
        default=None,
        help="the scorer's torch.compile of the JSD kernel: auto as the plugin (vocabulary >= 16,384); tiny: off",
    )
    parser.add_argument("--budget-s", type=float, default=330.0, help="sections that would start later are skipped")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.max_tokens = args.max_tokens or (64 if args.tiny else 512)
    args.train_steps = args.train_steps or (2 if args.tiny else 8)
    args.compile_jsd = args.compile_jsd or ("off" if args.tiny else "auto")

    try:
        import peft  # noqa: F401
        import scipy  # noqa: F401
        import torch
        import transformers
    except ImportError as error:
        print(f"gpu_check: FAILED: {sys.executable} cannot import {error.name}; nothing was checked", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            f"gpu_check: FAILED: --device {args.device} but torch {torch.__version__} sees no GPU (a CPU build of "
            f"torch, no driver, or CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}); "
            "nothing was checked",
            file=sys.stderr,
        )
        return 2

    from paser_assets.models.device import resolve_device

    device = resolve_device(args.device)
    shapes = TINY_SHAPES if args.tiny else SHAPES
    if args.shapes:
        wanted = [name.strip() for name in args.shapes.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {s.name for s in shapes})
        if unknown:
            print(f"gpu_check: unknown shape(s) {unknown}; known: {[s.name for s in shapes]}", file=sys.stderr)
            return 2
        shapes = tuple(s for s in shapes if s.name in wanted)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    log(f"torch {torch.__version__}, transformers {transformers.__version__} on {device} ({name})")
    errors: list[str] = []
    result: dict[str, Any] = {
        "check": "gpu_check",
        "device": str(device),
        "device_name": name,
        "tiny": args.tiny,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "max_tokens": args.max_tokens,
        "prune": args.prune,
    }
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        result["gpu_memory_gib"] = round(total / GIB, 1)
        result["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    size, repeats = (8192, 40) if device.type == "cuda" else (256, 4)
    peaks: dict[str, Any] = {}

    def measure_peaks() -> dict[str, float]:
        measured = {
            "bfloat16": matmul_peak_tflops(device, torch.bfloat16, size, repeats),
            "float32": matmul_peak_tflops(device, torch.float32, size, max(2, repeats // 8)),
            "matrix_size": size,
        }
        free_memory()
        log(f"matrix peak (TFLOP/s): {measured}")
        return measured

    peaks = section(result, "peak_tflops", errors, "matrix peak", measure_peaks, args) or {}
    result["shapes"] = {}
    for shape in shapes:
        result["shapes"][shape.name] = check_shape(shape, device, args, peaks, errors)
    result["heavy_modules_loaded"] = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY_MODULES))
    result["errors"] = errors
    result["ok"] = not errors
    result["elapsed_s"] = round(time.monotonic() - START, 1)
    line = json.dumps(result)
    print(line, flush=True)
    if os.environ.get("OUT"):
        target = Path(os.environ["OUT"]) / "gpu_check.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(line + "\n")
    log(f"{'passed' if not errors else f'FAILED ({len(errors)} error(s))'} in {result['elapsed_s']} s")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
