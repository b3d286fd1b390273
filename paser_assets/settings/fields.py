"""How a setting is declared: ``setting(...)`` on a field of a :class:`Stage`, and the parsers of its env forms."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field, model_validator
from pydantic.fields import FieldInfo

if typing.TYPE_CHECKING:  # the domain objects are imported where they are built: `paser --help` needs no torch
    pass

if typing.TYPE_CHECKING:
    from paser_assets.settings.config import PaserConfig

Affects = Literal["results", "observed", "runtime"]
# Scores are committed this often, so an interrupted run loses at most this much scoring.
COMMIT_EVERY_S = 30.0
ENV_PREFIX = "PASER_"
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class SettingError(ValueError):
    """A setting (environment variable or config field) has a value that cannot be used."""


def setting(
    default: Any = ...,
    description: str = "",
    *,
    affects: Affects = "results",
    env: str | None = None,
    default_factory: Callable[[], Any] | None = None,
    **constraints: Any,
) -> Any:
    """A settings field: pydantic's ``Field`` plus how it ``affects`` results and an ``env`` name override."""
    extra: dict[str, Any] = {"affects": affects}
    if env is not None:
        extra["env"] = env
    if default_factory is not None:
        return Field(default_factory=default_factory, description=description, json_schema_extra=extra, **constraints)
    return Field(default=default, description=description, json_schema_extra=extra, **constraints)


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _literal_options(annotation: Any) -> tuple[str, ...] | None:
    """The options of ``Literal[...]`` or ``Literal[...] | None``; None for other annotations."""
    if typing.get_origin(annotation) is Literal:
        return tuple(typing.get_args(annotation))
    for argument in typing.get_args(annotation):
        if typing.get_origin(argument) is Literal:
            return tuple(typing.get_args(argument))
    return None


class Stage(dg.Config):
    """Settings of one stage. Names (``Literal`` options) are read case-insensitively."""

    @model_validator(mode="before")
    @classmethod
    def _names_case_insensitive(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fixed = dict(data)
        for name, info in cls.model_fields.items():
            value = fixed.get(name)
            if isinstance(value, str) and _literal_options(info.annotation):
                fixed[name] = value.strip().lower()
        return fixed

    @classmethod
    def version_value(cls, name: str, value: Any, config: PaserConfig) -> Any:
        """The value folded into code versions; a stage overrides it where a setting resolves by hardware
        (``config``: all the settings, for a resolution that depends on another one, such as the device)."""
        return value


def _parse_pairs(raw: str, separator: str, what: str, form: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.replace("\n", separator).split(separator))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{what} entry {part!r} is not of the form {form}")
        if key.strip() in mapping:
            raise ValueError(f"{what} names {key.strip()!r} twice")
        mapping[key.strip()] = value.strip()
    return mapping


def _folder_or_none(value: str | None) -> str | None:
    """A folder setting: it may not exist yet, but it may not be a file."""
    if value is not None and Path(value).expanduser().exists() and not Path(value).expanduser().is_dir():
        raise ValueError(f"{value} is a file, not a folder")
    return value


def parse_field_map(raw: str) -> dict[str, str]:
    """Parse ``"output=answer,instruction=question"`` into ``{"output": "answer", ...}``."""
    try:
        return _parse_pairs(raw, ",", "field map", "pool_field=source_field")
    except ValueError as error:
        raise SettingError(f"PASER_FIELD_MAP: {error}") from None
