"""Unstructured and N:M pruning of a causal LM's decoder linears: magnitude and Wanda.

Written here rather than taken from a library: llmcompressor (which has Wanda) pins an older
transformers and pulls GPU-oriented dependencies, and torch-pruning does structured pruning only.
Both methods are a few dozen lines on top of PyTorch hooks.

- magnitude: score |W_ij|, lowest scores removed across each layer's whole weight matrix;
- Wanda (Sun et al., 2023, "A Simple and Effective Pruning Approach for LLMs"): score
  |W_ij| * ||X_j||_2 with X the layer's input activations on calibration text, lowest scores
  removed per output row. Layers are pruned in order, each calibrated on the outputs of the
  already pruned layers before it, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from paser_assets.models.checkpoints import fit_to_context

PruneMethod = Literal["magnitude", "wanda"]


@dataclass(frozen=True)
class PruneRecipe:
    """How to prune: ``method``, unstructured ``sparsity`` or an N:M pattern such as 2:4."""

    method: PruneMethod = "wanda"
    sparsity: float = 0.5
    n_m: tuple[int, int] | None = None
    calibration_samples: int = 32
    calibration_tokens: int = 128

    def __post_init__(self) -> None:
        if self.method not in ("magnitude", "wanda"):
            raise ValueError(f"unknown pruning method {self.method!r}: use 'magnitude' or 'wanda'")
        if self.n_m is not None:
            n, m = self.n_m
            if not (0 < n < m):
                raise ValueError(f"an N:M pattern needs 0 < N < M, got {n}:{m}")
        elif not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must lie in [0, 1), got {self.sparsity}")

    @property
    def name(self) -> str:
        pattern = f"{self.n_m[0]}of{self.n_m[1]}" if self.n_m else f"{round(self.sparsity * 100):d}"
        return f"{self.method}-{pattern}"

    @property
    def effective_sparsity(self) -> float:
        return 1.0 - self.n_m[0] / self.n_m[1] if self.n_m else self.sparsity


def parse_n_m(text: str | None) -> tuple[int, int] | None:
    """``"2:4"`` -> (2, 4); empty -> None."""
    if not text:
        return None
    n, sep, m = text.partition(":")
    if not sep or not n.strip().isdigit() or not m.strip().isdigit():
        raise ValueError(f"an N:M pattern looks like '2:4', got {text!r}")
    return int(n), int(m)


def decoder_layers(model: Any) -> Sequence[torch.nn.Module]:
    """The transformer blocks of a causal LM (Llama-like ``model.model.layers`` and similar)."""
    base = model.base_model
    for attribute in ("layers", "h", "blocks"):
        layers = getattr(base, attribute, None)
        if isinstance(layers, torch.nn.ModuleList):
            return layers
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def _linears(layer: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    return {name: module for name, module in layer.named_modules() if isinstance(module, torch.nn.Linear)}


def prune_mask(scores: torch.Tensor, recipe: PruneRecipe, per_output: bool) -> torch.Tensor:
    """Boolean mask of the weights to remove (True = prune) for one weight matrix of scores."""
    rows, columns = scores.shape
    if recipe.n_m is not None:
        n, m = recipe.n_m
        if columns % m:
            raise ValueError(f"{columns} input features are not a multiple of M={m} for an {n}:{m} pattern")
        groups = scores.reshape(rows, columns // m, m)
        # Within each group of M consecutive inputs, remove the M - N lowest scores.
        lowest = torch.topk(groups, m - n, dim=-1, largest=False).indices
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, lowest, True)
        return mask.reshape(rows, columns)
    if per_output:
        count = int(columns * recipe.sparsity)
        if count == 0:
            return torch.zeros_like(scores, dtype=torch.bool)
        lowest = torch.topk(scores, count, dim=1, largest=False).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, lowest, True)
    count = int(scores.numel() * recipe.sparsity)
    if count == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    flat = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    flat[torch.topk(scores.flatten(), count, largest=False).indices] = True
    return flat.reshape(rows, columns)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the first decoder layer's inputs are captured."""


def _first_layer_inputs(model: Any, calibration: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """The hidden states and keyword arguments (rotary embeddings, masks) the first layer receives."""
    captured: dict[str, Any] = {}

    def capture(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        captured["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForward

    handle = decoder_layers(model)[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        model(input_ids=calibration, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured["hidden"], captured["kwargs"]


def _run_layer(layer: torch.nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    output = layer(hidden, **kwargs)
    return output[0] if isinstance(output, tuple) else output


def _input_norms(layer: torch.nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
    """||X_j||_2 over all calibration tokens, for the input of every linear of ``layer``."""
    squares: dict[str, torch.Tensor] = {}
    handles = []
    for name, linear in _linears(layer).items():

        def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], *, key: str = name) -> None:
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            squares[key] = squares.get(key, 0) + (x * x).sum(dim=0)

        handles.append(linear.register_forward_pre_hook(record))
    try:
        _run_layer(layer, hidden, kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: total.sqrt().float() for name, total in squares.items()}


def calibration_batch(tokenizer: Any, texts: Sequence[str], samples: int, tokens: int) -> torch.Tensor:
    """(samples, tokens) ids cut from the concatenated texts, EOS between them; no padding, so
    every activation is a real token's. Segments are at most the model's context long."""
    tokens = fit_to_context(tokenizer, tokens, "PASER_CALIBRATION_TOKENS")
    separator = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"] + separator)
        if len(stream) >= samples * tokens:
            break
    available = len(stream) // tokens
    if available == 0:
        raise ValueError(f"calibration text is shorter than one segment of {tokens} tokens")
    count = min(samples, available)
    return torch.tensor(stream[: count * tokens], dtype=torch.long).reshape(count, tokens)


@torch.inference_mode()
def prune_model(
    model: Any,
    recipe: PruneRecipe,
    calibration: torch.Tensor | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Prune ``model`` in place; returns the achieved sparsity per layer index (as strings)."""
    if recipe.method == "wanda" and calibration is None:
        raise ValueError("Wanda needs calibration token ids")
    achieved: dict[str, float] = {}
    layers = decoder_layers(model)
    hidden, layer_kwargs = _first_layer_inputs(model, calibration) if recipe.method == "wanda" else (None, {})
    for index, layer in enumerate(layers):
        norms = _input_norms(layer, hidden, layer_kwargs) if hidden is not None else {}
        removed = total = 0
        for name, linear in _linears(layer).items():
            weight = linear.weight.data
            scores = weight.abs() * norms[name].reshape(1, -1) if recipe.method == "wanda" else weight.abs()
            mask = prune_mask(scores, recipe, per_output=recipe.method == "wanda")
            weight[mask] = 0.0
            removed += int(mask.sum())
            total += mask.numel()
        achieved[str(index)] = removed / total if total else 0.0
        if hidden is not None:
            # The next layer is calibrated on what this layer outputs now that it is pruned.
            hidden = _run_layer(layer, hidden, layer_kwargs)
        if log is not None and (index + 1) % max(1, len(layers) // 4) == 0:
            log(f"pruned {index + 1}/{len(layers)} layers ({recipe.name})")
    return achieved


def measured_sparsity(model: Any) -> float:
    """Share of exact zeros among the decoder linears' weights."""
    zeros = total = 0
    for layer in decoder_layers(model):
        for linear in _linears(layer).values():
            zeros += int((linear.weight == 0).sum())
            total += linear.weight.numel()
    return zeros / total if total else 0.0
