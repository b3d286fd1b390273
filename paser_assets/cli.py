"""The ``paser`` command: materialize the graph from the shell and print SQL summaries.

Every setting is a ``PASER_*`` environment variable (``paser settings`` lists them); the common ones are
also flags. Heavy packages (Dagster, PyTorch) are imported only by the commands that need them, so
``paser --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

    from paser_assets.resources import PaserConfig, PaserDuckDB
    from paser_assets.runner import GraphRun

# Flags for the settings people change most, and the environment variable each one sets (a test checks
# these names against the settings' declarations).
FLAGS: dict[str, tuple[str, str]] = {
    "--db": ("PASER_DB", "the DuckDB file"),
    "--dataset": ("PASER_DATASET", "a JSON/JSONL/Parquet/CSV file or folder, or a hub dataset id"),
    "--pruned-model": ("PASER_PRUNED_MODEL", "an external pruned checkpoint (variant 'external')"),
    "--budget": ("PASER_BUDGET", "the selection budget: a fraction such as 0.2, or a count"),
}
EPILOG = (
    "Settings come from PASER_* environment variables; `paser settings` lists every one with its default. "
    "Without DAGSTER_HOME, runs are recorded in .dagster_home beside the database, which `make ui` shows."
)

SUMMARY_QUERIES: list[tuple[str, str]] = [
    (
        "Recovery pool",
        "SELECT count(*) AS rows, count(DISTINCT family) AS families, "
        "(SELECT count(*) FROM recovery_pool_rejected) AS rejected FROM recovery_pool",
    ),
    (
        "Clusters",
        "SELECT cluster, size, main_family, round(family_share, 2) AS family_share, "
        "array_to_string(top_keyphrases[1:4], ', ') AS keyphrases "
        "FROM cluster_profiles ORDER BY cluster",
    ),
    (
        "Capability degradation",
        "SELECT variant, cluster, size, round(cds, 4) AS cds, budget FROM capability_degradation "
        "ORDER BY variant, cds DESC",
    ),
    (
        "Selection",
        "SELECT variant, cluster, count(*) FILTER (WHERE decision = 'selected') AS selected, "
        "count(*) FILTER (WHERE decision = 'concept_conflict') AS conflicts, "
        "count(*) FILTER (WHERE decision <> 'budget_full') AS considered, "
        "round(avg(jsd) FILTER (WHERE decision = 'selected'), 4) AS selected_mean_jsd "
        "FROM selection GROUP BY variant, cluster ORDER BY variant, cluster",
    ),
    (
        "Selected instructions (first 5, highest IES)",
        "SELECT variant, cluster, round(ies, 4) AS ies, left(replace(instruction, chr(10), ' '), 64) AS instruction "
        "FROM selected_instructions ORDER BY ies DESC LIMIT 5",
    ),
]


def summary(database: PaserDuckDB | None = None) -> str:
    """The summary tables, queried with SQL from the DuckDB file, as text."""
    from pathlib import Path

    import duckdb

    from paser_assets import storage
    from paser_assets.resources import PaserDuckDB
    from paser_assets.settings import SettingError

    database = database or PaserDuckDB.from_env()
    if database.database != ":memory:" and not Path(database.database).is_file():
        raise SettingError(f"no database at {database.database}: run `paser materialize` first, or set PASER_DB")
    schema = storage.validate_identifier(database.schema_name, "schema name")
    lines = [f"PASER summary of {database.database} (schema {schema})"]
    try:
        with database.get_connection(read_only=True) as conn:
            catalog = conn.execute("SELECT current_database()").fetchall()[0][0]
            lines.append(f'Queries run after: USE "{catalog}"."{schema}";')
            for title, sql in SUMMARY_QUERIES:
                try:
                    frame = conn.execute(sql).df()
                except duckdb.Error as error:  # a table of a not-yet-materialized asset
                    lines.append(f"\n{title}: not available ({str(error).splitlines()[0]})")
                    continue
                lines.append(f"\n{title}\n  SQL: {sql}\n")
                lines.append(frame.to_string(index=False))
    except storage.SchemaNotFoundError as error:
        lines.append(f"\nnothing to summarize: {error}")
    return "\n".join(lines)


def _instance(database: PaserDuckDB) -> dg.DagsterInstance:
    """The run history this command uses, announced on the first line so nobody wonders which one it was."""
    from paser_assets.runner import default_instance, instance_home

    home, source = instance_home(database.database)
    print(f"paser: Dagster instance {home} ({source}); database {database.database} (schema {database.schema_name})")
    return default_instance(database.database)


def _load_definitions() -> dg.Definitions:
    from paser_assets.graph import build_definitions

    return build_definitions()


def _report(run: GraphRun, elapsed: float) -> None:
    print(f"\nobserved: {', '.join(run.observed) or 'nothing'}")
    print(f"materialized {len(run.materialized)} assets in {elapsed:.1f} s: {', '.join(run.materialized) or 'nothing'}")
    for line in run.check_problems():
        print(line, file=sys.stderr)
    for failure in run.failures():
        print(f"FAILED {failure}", file=sys.stderr)


def _tell_the_ui(config: PaserConfig) -> None:
    """Reload the running webserver's code locations, or say the one click that does it."""
    from paser_assets.webserver import reload_code_locations

    done, message = reload_code_locations(config.execution.webserver)
    print(f"paser: {message}")
    if not done:
        print("paser: in an open Dagster UI, click Reload definitions (Deployment > Code locations) to show the change")


