"""Recovery adapters on disk (paser_assets.models.adapters): the recipe, train once, reuse."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from paser_assets.models.adapters import TrainingRecord, adapter_folder, adapter_recipe, train_or_reuse
from paser_assets.models.scoring import encode_sample
from paser_assets.models.training import LoraSettings
from paser_assets.pool.demo import generate_demo_pool

LORA = LoraSettings(learning_rate=1e-2, epochs=1, batch_size=4, seed=0)


def test_the_recipe_changes_with_everything_the_weights_depend_on() -> None:
    base = adapter_recipe(LORA, "pruned-a", ["s1", "s2"], 512, "float32")
    assert adapter_recipe(LORA, "pruned-a", ["s1", "s2"], 512, "float32") == base
    others = [
        adapter_recipe(dataclasses.replace(LORA, r=4), "pruned-a", ["s1", "s2"], 512, "float32"),
        adapter_recipe(dataclasses.replace(LORA, warmup=0.0), "pruned-a", ["s1", "s2"], 512, "float32"),
        adapter_recipe(dataclasses.replace(LORA, schedule="linear"), "pruned-a", ["s1", "s2"], 512, "float32"),
        adapter_recipe(LORA, "pruned-b", ["s1", "s2"], 512, "float32"),
        adapter_recipe(LORA, "pruned-a", ["s2", "s1"], 512, "float32"),  # the order is the training order
        adapter_recipe(LORA, "pruned-a", ["s1", "s2"], 256, "float32"),  # samples cut differently
        adapter_recipe(LORA, "pruned-a", ["s1", "s2"], 512, "bfloat16"),  # trained in another precision
        adapter_recipe(dataclasses.replace(LORA, loss="distillation"), "pruned-a", ["s1", "s2"], 512, "float32"),
    ]
    assert base not in others and len(set(others)) == len(others)
    folder = adapter_folder(Path("/cache"), "w50", "random", base)
    assert folder == Path("/cache/adapters/w50") / f"random-{base[:16]}"


def test_the_default_loss_keeps_the_recipes_of_adapters_trained_before_it_was_a_setting() -> None:
    # The recipe as written since the schedule came from transformers.get_scheduler: the default loss and the
    # runtime fields (gradient accumulation and checkpointing) left out.
    runtime = ("loss", "grad_accumulation", "gradient_checkpointing")
    before = {k: v for k, v in LORA.__dict__.items() if k not in runtime}
    recipe = {"lora": before, "pruned": "p", "samples": ["s1"], "max_tokens": 512, "precision": "float32",
              "scheduler": "transformers.get_scheduler"}  # fmt: skip
    expected = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()
    assert adapter_recipe(LORA, "p", ["s1"], 512, "float32") == expected


def demo_loader(tiny_pair, tokenizer, rows: int, seed: int, loads: list[int]) -> Callable[[], tuple]:
    """What ``train_or_reuse`` loads: a fresh copy of the tiny model, ``rows`` encoded demo samples and the pad
    id; each call appends to ``loads``, so that a test can tell whether anything was loaded."""
    samples = [
        encode_sample(tokenizer, f"s{i}", r["instruction"], r["input"], r["output"], 64)
        for i, r in enumerate(generate_demo_pool(rows, seed=seed))
    ]

    def load() -> tuple:
        loads.append(1)
        return copy.deepcopy(tiny_pair[0]), samples, tokenizer.pad_token_id

    return load


def test_distillation_loads_the_teacher_and_only_then(tmp_path: Path, tiny_pair, tokenizer) -> None:
    load = demo_loader(tiny_pair, tokenizer, rows=4, seed=2, loads=[])
    teachers: list[str] = []

    def load_teacher():
        teachers.append("original")
        return copy.deepcopy(tiny_pair[0])

    distilled = dataclasses.replace(LORA, loss="distillation")
    train_or_reuse(tmp_path / "nll", load, LORA, lambda _: None, None, load_teacher)
    assert teachers == []  # the response NLL needs no teacher
    record, trained = train_or_reuse(tmp_path / "kd", load, distilled, lambda _: None, None, load_teacher)
    assert trained and teachers == ["original"] and len(record.losses) == 1
    # The teacher is the model being recovered before any training: nothing to distil yet.
    assert record.losses[0] < 1e-6


def test_an_adapter_is_trained_once_and_then_reused(tmp_path: Path, tiny_pair, tokenizer) -> None:
    loads: list[int] = []
    load = demo_loader(tiny_pair, tokenizer, rows=8, seed=1, loads=loads)
    folder = tmp_path / "adapters" / "v" / "paser-x"
    record, trained = train_or_reuse(folder, load, LORA, lambda _: None)
    assert trained and loads == [1]
    assert record.tokens > 0 and len(record.losses) == len(record.steps) == 2  # 8 samples, batches of 4
    assert (folder / "adapter_model.safetensors").exists()
    again, trained_again = train_or_reuse(folder, load, LORA, lambda _: None)
    assert not trained_again and loads == [1]  # nothing loaded the second time
    assert again == record == TrainingRecord.read(folder)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging folder left behind
