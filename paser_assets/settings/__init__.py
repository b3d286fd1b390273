"""Typed settings of the PASER pipeline: one model per stage, composed into the ``paser`` resource.

Every fact about a setting is written once, on its field: type, default, constraints, help text, how it
bears on results (``affects``) and, only where it is not ``PASER_<FIELD>``, its environment name. From
these declarations follow the environment names (:func:`environment_names`), the UI's config schema
(Dagster reads the nested models), the component's typed YAML ``settings``, the reference in docs/ (written
by scripts/reference.py, tested) and every asset's code version (:func:`reads` and
:meth:`PaserConfig.fingerprint`).

The modules: :mod:`~paser_assets.settings.fields` (how a setting is declared), :mod:`~.stages` (the
settings, one model per stage), :mod:`~.config` (the composed resource and the environment) and
:mod:`~.reads` (what an asset may read).

An asset declares what it reads with :func:`reads` and is then given a :class:`SettingsView` that
holds only those settings: reading an undeclared one raises, so no setting can be read without also
marking the assets that read it as stale when it changes.

``affects`` says how a change reaches the assets:

- ``results``: it changes what an asset computes; it is folded into the code version of every asset
  that reads it.
- ``observed``: it names or builds a model checkpoint; a change reaches the assets through the
  observed checkpoint's data version (its content hash or recipe fingerprint), not the code version.
- ``runtime``: speed, memory, location of caches, safety switches or which assets a command runs;
  results do not depend on it (beyond floating-point rounding where stated).
"""

from paser_assets.settings.config import (
    STAGES,
    TOP_LEVEL,
    PaserConfig,
    SettingInfo,
    all_settings,
    describe_validation_error,
    environment_names,
    group_settings,
    unknown_variables,
)
from paser_assets.settings.fields import (
    COMMIT_EVERY_S,
    DEFAULT_EMBEDDING_MODEL,
    ENV_PREFIX,
    Affects,
    SettingError,
    Stage,
    parse_field_map,
    setting,
)
from paser_assets.settings.reads import (
    READ_LOG,
    READS_ATTRIBUTE,
    SettingsView,
    UndeclaredSettingError,
    declared_reads,
    reads,
    validate_paths,
)
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
    parse_named_files,
)

__all__ = [
    "COMMIT_EVERY_S",
    "DEFAULT_EMBEDDING_MODEL",
    "ENV_PREFIX",
    "READS_ATTRIBUTE",
    "READ_LOG",
    "STAGES",
    "TOP_LEVEL",
    "Affects",
    "EvaluationSettings",
    "ExecutionSettings",
    "ModelSettings",
    "PaserConfig",
    "PoolSettings",
    "PruningSettings",
    "RecoverySettings",
    "ScoringSettings",
    "SelectionSettings",
    "SemanticSettings",
    "SettingError",
    "SettingInfo",
    "SettingsView",
    "Stage",
    "UndeclaredSettingError",
    "all_settings",
    "declared_reads",
    "describe_validation_error",
    "environment_names",
    "group_settings",
    "parse_field_map",
    "parse_named_files",
    "reads",
    "setting",
    "unknown_variables",
    "validate_paths",
]
