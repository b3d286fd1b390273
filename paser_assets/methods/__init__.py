"""Selection methods: what the recovery assets train on and compare, one object each in one registry.

A method is a :class:`SelectionMethod`: a name, whether it needs the models' degradation scores, and a
function from the selectable candidates and PASER's sample budget to the chosen sample ids. The product's
methods are in :mod:`paser_assets.methods.builtin`; other packages add theirs through the entry-point group
``paser_assets.methods``, whose entries are a :class:`SelectionMethod` or a sequence of them::

    [project.entry-points."paser_assets.methods"]
    shortest = "paser_shortest:SHORTEST"

The settings' validation (``PASER_RECOVERY_METHODS``), the per-method recovery assets, ``baseline_selections`` and
``paser methods`` all read :func:`registry`.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pandas as pd

ENTRY_POINT_GROUP = "paser_assets.methods"
PRODUCT = "paser-assets"  # the source named for the built-in methods
# Recovered and compared unless PASER_RECOVERY_METHODS says otherwise: PASER against random data of the same
# sample count and of the same training tokens.
DEFAULT_METHODS = ("paser", "random", "random_tokens")


class ModelAccess(Protocol):
    """The variant's models, loaded on first use (a method that needs none never loads them)."""

    def tokenizer(self) -> Any: ...

    def pruned_model(self) -> Any: ...

    def original_model(self) -> Any: ...


@dataclass(frozen=True)
class Candidates:
    """What a method chooses from: a variant's selectable rows (the held-out split excluded) and their context.

    ``frame`` has one row per sample, sorted by ``sample_id``: ``sample_id, cluster, jsd, ies, cost,
    response_tokens, tokens`` (prompt + response), ``original_nll, pruned_nll, concepts, instruction, input,
    output``. ``clusters`` holds PASER's allocation (``cluster, cds, budget``), ``paser_ids`` PASER's own
    selection in its order. ``models`` loads the variant's models when a method asks for them."""

    frame: pd.DataFrame
    clusters: pd.DataFrame
    paser_ids: tuple[str, ...]
    seed: int
    conflict_tolerance: float
    allocation: str
    max_tokens: int
    models: ModelAccess


Select = Callable[[Candidates, int], Sequence[str]]


@dataclass(frozen=True)
class SelectionMethod:
    """One selection method: ``select(candidates, budget)`` returns the chosen sample ids in selection order.

    ``budget`` is PASER's sample budget, which every method is compared at (a method may choose another size,
    as ``full`` and ``random_tokens`` do, and says so in its description). ``needs_scores``: whether it reads
    the models' degradation scores (``jsd``, ``ies``, the NLLs), so that its selection costs the scoring run."""

    name: str
    select: Select = field(repr=False)
    description: str
    needs_scores: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum() or self.name != self.name.lower():
            raise ValueError(f"a selection method's name is lower-case letters, digits and '_', got {self.name!r}")


@dataclass(frozen=True)
class RegisteredMethod:
    """A method with where it comes from: ``paser-assets``, or the distribution and entry point that added it."""

    method: SelectionMethod
    source: str


def _entry_point_methods(entry: metadata.EntryPoint) -> list[SelectionMethod]:
    loaded = entry.load()
    methods = [loaded] if isinstance(loaded, SelectionMethod) else list(loaded) if isinstance(loaded, Iterable) else []
    if not methods or not all(isinstance(m, SelectionMethod) for m in methods):
        raise TypeError(f"{entry.value} is not a SelectionMethod or a sequence of them")
    return methods


def discover(entries: Iterable[metadata.EntryPoint] | None = None) -> dict[str, RegisteredMethod]:
    """The built-in methods, then those of the entry points (default: the installed ``paser_assets.methods``
    group, sorted by name). A plugin that fails to load, or reuses a taken name, is skipped with a warning
    naming it, so that one broken package does not stop the pipeline."""
    from paser_assets.methods.builtin import BUILTIN

    found = {method.name: RegisteredMethod(method, PRODUCT) for method in BUILTIN}
    entries = metadata.entry_points(group=ENTRY_POINT_GROUP) if entries is None else entries
    for entry in sorted(entries, key=lambda e: (e.name, e.value)):
        dist = getattr(entry, "dist", None)
        source = f"{dist.name} {dist.version}" if dist is not None else entry.value
        source = f"{source} (entry point {entry.name})"
        try:
            methods = _entry_point_methods(entry)
        except Exception as error:  # a plugin's own bug: name it, keep the rest working
            warnings.warn(f"selection methods of {source} not loaded: {error}", stacklevel=2)
            continue
        for method in methods:
            if method.name in found:
                warnings.warn(
                    f"{source} registers the method {method.name!r}, already registered by "
                    f"{found[method.name].source}: kept the first",
                    stacklevel=2,
                )
                continue
            found[method.name] = RegisteredMethod(method, source)
    return found


@functools.cache
def registry() -> dict[str, RegisteredMethod]:
    """Every registered method by name, in a fixed order: the product's, then the plugins' (loaded once)."""
    return discover()


def method_names() -> tuple[str, ...]:
    return tuple(registry())


def get_method(name: str) -> SelectionMethod:
    """The registered method of that name; a KeyError naming the registered ones otherwise."""
    methods = registry()
    if name not in methods:
        raise KeyError(f"no selection method {name!r}; registered: {', '.join(methods)} (`paser methods`)")
    return methods[name].method


def choose(
    names: Sequence[str], candidates: Candidates, budget: int, log: Callable[[str], None] = print
) -> dict[str, list[str]]:
    """Each named method's choice from ``candidates`` at ``budget``, checked: the ids must be distinct sample ids
    of the candidates. A method that breaks this is a ValueError naming it and the first offending id."""
    selectable = set(candidates.frame["sample_id"])
    picks: dict[str, list[str]] = {}
    for name in names:
        method = get_method(name)
        start = time.monotonic()
        chosen = [str(sample_id) for sample_id in method.select(candidates, budget)]
        unknown = next((s for s in chosen if s not in selectable), None)
        if unknown is not None:
            raise ValueError(f"method {name!r} chose {unknown!r}, not a selectable sample (held out or absent)")
        repeated = next((s for s, n in Counter(chosen).items() if n > 1), None)
        if repeated is not None:
            raise ValueError(f"method {name!r} chose the sample {repeated!r} more than once")
        if not chosen:
            raise ValueError(f"method {name!r} chose no sample")
        log(f"{name}: {len(chosen)} samples in {time.monotonic() - start:.1f}s")
        picks[name] = chosen
    return picks


__all__ = [
    "DEFAULT_METHODS",
    "ENTRY_POINT_GROUP",
    "Candidates",
    "ModelAccess",
    "RegisteredMethod",
    "SelectionMethod",
    "choose",
    "discover",
    "get_method",
    "method_names",
    "registry",
]
