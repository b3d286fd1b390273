"""Shared fixtures: a tiny randomly initialised Llama checkpoint (see ``tiny_models``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny_models import save_tiny_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama checkpoint folder (safetensors) with a chat template."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama") / "model")
