"""Run the graph in this process: everything, a selection, or exactly what is stale (``paser refresh``).

No asset is partitioned (each variant has its own keys, see :mod:`paser_assets.per_variant`), so a graph run is
one Dagster run that observes the checkpoints and materializes the selection in dependency order.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from paser_assets import storage
from paser_assets.locations import INSTANCE_FOLDER, beside
from paser_assets.per_variant import RECOVERY_TAG, variant_of_key
from paser_assets.registry import sync_variants
from paser_assets.resources import PaserConfig, PaserDuckDB, SettingError
from paser_assets.staleness import StaleSet, stale_or_missing

# Tags of every run this module launches. One Dagster instance (DAGSTER_HOME) may hold the history of several
# DuckDB files: filter the Runs page by `paser/db` for one file's runs, by `paser/command` for what started them.
DB_TAG = "paser/db"
COMMAND_TAG = "paser/command"
LOG_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
EPHEMERAL_JOB = "__ephemeral_asset_job__"
INSTANCE_LOCK = ".paser-instance.lock"


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


@contextmanager
def _creation_lock(home: Path) -> Iterator[None]:
    """An exclusive lock on the instance folder while its storages are created, which Dagster's SQLite storages
    do not survive concurrently (two first runs at once race to create the same tables)."""
    with open(home / INSTANCE_LOCK, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_instance(database: str) -> dg.DagsterInstance:
    """The persistent instance of :func:`instance_home`, created on first use; safe when several commands start
    at once on a fresh folder. A full disk under it is a :class:`SettingError` that says so."""
    home, source = instance_home(database)
    try:
        home.mkdir(parents=True, exist_ok=True)
        with _creation_lock(home):
            if source != "DAGSTER_HOME" and not (home / "dagster.yaml").exists():
                (home / "dagster.yaml").write_text(
                    "# Dagster's defaults: runs and events in SQLite files in this folder.\n"
                )
            os.environ["DAGSTER_HOME"] = str(home)  # Dagster reads it, and so do the processes a run starts
            instance = dg.DagsterInstance.get()
            instance.get_runs(limit=1)  # the run, event-log and schedule storages exist before the lock goes
            instance.get_asset_keys()
            return instance
    except Exception as error:
        if storage.disk_full(error, home):
            raise SettingError(
                f"no space left on the device of the Dagster instance {home} ({source}): free some space there, "
                "or point DAGSTER_HOME at another disk; nothing was run"
            ) from None
        raise


@dataclass
class GraphRun:
    """What a graph run did: its Dagster runs and the assets it materialized."""

    results: list[dg.ExecuteInProcessResult] = field(default_factory=list)
    # The assets each step computes, as the UI names them: a step is named after its op (`wanda_50__selection`).
    step_assets: dict[str, str] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return all(result.success for result in self.results)

    @property
    def materialized(self) -> list[str]:
        return sorted(
            event.asset_key.to_user_string()
            for result in self.results
            for event in result.get_asset_materialization_events()
        )

    @property
    def observed(self) -> list[str]:
        return sorted(
            {
                event.asset_key.to_user_string()
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
        asset, and what it found (the check's description of its result, else its metadata)."""
        lines = []
        for evaluation in self.get_asset_check_evaluations():
            if evaluation.passed:
                continue
            label = "WARNING" if evaluation.severity == dg.AssetCheckSeverity.WARN else "CHECK FAILED"
            found = evaluation.description or ", ".join(
                f"{key}={value.value}" for key, value in evaluation.metadata.items() if key != "variant"
            )
            lines.append(f"{label} {evaluation.check_name} on {evaluation.asset_key.to_user_string()}: {found}")
        return lines

    @property
    def exit_code(self) -> int:
        """0 on success; 2 when every failure is one our code raised on purpose (a bad input file, setting or
        checkpoint, a full disk: the user's to fix, said in one line); 1 for anything unexpected."""
        if self.success:
            return 0
        failed = [event for event in self.all_events if event.is_step_failure or event.is_run_failure]
        steps = [event for event in failed if event.is_step_failure]
        return 2 if steps and all(_is_deliberate_failure(event) for event in steps) else 1

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
                    messages.append(f"{self.step_assets.get(event.step_key, event.step_key)}: {message}")
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
        raise_on_error=False,
        tags=run_tags(database, command),
    )


