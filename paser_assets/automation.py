"""Declarative Automation: observe the checkpoints, and recompute a variant when its checkpoint changes.

- The model checkpoints (``original_model``, each ``<variant>/pruned_checkpoint``) are observed every
  10 minutes while the automation sensor runs, and once when first seen; an unchanged checkpoint keeps its
  data version, so nothing downstream moves.
- Every asset of a variant lists the variant's checkpoint as a direct parent (Dagster marks only direct
  children stale), and runs when any parent is updated, when its code version changes, or when it is missing
  (the first evaluation on an empty instance, a variant added since): once, until it is requested or updated,
  so that a failed run is not retried forever.
- A variant's assets are unpartitioned, so one evaluation requests all of a variant's stale assets in one run,
  in dependency order: there are no two runs that could read each other's inputs half-way.

The sensor is off by default: a run re-scores the pool with two LLMs, which can take hours, and a checkpoint
that is being rewritten in place would be observed half-written. Turn it on in the UI (Automation ->
paser_automation) or with ``PASER_AUTOMATION=1``.
"""

from __future__ import annotations

import warnings

import dagster as dg

from paser_assets.resources import PaserConfig

OBSERVE_EVERY = "*/10 * * * *"


def _handled() -> dg.AutomationCondition:
    """Requested or updated: what clears a trigger. Not the initial evaluation, as in ``since_last_handled()``,
    which would clear a trigger raised on that same evaluation (missing assets on an empty instance)."""
    return dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()


def _missing_when_first_seen() -> dg.AutomationCondition:
    """Missing on the first evaluation of an asset: on an empty instance, or a variant added since. (``newly_missing``
    is false there: it compares with an evaluation that never happened.)"""
    return dg.AutomationCondition.missing() & dg.AutomationCondition.initial_evaluation()


def observation_condition() -> dg.AutomationCondition:
    """Observe a checkpoint on every cron tick, and when it was never observed (content hashes are memoised by
    size and mtime, so this is cheap)."""
    triggered = (
        dg.AutomationCondition.cron_tick_passed(OBSERVE_EVERY)
        | _missing_when_first_seen()
        | dg.AutomationCondition.newly_missing()
    )
    return (triggered.since(_handled()) & ~dg.AutomationCondition.in_progress()).with_label(
        f"observe on {OBSERVE_EVERY} and when never observed"
    )


def model_dependent_condition() -> dg.AutomationCondition:
    """Rerun when a parent updates or the code version changes, and run once when missing."""
    triggered = (
        _missing_when_first_seen()
        | dg.AutomationCondition.newly_missing()
        | dg.AutomationCondition.any_deps_updated()
        | dg.AutomationCondition.code_version_changed()
    ).since(_handled())
    return (
        triggered
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("paser: rerun when the models change")


def build_sensors(config: PaserConfig) -> list[dg.SensorDefinition]:
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
    return [automation]
