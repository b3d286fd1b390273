"""One asset graph per pruned variant: every asset that reads a pruned model is keyed ``<variant>/<asset>``.

Dagster 1.13 computes staleness at the asset level only for unpartitioned assets (the catalog, the lineage and
*Materialize unsynced* ask about an asset, not a partition), so each variant gets its own unpartitioned keys,
in a group of its own, with its observed ``<variant>/pruned_checkpoint`` a direct parent of every one of them.
A re-prune then shows as unsynced exactly where users look, and automation requests a variant's stale assets
in one run, in dependency order. The recovery assets that train or evaluate one method are keyed
``<variant>/<asset>/<method>``, one per configured method.

An asset module declares a per-variant asset once, with :func:`variant_asset` (or :func:`variant_multi_asset`,
:func:`variant_check`); :func:`build_variant` makes its Dagster definitions for one variant. Dependencies are
given by asset name: a per-variant name becomes the same variant's key, any other name stays a shared key.
The function finds its variant (and method) with :func:`variant_of` / :func:`method_of`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

RECOVERY_TAG = "paser/recovery"  # on the assets of the recovery comparison, run only with PASER_RECOVERY
SHARED_GROUPS = frozenset({"pool", "semantic", "models", "default"})
CHECKPOINT = "pruned_checkpoint"  # each variant's observed checkpoint, a direct parent of all its assets


class VariantNameError(ValueError):
    """Two variants, or a variant and a shared group, whose Dagster group names would be the same."""


def group_of(variant: str) -> str:
    """The variant's Dagster group: its name with '-' as '_' (group names allow only ``[A-Za-z0-9_]``)."""
    return variant.replace("-", "_")


def check_group_names(variants: Iterable[str]) -> None:
    """Refuse variants whose groups (and op names) would collide: ``a-b`` and ``a_b``, or a shared group's name."""
    seen: dict[str, str] = {}
    for variant in variants:
        group = group_of(variant)
        if group in SHARED_GROUPS:
            raise VariantNameError(f"variant name {variant!r} is taken by the shared asset group {group!r}")
        if group in seen and seen[group] != variant:
            raise VariantNameError(
                f"variants {seen[group]!r} and {variant!r} would share the Dagster group {group!r}: rename one"
            )
        seen[group] = variant


def variant_key(variant: str, name: str, method: str | None = None) -> dg.AssetKey:
    return dg.AssetKey([variant, name] if method is None else [variant, name, method])


def _context_key(context: Any) -> dg.AssetKey:
    if isinstance(context, dg.AssetCheckExecutionContext):
        return context.check_specs[0].asset_key
    return next(iter(context.assets_def.keys))  # a multi-asset's keys share one variant


def variant_of(context: Any) -> str:
    """The variant an asset (or check) is computing: the first component of its key."""
    return _context_key(context).path[0]


def method_of(context: Any) -> str:
    """The recovery method of a per-method asset (``<variant>/<asset>/<method>``)."""
    return _context_key(context).path[2]


@dataclass(frozen=True)
class VariantAsset:
    """A per-variant asset as an asset module declares it; :meth:`build` makes it for one variant."""

    name: str
    function: Callable[..., Any]
    deps: tuple[str, ...]
    options: dict[str, Any]
    per_method: bool = False
    recovery: bool = False
    outputs: tuple[str, ...] = ()  # a multi-asset's other asset names (selection also writes concept_graph)
    output_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.outputs)

    def build(self, variant: str, methods: Sequence[str]) -> list[dg.AssetsDefinition]:
        tags = {RECOVERY_TAG: "true"} if self.recovery else {}
        built = []
        for method in methods if self.per_method else [None]:
            deps = [key for dep in self.deps for key in _resolve(dep, variant, method, methods)]
            if not self.outputs:
                built.append(
                    dg.asset(
                        key=variant_key(variant, self.name, method),
                        deps=deps,
                        group_name=group_of(variant),
                        tags=tags,
                        **self.options,
                    )(self.function)
                )
                continue
            specs = [
                dg.AssetSpec(variant_key(variant, name), deps=deps, group_name=group_of(variant), tags=tags,
                             **self.output_options[name])
                for name in self.names
            ]  # fmt: skip
            name = f"{group_of(variant)}__{self.name}"
            built.append(dg.multi_asset(name=name, specs=specs, **self.options)(self.function))
        return built


@dataclass(frozen=True)
class VariantCheck:
    """A per-variant asset check on the variant's asset ``asset``."""

    asset: str
    function: Callable[..., Any]
    options: dict[str, Any]

    def build(self, variant: str) -> dg.AssetChecksDefinition:
        return dg.asset_check(asset=variant_key(variant, self.asset), **self.options)(self.function)


# Every per-variant asset and check, by name, in declaration order: the asset modules fill these at import.
ASSETS: dict[str, VariantAsset] = {}
CHECKS: list[VariantCheck] = []


def _resolve(dep: str, variant: str, method: str | None, methods: Sequence[str]) -> list[dg.AssetKey]:
    if dep == CHECKPOINT:
        return [variant_key(variant, dep)]
    owner = next((asset for asset in ASSETS.values() if dep in asset.names), None)
    if owner is None:
        return [dg.AssetKey(dep)]
    if not owner.per_method:
        return [variant_key(variant, dep)]
    chosen = [method] if method is not None else methods
    return [variant_key(variant, dep, m) for m in chosen]


def variant_asset(
    *, deps: Sequence[str], per_method: bool = False, recovery: bool = False, **options: Any
) -> Callable[[Callable[..., Any]], VariantAsset]:
    """Declare a per-variant asset named after the function; ``options`` go to ``dg.asset``."""

    def declare(function: Callable[..., Any]) -> VariantAsset:
        asset = VariantAsset(function.__name__, function, tuple(deps), options, per_method, recovery)
        ASSETS[asset.name] = asset
        return asset

    return declare


def variant_multi_asset(
    *, deps: Sequence[str], outputs: dict[str, dict[str, Any]]
) -> Callable[[Callable[..., Any]], VariantAsset]:
    """Declare a per-variant multi-asset: ``outputs`` maps each asset name (the function's first) to its spec."""

    def declare(function: Callable[..., Any]) -> VariantAsset:
        names = list(outputs)
        asset = VariantAsset(names[0], function, tuple(deps), {}, outputs=tuple(names[1:]), output_options=outputs)
        ASSETS[asset.name] = asset
        return asset

    return declare


def variant_check(*, asset: str, **options: Any) -> Callable[[Callable[..., Any]], VariantCheck]:
    """Declare a per-variant asset check on the variant's ``asset``; ``options`` go to ``dg.asset_check``."""

    def declare(function: Callable[..., Any]) -> VariantCheck:
        check = VariantCheck(asset, function, options)
        CHECKS.append(check)
        return check

    return declare


def variant_asset_names(recovery: bool | None = None) -> list[str]:
    """The names of the per-variant assets (``recovery``: only those of the recovery comparison, or none)."""
    return [name for asset in ASSETS.values() if recovery is None or asset.recovery == recovery for name in asset.names]


def variant_of_key(key: dg.AssetKey) -> str | None:
    """The variant of a per-variant key, None for a shared one."""
    return key.path[0] if len(key.path) > 1 and key.path[1] in {CHECKPOINT, *variant_asset_names()} else None
