"""Asset checks run alone against what a database holds now, one variant at a time.

Importable from any test as ``check_runs`` (pytest puts the tests folder on ``sys.path``).
"""

from __future__ import annotations

import dagster as dg

from paser_assets.per_variant import variant_key


def run_checks(
    defs: dg.Definitions, variant: str, asset: str, instance: dg.DagsterInstance | None = None
) -> dict[str, dg.AssetCheckEvaluation]:
    """The checks of the variant's ``asset`` (``<variant>/<asset>``) alone, by check name."""
    key = variant_key(variant, asset)
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.checks_for_assets(key),
        resources=defs.resources,
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert result.success
    assert not result.get_asset_materialization_events()  # the checks ran alone
    evaluations = result.get_asset_check_evaluations()
    assert {evaluation.asset_key for evaluation in evaluations} == {key}  # no other variant's checks
    return {evaluation.check_name: evaluation for evaluation in evaluations}
