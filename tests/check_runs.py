"""Asset checks run alone against what a database holds now, one partition at a time.

Importable from any test as ``check_runs`` (pytest puts the tests folder on ``sys.path``).
"""

from __future__ import annotations

import dagster as dg


def run_checks(
    defs: dg.Definitions, asset: str, partition: str, instance: dg.DagsterInstance | None = None
) -> dict[str, dg.AssetCheckEvaluation]:
    """The checks of ``asset`` alone, for one partition, by check name.

    The checks are partitioned like their assets. Run without their assets, Dagster 1.13 finds no partitions
    definition to check a ``partition_key`` against, so the partition goes in as the run's partition tag."""
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.checks_for_assets(asset),
        resources=defs.resources,
        instance=instance or dg.DagsterInstance.ephemeral(),
        tags={"dagster/partition": partition},
        raise_on_error=False,
    )
    assert result.success
    assert not result.get_asset_materialization_events()  # the checks ran alone
    return {evaluation.check_name: evaluation for evaluation in result.get_asset_check_evaluations()}
