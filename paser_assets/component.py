"""PASER as a Dagster Component: ``type: paser_assets.PaserComponent`` in a ``defs.yaml``."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field, ValidationError, create_model
from pydantic.fields import FieldInfo

from paser_assets.graph import build_definitions
from paser_assets.resources import DEFAULT_DB, DEFAULT_SCHEMA, PaserConfig, PaserDuckDB
from paser_assets.settings import STAGES, TOP_LEVEL, SettingError, describe_validation_error


def _schema_field(info: FieldInfo) -> tuple[Any, Any]:
    """A setting as the component's YAML schema declares it: its type, default and help. Its constraints (ge, le,
    patterns) stay with PaserConfig, which validates the values: Dagster's resolution takes plain types only."""
    default: dict[str, Any] = (
        {"default_factory": info.default_factory} if info.default_factory is not None else {"default": info.default}
    )
    return info.annotation, Field(description=info.description, **default)


def _schema_model(name: str, fields: dict[str, FieldInfo], doc: str | None) -> type[dg.Model]:
    return create_model(name, __base__=dg.Model, __doc__=doc, **{k: _schema_field(v) for k, v in fields.items()})


# The component's `settings`: every setting of PaserConfig by stage, typed, so that the YAML schema names each one
# with its help text and a misspelt name is refused by the schema. Derived from the declarations in settings.py.
STAGE_SCHEMAS = {stage: _schema_model(f"{model.__name__}Schema", model.model_fields, model.__doc__)
                 for stage, model in STAGES.items()}  # fmt: skip
PaserSettings = create_model(
    "PaserSettings",
    __base__=dg.Model,
    __doc__="PaserConfig's settings grouped by stage, as `paser settings` lists them; left out, a setting keeps its "
    "default.",
    **{name: _schema_field(PaserConfig.model_fields[name]) for name in TOP_LEVEL},
    **{
        stage: (schema, Field(default_factory=schema, description=STAGES[stage].__doc__))
        for stage, schema in STAGE_SCHEMAS.items()
    },
)


class PaserComponent(dg.Component, dg.Model, dg.Resolvable):
    """The PASER asset graph on a DuckDB file.

    ``settings`` takes the settings of :class:`paser_assets.PaserConfig` grouped by stage
    (``scoring: {max_tokens: 256}``); an unknown name is an error of the schema. Settings left out keep
    their defaults, not the ``PASER_*`` environment, so a ``defs.yaml`` describes the whole pipeline.
    """

    database: str = Field(default=DEFAULT_DB, description="Path to the DuckDB file.")
    schema_name: str = Field(default=DEFAULT_SCHEMA, description="Schema of the PASER tables.")
    lock_timeout_s: float = Field(default=60.0, description="Seconds to wait for another process's lock.")
    settings: PaserSettings = Field(  # type: ignore[valid-type]
        default_factory=PaserSettings, description="PaserConfig's settings, grouped by stage."
    )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        try:
            config = PaserConfig(**self.settings.model_dump(exclude_unset=True))
        except ValidationError as error:
            raise SettingError(
                describe_validation_error(error).replace("invalid setting", "invalid component settings")
            ) from None
        return build_definitions(
            config,
            PaserDuckDB(database=self.database, schema_name=self.schema_name, lock_timeout_s=self.lock_timeout_s),
        )
