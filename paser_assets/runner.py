"""Run the graph in this process: everything, a selection, or exactly what is stale (``paser refresh``).

The shared assets (pool, embeddings, clusters, concepts) are not partitioned; everything that reads
a pruned model is partitioned by variant, and degradation_scores also by shard. A graph run is
therefore one run for the shared assets (which also observes the checkpoints), then per variant: a
run for pruned_model, one per scoring shard, and one for the rest.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from paser_assets import partitions
from paser_assets.locations import INSTANCE_FOLDER, beside
from paser_assets.partitions import PartitionKey
from paser_assets.registry import sync_variants
from paser_assets.resources import PaserConfig, PaserDuckDB, SettingError
from paser_assets.staleness import StaleSet, stale_or_missing

OBSERVED = (dg.AssetKey("original_model"), dg.AssetKey("pruned_checkpoint"))
# Tags of every run this module launches. One Dagster instance (DAGSTER_HOME) may hold the history of several
# DuckDB files: filter the Runs page by `paser/db` for one file's runs, by `paser/command` for what started them.
DB_TAG = "paser/db"
COMMAND_TAG = "paser/command"
LOG_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
EPHEMERAL_JOB = "__ephemeral_asset_job__"


def _is_deliberate_failure(event) -> bool:
    """A step or run failure caused by a ``dg.Failure`` that our code raised with a clear description."""
    error = getattr(getattr(event, "event_specific_data", None), "error", None)
    return error is not None and error.cls_name == "Failure"


class _ConciseFailures(logging.Filter):
    """On the console, a failure raised on purpose (``dg.Failure``: a bad input file, a bad setting) is shown
    as its one header line, without Dagster's stack trace: the caller reports the message once (the CLI's
    ``FAILED step: message`` lines) and the full error stays in the run's event log. Unexpected exceptions
    keep their stack trace, which is what one needs to debug them."""

    def filter(self, record: logging.LogRecord) -> bool:
        meta = getattr(record, "dagster_meta", None)
        event = meta.get("dagster_event") if isinstance(meta, dict) else None
        if event is not None and (event.is_step_failure or event.is_run_failure) and _is_deliberate_failure(event):
            record.msg = str(record.msg).split("\n\n", 1)[0]
            record.args = ()
        return True


@dg.logger(
    config_schema=dg.colored_console_logger.config_schema, description="Dagster's console logger, concise failures."
)
def concise_console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    console = dg.colored_console_logger.logger_fn(init_context)
    console.addFilter(_ConciseFailures())
    return console


def instance_home(database: str) -> tuple[Path, str]:
    """The Dagster instance folder of a run, and where that choice came from.

    DAGSTER_HOME when it is set (what `dagster dev` shows); otherwise ``.dagster_home`` beside the DuckDB
    file, the folder `make demo` and `make ui` use, so that the CLI, the UI and every later run share one
    history.
    """
    home = os.environ.get("DAGSTER_HOME", "").strip()
    if home:
        return Path(home), "DAGSTER_HOME"
    home = beside(database, INSTANCE_FOLDER) if database != ":memory:" else Path.cwd() / INSTANCE_FOLDER
    return home, "beside the database"


def default_instance(database: str) -> dg.DagsterInstance:
    """The persistent instance of :func:`instance_home` (created on first use)."""
    home, source = instance_home(database)
    home.mkdir(parents=True, exist_ok=True)
    if source != "DAGSTER_HOME" and not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text("# Dagster's defaults: runs and events in SQLite files in this folder.\n")
    os.environ["DAGSTER_HOME"] = str(home)  # Dagster reads it, and so do the processes a run starts
    return dg.DagsterInstance.get()


@dataclass
class GraphRun:
    """What a graph run did: its Dagster runs and the asset (partitions) it materialized."""

    results: list[dg.ExecuteInProcessResult] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return all(result.success for result in self.results)

    @property
    def materialized(self) -> list[str]:
        names = []
        for result in self.results:
            for event in result.get_asset_materialization_events():
                suffix = f"[{event.partition}]" if event.partition else ""
                names.append(f"{event.asset_key.to_user_string()}{suffix}")
        return sorted(names)

    @property
    def observed(self) -> list[str]:
        return sorted(
            {
                f"{event.asset_key.to_user_string()}" + (f"[{event.partition}]" if event.partition else "")
                for result in self.results
                for event in result.all_events
                if event.event_type_value == "ASSET_OBSERVATION" and event.asset_key is not None
            }
        )

    @property
    def all_events(self) -> list:
        return [event for result in self.results for event in result.all_events]

    def get_asset_materialization_events(self) -> list:
        return [event for result in self.results for event in result.get_asset_materialization_events()]

    def get_asset_check_evaluations(self) -> list:
        return [evaluation for result in self.results for evaluation in result.get_asset_check_evaluations()]

    def check_problems(self) -> list[str]:
        """One line per asset check that did not pass: ``WARNING`` or ``CHECK FAILED``, the check and its
        partition, and what it found (the check's description of its result, else its metadata)."""
        lines = []
        for evaluation in self.get_asset_check_evaluations():
            if evaluation.passed:
                continue
            label = "WARNING" if evaluation.severity == dg.AssetCheckSeverity.WARN else "CHECK FAILED"
            suffix = f"[{evaluation.partition}]" if evaluation.partition else ""
            found = evaluation.description or ", ".join(
                f"{key}={value.value}" for key, value in evaluation.metadata.items() if key != "variant"
            )
            lines.append(f"{label} {evaluation.check_name} on {evaluation.asset_key.to_user_string()}{suffix}: {found}")
        return lines

    def failures(self) -> list[str]:
        messages = []
        for result in self.results:
            for event in result.all_events:
                if event.is_step_failure and event.step_failure_data is not None:
                    data = event.step_failure_data
                    if data.user_failure_data is not None and data.user_failure_data.description:
                        message = data.user_failure_data.description.strip()  # a dg.Failure's own words
                    elif data.error is not None:
                        causes = [data.error, *([data.error.cause] if data.error.cause else [])]
                        message = ": ".join(error.message.strip() for error in causes)
                    else:
                        message = "unknown error"
                    messages.append(f"{event.step_key}: {message}")
        return messages


def _resources(defs: dg.Definitions) -> tuple[PaserConfig, PaserDuckDB]:
    resources = defs.resources or {}
    return resources["paser"], resources["duckdb"]


def run_tags(database: PaserDuckDB, command: str) -> dict[str, str]:
    """The tags of a run on ``database`` started by ``command`` (`materialize`, `refresh`, `variants add`...)."""
    path = database.database if database.database == ":memory:" else str(Path(database.database).resolve())
    return {DB_TAG: path, COMMAND_TAG: command}


def _execute(
    defs: dg.Definitions,
    keys: set[dg.AssetKey],
    instance: dg.DagsterInstance,
    command: str,
    partition_key: str | None = None,
) -> dg.ExecuteInProcessResult:
    # What dg.materialize does, plus our console logger (materialize takes no loggers).
    job_defs = dg.Definitions(
        jobs=[dg.define_asset_job(EPHEMERAL_JOB, selection=dg.AssetSelection.assets(*keys))],
        assets=[*(defs.assets or []), *(defs.asset_checks or [])],
        resources=defs.resources,
        loggers={"console": concise_console_logger},
    )
    _, database = _resources(defs)
    return job_defs.resolve_job_def(EPHEMERAL_JOB).execute_in_process(
        run_config=LOG_CONFIG,
        instance=instance,
        partition_key=partition_key,
        raise_on_error=False,
        tags=run_tags(database, command),
    )


@dataclass
class Plan:
    """Asset keys in the order they run: the shared ones, then per variant a list of stages, each one kind
    of partitioning (variant, shard or method) in topological order."""

    shared: set[dg.AssetKey] = field(default_factory=set)
    stages: list[tuple[str, set[dg.AssetKey]]] = field(default_factory=list)

    @property
    def per_variant(self) -> bool:
        return bool(self.stages)


def _plan(defs: dg.Definitions, keys: set[dg.AssetKey]) -> Plan:
    graph = defs.resolve_asset_graph()
    plan = Plan()
    for key in graph.toposorted_asset_keys:
        if key not in keys:
            continue
        kind = "shared" if key in OBSERVED else partitions.kind(graph.get(key).partitions_def)
        if kind == "shared":
            plan.shared.add(key)
        elif plan.stages and plan.stages[-1][0] == kind:
            plan.stages[-1][1].add(key)
        else:
            plan.stages.append((kind, {key}))
    return plan


def _stage_keys(defs: dg.Definitions, keys: set[dg.AssetKey], variant: str) -> list[str | dg.MultiPartitionKey]:
    """The partition keys a stage (assets partitioned alike) runs for one variant."""
    config, _ = _resources(defs)
    partitions_def = defs.resolve_asset_graph().get(next(iter(keys))).partitions_def
    found = partitions.keys_for_variant(partitions_def, variant, config.recovery.recovery_methods)
    return [key.dagster_key for key in found]


def _run_variant(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    variant: str,
    plan: Plan,
    run: GraphRun,
    command: str,
    only: set[str] | None = None,
) -> None:
    """Every stage of the plan for one variant, in order; ``only`` limits the partition keys; stops at a failure."""
    for _, keys in plan.stages:
        for partition_key in _stage_keys(defs, keys, variant):
            if only is not None and str(partition_key) not in only:
                continue
            run.results.append(_execute(defs, keys, instance, command, partition_key=partition_key))
            if not run.success:
                return


def default_selection(defs: dg.Definitions) -> set[dg.AssetKey]:
    """Everything, observations included, but the recovery group unless PASER_RECOVERY is set."""
    config, _ = _resources(defs)
    graph = defs.resolve_asset_graph()
    keys = set(graph.materializable_asset_keys) | set(OBSERVED)
    if not config.execution.include_recovery:
        keys = {key for key in keys if graph.get(key).group_name != "recovery"}
    return keys


def resolve_selection(defs: dg.Definitions, selection: str) -> set[dg.AssetKey]:
    """The assets a Dagster selection string names; a multi-asset (selection + concept_graph) runs whole.

    A string Dagster cannot parse, or one that names no asset, is a :class:`SettingError` that says so."""
    graph = defs.resolve_asset_graph()
    try:
        keys = dg.AssetSelection.from_string(selection).required_multi_asset_neighbors().resolve(graph)
    except Exception as error:  # Dagster raises several kinds for a bad string
        raise SettingError(f"--select {selection!r} is not a Dagster asset selection: {error}") from None
    if not keys:
        names = ", ".join(sorted(key.to_user_string() for key in graph.materializable_asset_keys))
        raise SettingError(f"--select {selection!r} matches no asset; the assets are: {names}")
    return set(keys)


def run_graph(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    selection: str | None = None,
    variants: list[str] | None = None,
    command: str = "materialize",
) -> GraphRun:
    """Observe the checkpoints and materialize the selection (default: everything) for every variant; the runs
    are tagged with the database and ``command`` (see :func:`run_tags`)."""
    config, database = _resources(defs)
    names = sync_variants(instance, database, config)
    if variants is not None:
        names = variants
    wanted = resolve_selection(defs, selection) if selection else default_selection(defs)
    plan = _plan(defs, set(wanted))
    run = GraphRun()
    if plan.shared:
        run.results.append(_execute(defs, plan.shared, instance, command))
    for name in names if plan.per_variant else []:
        if run.success:
            _run_variant(defs, instance, name, plan, run, command)
    return run


def observe(defs: dg.Definitions, instance: dg.DagsterInstance, command: str = "observe") -> dg.ExecuteInProcessResult:
    """Record the checkpoints' current content hashes (original and every variant)."""
    return _execute(defs, set(OBSERVED), instance, command)


def _stale_in_scope(defs: dg.Definitions, instance: dg.DagsterInstance) -> StaleSet:
    """What is stale or missing within the default selection (recovery only when asked for)."""
    config, _ = _resources(defs)
    scope = default_selection(defs)
    stale: StaleSet = stale_or_missing(defs, instance)
    stale.unpartitioned &= scope
    stale.by_partition = {
        partition: keys & scope
        for partition, keys in stale.by_partition.items()
        if keys & scope and _in_scope(PartitionKey.parse(partition), config.recovery.recovery_methods)
    }
    listed = set(stale.describe())
    stale.reasons = {name: reason for name, reason in stale.reasons.items() if name in listed}
    return stale


def plan_refresh(
    defs: dg.Definitions, instance: dg.DagsterInstance, command: str = "refresh --dry-run"
) -> tuple[dg.ExecuteInProcessResult, StaleSet]:
    """Observe the checkpoints and say what :func:`refresh` would recompute first, and why; nothing is run."""
    config, database = _resources(defs)
    sync_variants(instance, database, config)
    observation = observe(defs, instance, command)
    return observation, _stale_in_scope(defs, instance)


def refresh(
    defs: dg.Definitions, instance: dg.DagsterInstance, max_waves: int = 5, command: str = "refresh"
) -> tuple[GraphRun, list[str]]:
    """Observe the checkpoints, then materialize exactly the stale or missing assets until none is left.

    Each wave materializes what Dagster reports stale or missing (within the default selection);
    materializing can make further assets stale (a changed result), so the next wave looks again.
    Returns the runs and the stale set found by the first look.
    """
    observation, stale = plan_refresh(defs, instance, command)
    run = GraphRun(results=[observation])
    first = stale.describe()
    for wave in range(max_waves):
        if wave:
            stale = _stale_in_scope(defs, instance)
        if not stale or not run.success:
            break
        if stale.unpartitioned:
            run.results.append(_execute(defs, stale.unpartitioned, instance, command))
            continue  # shared assets changed: look again before running variants
        variants = sorted({PartitionKey.parse(p).variant for p in stale.by_partition})
        for variant in variants:
            mine = {p: keys for p, keys in stale.by_partition.items() if PartitionKey.parse(p).variant == variant}
            plan = _plan(defs, set().union(*mine.values()))
            _run_variant(defs, instance, variant, plan, run, command, only=set(mine))
    return run, first


def _in_scope(key: PartitionKey, methods: list[str]) -> bool:
    """Method partitions of methods that are not configured are never run."""
    return key.method is None or key.method in methods


def registered_variant_names(instance: dg.DagsterInstance) -> list[str]:
    return list(instance.get_dynamic_partitions(partitions.VARIANTS.name))
