"""Declarative Automation and sensors: re-score when a changed checkpoint is observed.

- The model checkpoints (``original_model``, ``pruned_checkpoint``) are observed every 10 minutes
  while the automation sensor runs; an unchanged checkpoint keeps its data version, so nothing
  downstream moves.
- Every model-dependent asset lists the model assets as direct parents (Dagster marks only direct
  children stale), and runs when any parent is updated, when one of its partitions newly goes
  missing (a new variant), or when its code version changes.
- ``eager()`` does not request assets that were never materialized; on purpose, this condition
  does, but only on the sensor's first evaluation (``initial_evaluation``), so that turning the
  automation on brings the graph up to date once without retrying failed runs forever.

The automation sensor is off by default: a run re-scores the pool with two LLMs, which can take
hours, and a checkpoint that is being rewritten in place would be observed half-written. Turn it on
in the UI (Automation -> paser_automation) or with ``PASER_AUTOMATION=1``. The variant sensor,
which only registers the configured variants as partitions, runs by default.
"""

from __future__ import annotations

import warnings

import dagster as dg

from paser_assets.registry import sync_variants
from paser_assets.resources import PaserConfig, PaserDuckDB

OBSERVE_EVERY = "*/10 * * * *"


def observation_condition() -> dg.AutomationCondition:
    """Observe a checkpoint on every cron tick (cheap: content hashes are memoised by size and mtime)."""
    return (
        dg.AutomationCondition.cron_tick_passed(OBSERVE_EVERY).since_last_handled()
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"observe on {OBSERVE_EVERY}")


def model_dependent_condition() -> dg.AutomationCondition:
    """eager(), plus code-version changes and never-materialized assets on the first evaluation."""
    triggered = (
        dg.AutomationCondition.newly_missing()
        | dg.AutomationCondition.any_deps_updated()
        | dg.AutomationCondition.code_version_changed()
        | (dg.AutomationCondition.missing() & dg.AutomationCondition.initial_evaluation())
    ).since_last_handled()
    return (
        triggered
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("paser: rerun when the models change")


def build_sensors(config: PaserConfig) -> list[dg.SensorDefinition]:
    @dg.sensor(
        name="paser_variants",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Registers the configured pruned variants (PASER_VARIANTS) as partitions.",
    )
    def paser_variants(context: dg.SensorEvaluationContext, paser: PaserConfig, duckdb: PaserDuckDB):
        names = sync_variants(context.instance, duckdb, paser)
        return dg.SkipReason(f"variants registered: {', '.join(names)}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)  # include_sources: the checkpoints are observed sources
        target = dg.AssetSelection.all(include_sources=True)
    automation = dg.AutomationConditionSensorDefinition(
        "paser_automation",
        target=target,
        default_status=dg.DefaultSensorStatus.RUNNING
        if config.execution.automation
        else dg.DefaultSensorStatus.STOPPED,
        description="Observes the model checkpoints and recomputes what depends on a changed one.",
    )
    return [paser_variants, automation]
