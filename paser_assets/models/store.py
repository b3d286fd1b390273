"""Where model files live for a run: the original reference, the converted-GGUF cache and pruned checkpoints."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paser_assets.models.checkpoints import (
    CheckpointError,
    LoadOptions,
    ModelReference,
    load_causal_lm,
    parse_model_reference,
    record_context,
    reference_version,
    tokenizer_differences,
)
from paser_assets.models.device import Placement
from paser_assets.models.pruning import PruneRecipe


@dataclass(frozen=True)
class ModelStore:
    """Where a run's model files live and how they may be loaded, independent of Dagster."""

    original_model: str | None
    cache_dir: Path
    options: LoadOptions

    @property
    def original(self) -> ModelReference:
        return parse_model_reference(self.original_model)

    def pruned_folder(self, recipe: PruneRecipe, original_version: str, calibration_key: str) -> Path:
        """The folder of a built-in pruned checkpoint: one per recipe, original and calibration data."""
        payload = json.dumps(recipe.__dict__, sort_keys=True, default=str)
        key = hashlib.sha256(f"{payload}|{original_version}|{calibration_key}".encode()).hexdigest()[:16]
        return self.cache_dir / "pruned" / f"{recipe.name}-{key}"


def load_pair(settings: ModelStore, pruned: ModelReference, placement: Placement | None = None) -> tuple[Any, Any, Any]:
    """Load (original, pruned, tokenizer), both models placed alike (default: float32 on the CPU); fails
    with the differences when the tokenizers disagree."""
    original_model, original_tokenizer = load_causal_lm(
        settings.original, settings.cache_dir, settings.options, placement
    )
    pruned_model, pruned_tokenizer = load_causal_lm(pruned, settings.cache_dir, settings.options, placement)
    differences = tokenizer_differences(original_tokenizer, pruned_tokenizer)
    if differences:
        raise CheckpointError(
            f"the tokenizers of the original ({settings.original.display}) and pruned ({pruned.display}) models "
            f"disagree, so their next-token distributions cannot be compared: {'; '.join(differences)}"
        )
    record_context(original_tokenizer, pruned_model.config)  # both models read the same token ids
    return original_model, pruned_model, original_tokenizer


__all__ = ["ModelStore", "load_pair", "reference_version"]