def _variants_command(args: argparse.Namespace) -> int:
    from paser_assets.assets.selection import export_folder
    from paser_assets.graph import build_definitions
    from paser_assets.registry import add_variant, registered_variants, remove_variant, sync_variants
    from paser_assets.runner import refresh
    from paser_assets.variants import VariantError, configured_variants, parse_variant_spec, validate_variant_name

    defs = _load_definitions()
    config, database = defs.resources["paser"], defs.resources["duckdb"]
    instance = _instance(database)
    if args.action == "list":
        sync_variants(database, config)
        for name, variant in sorted(registered_variants(database, config.pruning.recipe()).items()):
            print(f"{name}\t{variant.kind}\t{variant.spec}")
        return 0
    if args.action == "add":
        variant = parse_variant_spec(validate_variant_name(args.name), args.spec, config.pruning.recipe())
        if variant.checkpoint is not None:  # checked now, not at the next run: nothing is registered otherwise
            from paser_assets.models.checkpoints import CheckpointError, parse_model_reference

            try:
                parse_model_reference(variant.checkpoint)
            except CheckpointError as error:
                raise VariantError(f"variant {variant.name!r} not registered: {error}") from None
        add_variant(database, variant, replace=args.replace)
        print(f"registered variant {variant.name} ({variant.kind}: {variant.spec})")
        _tell_the_ui(config)
        if args.no_materialize:
            return 0
        start = time.monotonic()
        defs = build_definitions(config, database)  # with the new variant's assets, which are all missing
        run, _ = refresh(defs, instance, command="variants add")
        _report(run, time.monotonic() - start)
        return run.exit_code
    name = validate_variant_name(args.name)
    known = registered_variants(database, config.pruning.recipe())
    if name not in known:
        raise VariantError(f"variant {name!r} is not registered in {database.database}; registered: "
                           f"{', '.join(sorted(known)) or 'none'}")  # fmt: skip
    cache_dir = config.models.store(database.database).cache_dir
    removal = remove_variant(
        instance, database, name, export_folder(config.selection.export_dir, database.database), cache_dir
    )
    print(f"removed variant {name}: {removal.describe()}")
    if name in {
        variant.name
        for variant in configured_variants(config.models.variants, config.models.pruned_model, config.pruning.recipe())
    }:
        print(f"paser: {name} is still configured (PASER_VARIANTS): remove it there too, or it comes back")
    _tell_the_ui(config)
    return 0


