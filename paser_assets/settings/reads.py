"""What an asset reads: ``@reads(...)`` declares it, and the asset is given a view of exactly those settings."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

if typing.TYPE_CHECKING:  # the domain objects are imported where they are built: `paser --help` needs no torch
    pass
from paser_assets.settings.config import STAGES, TOP_LEVEL, PaserConfig, all_settings
from paser_assets.settings.fields import Stage

READS_ATTRIBUTE = "__paser_reads__"


class UndeclaredSettingError(AttributeError):
    """An asset read a setting that its ``@reads(...)`` declaration does not name."""


# Settings each asset function has read in this process, by function name: tests compare it with the
# declarations, so that a declared setting an asset never reads (and would only make it stale) is found.
READ_LOG: dict[str, set[str]] = {}


def _record(owner: str, path: str) -> None:
    READ_LOG.setdefault(owner, set()).add(path)


class _StageView:
    """A stage's settings restricted to the declared fields; methods run against the view, so they check too."""

    def __init__(self, stage: str, model: Stage, allowed: frozenset[str], owner: str) -> None:
        self._stage, self._model, self._allowed, self._owner = stage, model, allowed, owner

    def __getattr__(self, name: str) -> Any:
        model = object.__getattribute__(self, "_model")
        if name in type(model).model_fields:
            if name not in self._allowed:
                raise UndeclaredSettingError(
                    f"{self._owner} reads {self._stage}.{name} without declaring it in @reads(...): declare it so "
                    "that a change of it marks the asset stale"
                )
            _record(self._owner, f"{self._stage}.{name}")
            return getattr(model, name)
        attribute = inspect.getattr_static(type(model), name, None)
        if callable(attribute) or isinstance(attribute, property):
            return attribute.__get__(self, type(model))  # the method reads fields through this view
        raise AttributeError(f"{type(model).__name__} has no setting {name!r}")


class SettingsView:
    """What an asset is given instead of the whole :class:`PaserConfig`: the settings it declared, nothing else."""

    def __init__(self, config: PaserConfig, paths: frozenset[str], owner: str) -> None:
        self._config, self._paths, self._owner = config, paths, owner

    def __getattr__(self, name: str) -> Any:
        if name in STAGES:
            fields = set(STAGES[name].model_fields)
            allowed = fields if name in self._paths else {p.split(".", 1)[1] for p in self._paths if "." in p
                                                         and p.split(".", 1)[0] == name}  # fmt: skip
            return _StageView(name, getattr(self._config, name), frozenset(allowed), self._owner)
        if name in TOP_LEVEL:
            if name not in self._paths:
                raise UndeclaredSettingError(f"{self._owner} reads {name} without declaring it in @reads(...)")
            _record(self._owner, name)
            return getattr(self._config, name)
        raise AttributeError(f"PaserConfig has no stage or setting {name!r}")


def validate_paths(paths: tuple[str, ...]) -> frozenset[str]:
    known = {item.path for item in all_settings()} | set(STAGES)
    unknown = sorted(set(paths) - known)
    if unknown:
        raise ValueError(f"unknown settings in @reads: {unknown}")
    return frozenset(paths)


def reads(*paths: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the settings an asset reads: ``"scoring.max_tokens"``, a whole stage (``"pool"``) or ``"seed"``.

    The decorated function's ``paser`` argument becomes a :class:`SettingsView` of exactly these settings,
    and their values are folded into the asset's code version (see ``graph.py``).
    """
    declared = validate_paths(paths)

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        takes_config = "paser" in inspect.signature(function).parameters

        def restricted(kwargs: dict[str, Any]) -> dict[str, Any]:
            if takes_config and isinstance(kwargs.get("paser"), PaserConfig):
                kwargs["paser"] = SettingsView(kwargs["paser"], declared, function.__name__)
            return kwargs

        # Dagster tells a generator asset (one that yields several results) from its function's kind.
        if inspect.isgeneratorfunction(function):

            @functools.wraps(function)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                yield from function(*args, **restricted(kwargs))
        else:

            @functools.wraps(function)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return function(*args, **restricted(kwargs))

        setattr(wrapper, READS_ATTRIBUTE, declared)
        return wrapper

    return decorate


def declared_reads(function: Callable[..., Any]) -> frozenset[str] | None:
    return getattr(function, READS_ATTRIBUTE, None)