def step_assets(defs: dg.Definitions) -> dict[str, str]:
    """Step name -> the asset keys it computes (``wanda-50/selection + wanda-50/concept_graph``)."""
    named = {}
    for asset in defs.assets or []:
        if isinstance(asset, dg.AssetsDefinition) and asset.is_executable:
            named[asset.node_def.name] = " + ".join(key.to_user_string() for key in asset.keys)
    return named


def observed_keys(defs: dg.Definitions) -> set[dg.AssetKey]:
    """The observed checkpoints: the original model and every variant's pruned checkpoint."""
    graph = defs.resolve_asset_graph()
    return {key for key in graph.get_all_asset_keys() if graph.get(key).is_observable}


def default_selection(defs: dg.Definitions) -> set[dg.AssetKey]:
    """Everything, observations included, but the recovery group unless PASER_RECOVERY is set."""
    config, _ = _resources(defs)
    graph = defs.resolve_asset_graph()
    keys = set(graph.materializable_asset_keys) | observed_keys(defs)
    if not config.execution.include_recovery:
        keys = {key for key in keys if RECOVERY_TAG not in graph.get(key).tags}
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
    """Observe the checkpoints and materialize the selection (default: everything; ``variants``: the shared
    assets and those variants' only) in one run, tagged with the database and ``command`` (see :func:`run_tags`)."""
    config, database = _resources(defs)
    sync_variants(database, config)
    wanted = resolve_selection(defs, selection) if selection else default_selection(defs)
    if variants is not None:
        wanted = {key for key in wanted if variant_of_key(key) in (None, *variants)}
    return GraphRun(results=[_execute(defs, wanted, instance, command)], step_assets=step_assets(defs))


def observe(defs: dg.Definitions, instance: dg.DagsterInstance, command: str = "observe") -> dg.ExecuteInProcessResult:
    """Record the checkpoints' current content hashes (original and every variant)."""
    return _execute(defs, observed_keys(defs), instance, command)


def _stale_in_scope(defs: dg.Definitions, instance: dg.DagsterInstance) -> StaleSet:
    """What is stale or missing within the default selection (recovery only when asked for)."""
    return stale_or_missing(defs, instance).within(default_selection(defs))


def plan_refresh(
    defs: dg.Definitions, instance: dg.DagsterInstance, command: str = "refresh --dry-run"
) -> tuple[dg.ExecuteInProcessResult, StaleSet]:
    """Observe the checkpoints and say what :func:`refresh` would recompute first, and why; nothing is run."""
    config, database = _resources(defs)
    sync_variants(database, config)
    observation = observe(defs, instance, command)
    return observation, _stale_in_scope(defs, instance)


def refresh(
    defs: dg.Definitions, instance: dg.DagsterInstance, max_waves: int = 5, command: str = "refresh"
) -> tuple[GraphRun, list[str]]:
    """Observe the checkpoints, then materialize exactly the stale or missing assets until none is left.

    Each wave materializes what Dagster reports stale or missing (within the default selection), in one run;
    materializing can make further assets stale (a changed result), so the next wave looks again.
    Returns the runs and the stale set found by the first look.
    """
    observation, stale = plan_refresh(defs, instance, command)
    run = GraphRun(results=[observation], step_assets=step_assets(defs))
    first = stale.describe()
    for wave in range(max_waves):
        if wave:
            stale = _stale_in_scope(defs, instance)
        if not stale or not run.success:
            break
        run.results.append(_execute(defs, stale.keys, instance, command))
    return run, first
