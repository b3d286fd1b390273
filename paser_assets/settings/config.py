"""The ``paser`` resource: every stage composed, read from ``PASER_*`` variables, and what the declarations derive."""

from __future__ import annotations

import hashlib
import json
import os
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any

import dagster as dg
from pydantic import Field, ValidationError
from pydantic.fields import FieldInfo

if typing.TYPE_CHECKING:  # the domain objects are imported where they are built: `paser --help` needs no torch
    pass
from paser_assets.settings.fields import ENV_PREFIX, Affects, SettingError, Stage, _extra, setting
from paser_assets.settings.stages import (
    EvaluationSettings,
    ExecutionSettings,
    ModelSettings,
    PoolSettings,
    PruningSettings,
    RecoverySettings,
    ScoringSettings,
    SelectionSettings,
    SemanticSettings,
)

# The stages of PaserConfig, in pipeline order: attribute name -> settings model.
STAGES: dict[str, type[Stage]] = {
    "pool": PoolSettings,
    "semantic": SemanticSettings,
    "models": ModelSettings,
    "pruning": PruningSettings,
    "scoring": ScoringSettings,
    "selection": SelectionSettings,
    "recovery": RecoverySettings,
    "evaluation": EvaluationSettings,
    "execution": ExecutionSettings,
}
# Settings that belong to no single stage.
TOP_LEVEL = ("seed",)


@dataclass(frozen=True)
class SettingInfo:
    """One setting as the declarations describe it."""

    path: str  # "scoring.max_tokens", or "seed"
    name: str  # the field name, also its flat key in a component's `settings`
    stage: str | None
    env: str
    affects: Affects
    info: FieldInfo

    @property
    def description(self) -> str:
        return self.info.description or ""


class PaserConfig(dg.ConfigurableResource):
    """Settings of the PASER pipeline, grouped by stage. Every field has a ``PASER_*`` environment variable.

    Construct it grouped (``PaserConfig(scoring=ScoringSettings(max_tokens=256))``) or flat by field name
    (``PaserConfig(max_tokens=256)``); :meth:`from_env` reads the environment.
    """

    seed: int = setting(0, "Seed for every random step.", ge=0, le=2**32 - 1)
    pool: PoolSettings = Field(default_factory=PoolSettings, description=PoolSettings.__doc__)
    semantic: SemanticSettings = Field(default_factory=SemanticSettings, description=SemanticSettings.__doc__)
    models: ModelSettings = Field(default_factory=ModelSettings, description=ModelSettings.__doc__)
    pruning: PruningSettings = Field(default_factory=PruningSettings, description=PruningSettings.__doc__)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings, description=ScoringSettings.__doc__)
    selection: SelectionSettings = Field(default_factory=SelectionSettings, description=SelectionSettings.__doc__)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings, description=RecoverySettings.__doc__)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings, description=EvaluationSettings.__doc__)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings, description=ExecutionSettings.__doc__)

    def __init__(self, **data: Any) -> None:
        # Grouped before Dagster sees them: Dagster keeps the keys given here as the resource's config.
        super().__init__(**group_settings(data))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PaserConfig:
        """Settings from ``PASER_*`` variables; unset or empty variables keep the defaults."""
        env = os.environ if env is None else env
        unknown = unknown_variables(env)
        if unknown:
            raise SettingError(f"unknown settings in the environment: {', '.join(unknown)}; unset them")
        values: dict[str, Any] = {}
        raw_by_path: dict[str, str] = {}
        for item in all_settings():
            raw = env.get(item.env, "").strip()
            if raw:
                values[item.name] = raw
                raw_by_path[item.path] = raw
        try:
            return cls(**values)
        except ValidationError as error:
            raise SettingError(describe_validation_error(error, raw_by_path)) from None

    def value(self, path: str) -> Any:
        stage, _, name = path.rpartition(".")
        return getattr(getattr(self, stage) if stage else self, name)

    def fingerprint(self, paths: frozenset[str] | set[str]) -> str | None:
        """A short hash of the result-affecting settings among ``paths``; None when there are none."""
        values = {}
        for item in all_settings():
            if item.affects == "results" and (item.path in paths or item.stage in paths):
                model = STAGES[item.stage] if item.stage else Stage
                values[item.path] = model.version_value(item.name, self.value(item.path), self)
        if not values:
            return None
        return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


def group_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """Settings given by field name (``max_tokens=256``) moved into their stages; unknown names are an error."""
    stage_of = {item.name: item.stage for item in all_settings() if item.stage is not None}
    grouped: dict[str, Any] = {}
    unknown = []
    for key, value in data.items():
        if key in STAGES or key in TOP_LEVEL:
            grouped[key] = _merge(grouped.get(key), value) if key in STAGES else value
        elif key in stage_of:
            grouped[stage_of[key]] = _merge(grouped.get(stage_of[key]), {key: value})
        else:
            unknown.append(key)
    if unknown:
        known = [*stage_of, *STAGES, *TOP_LEVEL]
        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := get_close_matches(k, known, 1)) else "")
                 for k in unknown]  # fmt: skip
        raise SettingError(f"unknown settings: {', '.join(hints)}")
    return grouped


def _merge(current: Any, more: Any) -> Any:
    """Two partial settings of one stage (dicts or stage models) as one dict."""
    if current is None:
        return more
    as_dict = [part.model_dump() if isinstance(part, Stage) else dict(part) for part in (current, more)]
    return {**as_dict[0], **as_dict[1]}


def all_settings() -> Iterator[SettingInfo]:
    """Every setting of :class:`PaserConfig`, from the declarations."""
    for name in TOP_LEVEL:
        info = PaserConfig.model_fields[name]
        yield SettingInfo(name, name, None, _extra(info).get("env", ENV_PREFIX + name.upper()), "results", info)
    for stage, model in STAGES.items():
        for name, info in model.model_fields.items():
            extra = _extra(info)
            env = extra.get("env", ENV_PREFIX + name.upper())
            yield SettingInfo(f"{stage}.{name}", name, stage, env, extra.get("affects", "results"), info)


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """``PASER_*`` variables that name no setting (a typo would otherwise leave the default in force silently)."""
    from paser_assets.resources import PaserDuckDB

    known = [*environment_names().values(), *PaserDuckDB.environment_names().values()]
    found = []
    for name in sorted(v for v in env if v.startswith(ENV_PREFIX) and v not in known):
        match = get_close_matches(name, known, 1)
        found.append(name + (f" (did you mean {match[0]}?)" if match else ""))
    return found


def environment_names() -> dict[str, str]:
    """Setting path -> environment variable."""
    return {item.path: item.env for item in all_settings()}


def describe_validation_error(
    error: ValidationError,
    raw_by_path: Mapping[str, str] | None = None,
    settings: Iterable[SettingInfo] | None = None,
) -> str:
    """One line per problem, naming the environment variable, the value given and what is allowed.

    ``settings``: the fields the error can be about (default: PaserConfig's)."""
    known = list(all_settings() if settings is None else settings)
    by_path = {item.path: item for item in known}
    by_name = {item.name: item for item in known}
    problems = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"])
        item = by_path.get(location) or by_name.get(location.rpartition(".")[2])
        name = item.env if item else location or "settings"
        given = (raw_by_path or {}).get(item.path) if item else None
        value = given if given is not None else problem.get("input")
        message = problem["msg"].removeprefix("Value error, ")
        problems.append(f"{name}={value!r}: {message}" if item else f"{name}: {message}")
    return "invalid setting: " + "; ".join(problems)
