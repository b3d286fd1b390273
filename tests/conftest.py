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


@pytest.fixture(scope="session")
def two_variants(tmp_path_factory: pytest.TempPathFactory):
    """The graph materialized for two variants of a trained tiny Llama into ``runs.duckdb``, with an on-disk
    Dagster instance (see ``two_variants.py``). Tests read it; one that changes the database works on a copy."""
    import dagster as dg
    from tiny_models import save_trained_tiny_checkpoint
    from two_variants import build_two_variants

    root = tmp_path_factory.mktemp("two-variants")
    original = save_trained_tiny_checkpoint(root / "trained-tiny-llama")
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("two-variants-home"))) as instance:
        yield build_two_variants(root, original, instance)
