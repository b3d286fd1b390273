"""PASER as a Dagster Component: ``type: paser_assets.PaserComponent`` in a ``defs.yaml``."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field, ValidationError

from paser_assets.graph import build_definitions
from paser_assets.resources import DEFAULT_DB, DEFAULT_SCHEMA, PaserConfig, PaserDuckDB
from paser_assets.settings import SettingError, describe_validation_error


class PaserComponent(dg.Component, dg.Model, dg.Resolvable):
    """The PASER asset graph on a DuckDB file.

    ``settings`` takes the settings of :class:`paser_assets.PaserConfig`, grouped by stage
    (``scoring: {max_tokens: 256}``) or flat by name (``max_tokens: 256``); an unknown name is an error.
    Settings left out keep their defaults, not the ``PASER_*`` environment, so a ``defs.yaml``
    describes the whole pipeline.
    """

    database: str = Field(default=DEFAULT_DB, description="Path to the DuckDB file.")
    schema_name: str = Field(default=DEFAULT_SCHEMA, description="Schema of the PASER tables.")
    lock_timeout_s: float = Field(default=60.0, description="Seconds to wait for another process's lock.")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="PaserConfig settings, grouped by stage or flat by name."
    )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        try:
            config = PaserConfig(**self.settings)
        except ValidationError as error:
            raise SettingError(
                describe_validation_error(error).replace("invalid setting", "invalid component settings")
            ) from None
        return build_definitions(
            config,
            PaserDuckDB(database=self.database, schema_name=self.schema_name, lock_timeout_s=self.lock_timeout_s),
        )
