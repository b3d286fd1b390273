"""The ``paser`` command: materialize the graph from the shell and print SQL summaries."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import dagster as dg

from paser_assets import storage
from paser_assets.resources import PaserDuckDB, SettingError

SUMMARY_QUERIES: list[tuple[str, str]] = [
    (
        "Recovery pool",
        "SELECT count(*) AS rows, count(DISTINCT family) AS families, "
        "(SELECT count(*) FROM {schema}.recovery_pool_rejected) AS rejected FROM {schema}.recovery_pool",
    ),
    (
        "Clusters",
        "SELECT cluster, size, main_family, round(family_share, 2) AS family_share, "
        "array_to_string(top_keyphrases[1:4], ', ') AS keyphrases "
        "FROM {schema}.cluster_profiles ORDER BY cluster",
    ),
    (
        "Capability degradation",
        "SELECT cluster, size, round(cds, 4) AS cds, budget FROM {schema}.capability_degradation ORDER BY cds DESC",
    ),
    (
        "Selection",
        "SELECT cluster, count(*) FILTER (WHERE decision = 'selected') AS selected, "
        "count(*) FILTER (WHERE decision = 'concept_conflict') AS conflicts, "
        "count(*) FILTER (WHERE decision <> 'budget_full') AS considered, "
        "round(avg(jsd) FILTER (WHERE decision = 'selected'), 4) AS selected_mean_jsd "
        "FROM {schema}.selection GROUP BY cluster ORDER BY cluster",
    ),
    (
        "Selected instructions (first 5, highest IES)",
        "SELECT cluster, round(ies, 4) AS ies, left(replace(instruction, chr(10), ' '), 70) AS instruction "
        "FROM {schema}.selected_instructions ORDER BY ies DESC LIMIT 5",
    ),
]


def _instance() -> dg.DagsterInstance:
    # With DAGSTER_HOME set, runs are recorded where `dagster dev` finds them; without it, ephemeral.
    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def materialize(
    defs: dg.Definitions | None = None, selection: str | None = None, instance: dg.DagsterInstance | None = None
) -> dg.ExecuteInProcessResult:
    """Materialize (and observe) the selected assets of ``defs`` in this process; default: everything.

    Observable source assets (the model checkpoints) are part of the default selection, so each
    run records the checkpoints' current content hashes before scoring.
    """
    if defs is None:
        from paser_assets.definitions import defs
    asset_selection = (
        dg.AssetSelection.from_string(selection) if selection else dg.AssetSelection.all(include_sources=True)
    )
    return dg.materialize(
        [*(defs.assets or []), *(defs.asset_checks or [])],
        selection=asset_selection,
        resources=defs.resources,
        instance=instance or _instance(),
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
    )


def _report(result: dg.ExecuteInProcessResult, elapsed: float) -> None:
    done = sorted(event.asset_key.to_user_string() for event in result.get_asset_materialization_events())
    print(f"\nmaterialized {len(done)} assets in {elapsed:.1f} s: {', '.join(done)}")
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure and event.step_failure_data is not None:
                error = event.step_failure_data.error
                message = error.message.strip() if error else "unknown error"
                print(f"FAILED {event.step_key}: {message}", file=sys.stderr)


def summary(database: PaserDuckDB | None = None) -> str:
    """The summary tables, queried with SQL from the DuckDB file, as text."""
    database = database or PaserDuckDB.from_env()
    schema = storage.validate_identifier(database.schema_name, "schema name")
    lines = [f"PASER summary of {database.database} (schema {schema})"]
    with database.get_connection(read_only=True) as conn:
        for title, query in SUMMARY_QUERIES:
            catalog = conn.execute("SELECT current_database()").fetchall()[0][0]
            sql = query.format(schema=f'"{catalog}"."{schema}"')
            try:
                frame = conn.execute(sql).df()
            except Exception as error:  # a table of a not-yet-materialized asset
                lines.append(f"\n{title}: not available ({str(error).splitlines()[0]})")
                continue
            lines.append(f"\n{title}\n  SQL: {sql}\n")
            lines.append(frame.to_string(index=False))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paser", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("materialize", help="materialize assets of the default definitions")
    run.add_argument("--select", help="Dagster asset selection, e.g. 'clusters+' (default: everything)")
    commands.add_parser("summary", help="print the SQL summary of the DuckDB file")
    commands.add_parser("demo", help="materialize everything, then print the summary")
    args = parser.parse_args(argv)
    try:
        if args.command == "summary":
            print(summary())
            return 0
        start = time.monotonic()
        result = materialize(selection=getattr(args, "select", None))
        _report(result, time.monotonic() - start)
        ok = result.success
        if args.command == "demo" and ok:
            print()
            print(summary())
        return 0 if ok else 1
    except (SettingError, storage.DatabaseLockedError) as error:
        print(f"paser: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
