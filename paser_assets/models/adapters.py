"""Recovery adapters on disk: one folder per (variant, method, recipe), trained once and reused.

The recipe is everything the adapter's weights depend on: the LoRA settings, the pruned checkpoint's
content hash, the selected samples in order and how they were cut (``max_tokens``). A folder is written
in a staging place and moved into place whole, so a crash never leaves half an adapter.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paser_assets.models.checkpoints import publish_folder, staging_folder
from paser_assets.models.device import Placement
from paser_assets.models.scoring import EncodedSample
from paser_assets.models.training import LoraSettings, save_adapter, train_lora

TRAINING_RECORD = "paser_training.json"


RUNTIME_FIELDS = ("grad_accumulation", "gradient_checkpointing")
SCHEDULER = "transformers.get_scheduler"


def adapter_recipe(
    lora: LoraSettings, pruned_version: str, sample_ids: Sequence[str], max_tokens: int, precision: str
) -> str:
    """A hash of what an adapter's weights depend on, the compute precision of training included."""
    fields = dict(lora.__dict__)
    if fields["loss"] == "response_nll":  # the loss before it was a setting: those adapters keep their recipe
        del fields["loss"]
    for how in RUNTIME_FIELDS:  # how a step is computed, not what: an adapter is reused across these
        fields.pop(how, None)
    recipe = {
        "lora": fields,
        # transformers.get_scheduler's warm-up starts at 0 where the schedule before it started at 1/w: the
        # adapters trained before it are not reused.
        "scheduler": SCHEDULER,
        "pruned": pruned_version,
        "samples": list(sample_ids),
        "max_tokens": max_tokens,
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()


def adapter_folder(cache_dir: Path, variant: str, method: str, recipe: str) -> Path:
    """Where the adapter of ``method``'s selection on ``variant`` with this recipe is kept."""
    return cache_dir / "adapters" / variant / f"{method}-{recipe[:16]}"


@dataclass(frozen=True)
class TrainingRecord:
    """What training an adapter cost and how its loss went, kept beside the adapter."""

    steps: list[int]
    losses: list[float]
    tokens: int
    seconds: float
    precision: str = "float32"  # adapters trained before the precision setting were float32
    device: str = "cpu"

    @classmethod
    def read(cls, folder: Path) -> TrainingRecord | None:
        path = folder / TRAINING_RECORD
        return cls(**json.loads(path.read_text())) if path.exists() else None


def train_or_reuse(
    folder: Path,
    load: Callable[[], tuple[Any, Sequence[EncodedSample], int]],
    lora: LoraSettings,
    log: Callable[[str], None],
    placement: Placement | None = None,
    load_teacher: Callable[[], Any] | None = None,
) -> tuple[TrainingRecord, bool]:
    """The adapter in ``folder``, trained now unless it is there already; returns (record, trained_now).

    ``load`` gives (pruned model, encoded samples, pad id) and ``load_teacher`` the original model (for
    ``lora.loss == "distillation"``); both are called only when training is needed. Training runs on
    ``placement`` (None: where and as the model is).
    """
    record = TrainingRecord.read(folder)
    if record is not None:
        log(f"reusing the adapter {folder} (same selection, settings and pruned model)")
        return record, False
    model, samples, pad_id = load()
    teacher = load_teacher() if lora.loss == "distillation" and load_teacher is not None else None
    peft_model, training = train_lora(model, samples, pad_id, lora, log, placement, teacher)
    staging = staging_folder(folder)
    save_adapter(peft_model, staging)
    device = str(placement.device) if placement is not None else str(next(model.parameters()).device)
    record = TrainingRecord(
        training.steps, training.losses, training.tokens, training.seconds, training.precision, device
    )
    (staging / TRAINING_RECORD).write_text(json.dumps(record.__dict__))
    publish_folder(staging, folder)
    return record, True