def _observe_command(_: argparse.Namespace) -> int:
    """Record the checkpoints' current versions in the instance, materializing nothing."""
    from paser_assets.registry import sync_variants
    from paser_assets.runner import observe

    defs = _load_definitions()
    config, database = defs.resources["paser"], defs.resources["duckdb"]
    instance = _instance(database)
    sync_variants(database, config)
    result = observe(defs, instance)
    for event in result.all_events:
        if event.event_type_value == "ASSET_OBSERVATION" and event.asset_key is not None:
            observation = event.event_specific_data.asset_observation
            version = observation.tags.get("dagster/data_version", "")
            print(f"observed {event.asset_key.to_user_string()}: {version}")
    if not result.success:
        print("paser: observing the checkpoints failed; see the log above", file=sys.stderr)
        return 1
    print(
        "nothing was materialized: the UI (Materialize unsynced), automation or `paser refresh` recompute what changed"
    )
    return 0


def _dry_run(defs: dg.Definitions, instance: dg.DagsterInstance) -> int:
    from paser_assets.runner import plan_refresh

    observation, stale = plan_refresh(defs, instance)
    if not observation.success:
        print("paser: observing the checkpoints failed; see the log above", file=sys.stderr)
        return 1
    print("would recompute:" if stale else "nothing to recompute: every asset is up to date")
    for line in stale.explain():
        print(f"  {line}")
    return 0


def _graph_command(args: argparse.Namespace) -> int:
    """materialize, demo and refresh."""
    from paser_assets.runner import refresh, run_graph

    defs = _load_definitions()
    instance = _instance(defs.resources["duckdb"])
    if args.command == "refresh" and args.dry_run:
        return _dry_run(defs, instance)
    start = time.monotonic()
    if args.command == "refresh":
        graph_run, stale = refresh(defs, instance, command="refresh")
        print(f"\nstale or missing after observing: {', '.join(stale) or 'nothing'}")
    else:
        graph_run = run_graph(defs, instance, selection=getattr(args, "select", None), command=args.command)
    _report(graph_run, time.monotonic() - start)
    if args.command == "demo" and graph_run.success:
        print()
        print(summary())
    return graph_run.exit_code


def _plain_default(value: object) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "(empty)"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(empty)"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if value != "" else "(empty)"


