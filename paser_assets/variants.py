"""Pruned variants: named pruned models whose scores and selections sit side by side in the same tables.

A variant is either a built-in pruning recipe (``wanda:0.5``, ``magnitude:0.6``, ``wanda:2:4``) or
an external checkpoint (a folder or ``.gguf`` file). Variant names become the first part of asset keys,
Dagster groups, file names of the export and values in SQL tables, so they are restricted to letters, digits, ``_``
and ``-``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paser_assets.models.pruning import PruneRecipe, parse_n_m

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class VariantError(ValueError):
    """A variant name or specification that cannot be used."""


def validate_variant_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise VariantError(
            f"invalid variant name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Variant:
    """A named pruned model: a built-in ``recipe`` or an external ``checkpoint``, never both."""

    name: str
    recipe: PruneRecipe | None = None
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        validate_variant_name(self.name)
        if (self.recipe is None) == (self.checkpoint is None):
            raise VariantError(f"variant {self.name!r} needs exactly one of a recipe or a checkpoint")

    @property
    def kind(self) -> str:
        return "recipe" if self.recipe is not None else "checkpoint"

    @property
    def spec(self) -> str:
        """The canonical specification string, as :func:`parse_variant_spec` reads it."""
        if self.checkpoint is not None:
            return self.checkpoint
        assert self.recipe is not None
        pattern = f"{self.recipe.n_m[0]}:{self.recipe.n_m[1]}" if self.recipe.n_m else f"{self.recipe.sparsity:g}"
        return f"{self.recipe.method}:{pattern}"

    def fingerprint(self) -> str:
        """A hash of the specification: the data version of a recipe variant's 'checkpoint'."""
        payload: dict[str, Any] = {"kind": self.kind, "spec": self.spec}
        if self.recipe is not None:
            payload["recipe"] = self.recipe.__dict__
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def parse_variant_spec(name: str, spec: str, recipe_defaults: PruneRecipe | None = None) -> Variant:
    """``wanda:0.5`` / ``magnitude:2:4`` make a recipe variant; anything else is a checkpoint path."""
    spec = spec.strip()
    method, sep, rest = spec.partition(":")
    defaults = recipe_defaults or PruneRecipe()
    if sep and method in ("wanda", "magnitude"):
        try:
            n_m = parse_n_m(rest) if rest.count(":") == 1 else None
            sparsity = defaults.sparsity if n_m else float(rest)
            recipe = PruneRecipe(
                method=method,  # type: ignore[arg-type]
                sparsity=sparsity,
                n_m=n_m,
                calibration_samples=defaults.calibration_samples,
                calibration_tokens=defaults.calibration_tokens,
            )
        except ValueError as error:
            raise VariantError(f"variant {name!r}: bad recipe {spec!r}: {error}") from None
        return Variant(name, recipe=recipe)
    if not spec:
        raise VariantError(f"variant {name!r} has an empty specification")
    return Variant(name, checkpoint=str(Path(spec).expanduser()))


def parse_variants(text: str, recipe_defaults: PruneRecipe | None = None) -> list[Variant]:
    """``"wanda50=wanda:0.5; mine=/ckpt/pruned"`` -> variants, in order; names must be unique."""
    variants: list[Variant] = []
    for part in filter(None, (p.strip() for p in text.replace("\n", ";").split(";"))):
        name, sep, spec = part.partition("=")
        if not sep:
            raise VariantError(f"variant entry {part!r} is not of the form name=spec")
        variants.append(parse_variant_spec(validate_variant_name(name.strip()), spec, recipe_defaults))
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise VariantError(f"variant names repeat: {duplicates}")
    return variants


def configured_variants(variants: Mapping[str, str], pruned_model: str | None, recipe: PruneRecipe) -> list[Variant]:
    """The variants the model settings ask for: ``variants`` if given, else the external ``pruned_model``, else
    one variant of the pruning ``recipe``."""
    if variants:
        return [parse_variant_spec(validate_variant_name(name), spec, recipe) for name, spec in variants.items()]
    if pruned_model:
        return [Variant("external", checkpoint=pruned_model)]
    return [Variant(recipe.name, recipe=recipe)]