def settings_listing() -> str:
    """Every setting as plain text, stage by stage: variable, default, how a change reaches the assets, meaning.

    (docs/reference.md has the same as Markdown tables, written by scripts/reference.py.)"""
    import textwrap

    from paser_assets.resources import PaserDuckDB
    from paser_assets.settings import STAGES, PaserConfig, all_settings

    def entry(env: str, default: object, meaning: str, affects: str | None = None) -> list[str]:
        head = f"  {env}={_plain_default(default)}" + (f"  [{affects}]" if affects else "")
        return [head, *textwrap.wrap(meaning, 100, initial_indent="      ", subsequent_indent="      ")]

    lines = ["Database"]
    for env, default, meaning in PaserDuckDB.documented_settings().values():
        lines += entry(env, default, meaning)
    defaults = PaserConfig()
    for stage in (None, *STAGES):
        lines += ["", "Run" if stage is None else f"{stage}: {STAGES[stage].__doc__}"]
        for item in all_settings():
            if item.stage == stage:
                lines += entry(item.env, defaults.value(item.path), item.description, item.affects)
    lines += ["", "[results]: folded into the code version of the assets that read it; [observed]: reaches them",
              "through the observed checkpoint; [runtime]: speed, memory, locations, not results."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _settings_command(_: argparse.Namespace) -> int:
    print(settings_listing(), end="")
    return 0


def methods_listing() -> str:
    """The registered selection methods: name, source, whether it needs the models' scores, description."""
    import textwrap
    import warnings

    from paser_assets.methods import DEFAULT_METHODS, registry

    with warnings.catch_warnings(record=True) as problems:  # a plugin that failed to load: shown, not raised
        warnings.simplefilter("always")
        methods = registry()
    lines = []
    for name, entry in methods.items():
        flags = {"default": name in DEFAULT_METHODS, "needs scores": entry.method.needs_scores}
        marks = ", ".join(flag for flag, on in flags.items() if on)
        lines.append(f"{name}  [{entry.source}]" + (f"  ({marks})" if marks else ""))
        lines += textwrap.wrap(entry.method.description, 100, initial_indent="    ", subsequent_indent="    ")
    lines += [f"warning: {problem.message}" for problem in problems]
    lines += ["", "PASER_RECOVERY_METHODS chooses among them; packages add methods through the entry-point group",
              "'paser_assets.methods'."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _methods_command(_: argparse.Namespace) -> int:
    print(methods_listing(), end="")
    return 0


def _summary_command(_: argparse.Namespace) -> int:
    print(summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    for flag, (variable, meaning) in FLAGS.items():
        common.add_argument(flag, metavar=variable.removeprefix("PASER_"), help=f"{meaning} (sets {variable})")
    parser = argparse.ArgumentParser(prog="paser", description=__doc__.split("\n\n")[0], epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str, handler, flags: bool = True) -> argparse.ArgumentParser:
        parents = [common] if flags else []
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=EPILOG, parents=parents)
        sub.set_defaults(handler=handler)
        return sub

    run = command("materialize", "observe the checkpoints and materialize every asset and variant", _graph_command)
    run.add_argument("--select", help="Dagster asset selection, e.g. 'key:clusters+' (default: everything)")
    command("demo", "materialize everything, then print the summary", _graph_command)
    refresh = command(
        "refresh", "observe the checkpoints and materialize exactly what is stale or missing (after a re-prune)",
        _graph_command,
    )  # fmt: skip
    refresh.add_argument("--dry-run", action="store_true", help="list what would be recomputed and why, run nothing")
    command("summary", "print the SQL summary of the DuckDB file", _summary_command)
    command(
        "observe", "record the checkpoints' current versions (what the UI's Observe does); materialize nothing",
        _observe_command,
    )  # fmt: skip
    command("settings", "list every setting with its environment variable, default and meaning", _settings_command)
    command("methods", "list the registered selection methods and where each comes from", _methods_command, False)
    # The flags go on the actions (`paser variants list --db x`): argparse lets a subparser's defaults
    # overwrite a value its parent parsed, so they cannot sit on both levels.
    variants = command("variants", "list, add or remove pruned variants", _variants_command, flags=False)
    actions = variants.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list the registered variants", parents=[common])
    add = actions.add_parser("add", help="register a variant and materialize only it", parents=[common])
    add.add_argument("name", help="letters, digits, '_' and '-'")
    add.add_argument("spec", help="a recipe such as wanda:0.5 or magnitude:2:4, or a checkpoint folder")
    add.add_argument("--replace", action="store_true", help="redefine an existing variant")
    add.add_argument("--no-materialize", action="store_true", help="only register it")
    remove = actions.add_parser(
        "remove", help="delete a variant's rows, export files and asset history", parents=[common]
    )
    remove.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag, (variable, _) in FLAGS.items():
        value = getattr(args, flag.removeprefix("--").replace("-", "_"), None)
        if value is not None:
            os.environ[variable] = value  # before the definitions read the environment
    import dagster as dg

    from paser_assets import storage
    from paser_assets.settings import SettingError
    from paser_assets.variants import VariantError

    try:
        return args.handler(args)
    except (SettingError, VariantError, storage.DatabaseLockedError) as error:
        print(f"paser: {error}", file=sys.stderr)
        return 2
    except dg.Failure as error:
        print(f"paser: {error.description}", file=sys.stderr)
        return 2
    except Exception as error:
        # Dagster's own writes (its run history in SQLite) met a full disk: say it in one line, as for DuckDB's.
        home = os.environ.get("DAGSTER_HOME", "the Dagster instance")
        if not storage.disk_full(error, os.environ.get("DAGSTER_HOME")):
            raise
        print(f"paser: {storage.no_space_message(error, home, 'DAGSTER_HOME (or PASER_DB)', KEPT_ON_FULL_DISK)}",
              file=sys.stderr)  # fmt: skip
        return 2


KEPT_ON_FULL_DISK = "the tables keep what earlier runs and the steps that finished committed"


if __name__ == "__main__":
    sys.exit(main())
