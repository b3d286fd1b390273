"""Asset checks, one set per variant on that variant's assets (``<variant>/selection``...).

A run that materializes a variant evaluates that variant's checks only, on that variant's rows, and Dagster
keeps each variant's history of results apart: one variant's failure is not hidden by, or blamed on,
another's. The logic of the signal check is a pure function in :mod:`paser_assets.core.signal`.
"""

import math

import dagster as dg

from paser_assets.assets.models import pruned_reference
from paser_assets.core.divergence import LN2
from paser_assets.core.signal import SATURATION_NATS, SEPARATION_Z, UNIFORM_SHARE, assess_signal
from paser_assets.models.vocabulary import vocabulary_size
from paser_assets.per_variant import variant_check, variant_of
from paser_assets.resources import PaserDuckDB


@variant_check(
    asset="selection",
    description="The variant's budget is met exactly, or the shortfall is explained: every candidate was considered.",
)
def budget_met(context: dg.AssetCheckExecutionContext, duckdb: PaserDuckDB) -> dg.AssetCheckResult:
    variant = variant_of(context)
    with duckdb.get_connection() as conn:
        budget, candidates, selected, unvisited, conflicts = conn.execute(
            """
            SELECT (SELECT sum(budget) FROM capability_degradation WHERE variant = $variant),
                   count(*),
                   count(*) FILTER (WHERE decision = 'selected'),
                   count(*) FILTER (WHERE decision = 'budget_full'),
                   count(*) FILTER (WHERE decision = 'concept_conflict')
            FROM selection WHERE variant = $variant
            """,
            {"variant": variant},
        ).fetchone()
    budget = int(budget or 0)
    shortfall = budget - selected
    if not candidates or not budget:
        reason, passed = f"no {'selection rows' if not candidates else 'budget'} for variant {variant!r}", False
    elif shortfall < 0:
        reason, passed = f"{-shortfall} more samples selected than the budget allows", False
    elif shortfall == 0:
        reason, passed = "budget met exactly", True
    elif unvisited == 0:
        reason, passed = f"{shortfall} short: every candidate was considered, {conflicts} were concept conflicts", True
    else:
        reason, passed = f"{shortfall} short although {unvisited} candidates were never considered", False
    return dg.AssetCheckResult(
        passed=passed,
        metadata={
            "variant": variant,
            "budget": budget,
            "selected": selected,
            "shortfall": shortfall,
            "never_considered": unvisited,
            "concept_conflicts": conflicts,
            "explanation": reason,
        },
    )


def _nothing_counted(
    context: dg.AssetCheckExecutionContext, duckdb: PaserDuckDB, sql: str, what: str
) -> dg.AssetCheckResult:
    """Passes when ``sql`` (one ``?``, the variant) counts nothing; the count goes in the metadata as ``what``."""
    variant = variant_of(context)
    with duckdb.get_connection() as conn:
        (count,) = conn.execute(sql, [variant]).fetchone()
    return dg.AssetCheckResult(passed=count == 0, metadata={"variant": variant, what: count})


@variant_check(asset="selection", description="No sample is selected twice for the variant.")
def no_sample_selected_twice(context: dg.AssetCheckExecutionContext, duckdb: PaserDuckDB) -> dg.AssetCheckResult:
    sql = (
        "SELECT count(*) FROM (SELECT sample_id FROM selection WHERE variant = ? AND decision = 'selected' "
        "GROUP BY sample_id HAVING count(*) > 1)"
    )
    return _nothing_counted(context, duckdb, sql, "duplicated_samples")


@variant_check(asset="selection", description="Every sample selected for the variant is in the pool.")
def selected_samples_in_pool(context: dg.AssetCheckExecutionContext, duckdb: PaserDuckDB) -> dg.AssetCheckResult:
    sql = (
        "SELECT count(*) FROM selection s WHERE s.variant = ? AND s.decision = 'selected' "
        "AND s.sample_id NOT IN (SELECT sample_id FROM recovery_pool)"
    )
    return _nothing_counted(context, duckdb, sql, "missing_from_pool")


@variant_check(asset="degradation_scores", description="Every JSD of the variant lies in [0, ln 2].")
def jsd_in_range(context: dg.AssetCheckExecutionContext, duckdb: PaserDuckDB) -> dg.AssetCheckResult:
    variant = variant_of(context)
    with duckdb.get_connection() as conn:
        outside, low, high = conn.execute(
            "SELECT count(*) FILTER (WHERE NOT (jsd BETWEEN 0 AND ?) OR jsd IS NULL), min(jsd), max(jsd) "
            "FROM degradation_scores WHERE variant = ?",
            [LN2, variant],
        ).fetchone()
    return dg.AssetCheckResult(
        passed=outside == 0,
        metadata={"variant": variant, "outside_range": outside, "min_jsd": _number(low), "max_jsd": _number(high)},
    )


@variant_check(
    asset="capability_degradation",
    description=(
        "Warns when the variant's scores no longer carry a signal to select on: (1) CDS does not separate the "
        f"clusters, the most and least degraded differing by at most {SEPARATION_Z:g} standard errors of the "
        "difference of their means (pooled within-cluster standard deviation of JSD), or every CDS lies within "
        f"{SATURATION_NATS} nats of ln 2 (saturated); (2) the pruned model's mean response NLL is at least "
        f"{UNIFORM_SHARE:.0%} of ln(vocabulary size), the NLL of a uniform guess. Its metadata also gives "
        "between_cluster_share, the share of the samples' JSD variance that lies between clusters (eta squared): "
        "how much of the drift the CDS allocation can target at all."
    ),
)
def degradation_signal(context: dg.AssetCheckExecutionContext, duckdb: PaserDuckDB) -> dg.AssetCheckResult:
    variant = variant_of(context)
    with duckdb.get_connection() as conn:
        clusters = conn.execute(
            "SELECT size, cds, jsd_std FROM capability_degradation WHERE variant = ? ORDER BY cluster", [variant]
        ).df()
        pruned_nll, original_nll = conn.execute(
            "SELECT avg(pruned_nll), avg(original_nll) FROM degradation_scores WHERE variant = ?", [variant]
        ).fetchone()
    try:
        vocabulary = vocabulary_size(pruned_reference(duckdb, variant).location)
    except dg.Failure:  # no pruned_model row: the NLL test cannot be made, the CDS test still can
        vocabulary = None
    report = assess_signal(
        clusters["size"].tolist(), clusters["cds"].tolist(), clusters["jsd_std"].tolist(),
        pruned_nll, vocabulary, original_nll,
    )  # fmt: skip
    return dg.AssetCheckResult(
        passed=report.healthy,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(report.problems) or "CDS separates the clusters and the pruned model is not guessing",
        metadata={
            "variant": variant,
            "clusters": report.clusters,
            "cds_spread": report.cds_spread,
            "spread_standard_error": _number(report.spread_standard_error),
            "between_cluster_share": _number(report.between_cluster_share),
            "max_distance_from_ln2": _number(report.max_distance_from_ln2),
            "mean_pruned_nll": _number(report.mean_pruned_nll),
            "mean_original_nll": _number(original_nll),
            "uniform_nll": _number(report.uniform_nll),
            "vocabulary_size": vocabulary if vocabulary is not None else -1,
        },
    )


def _number(value: float | None) -> float:
    """A float for Dagster's metadata, which takes neither None nor NaN: -1 stands for 'not known'."""
    return -1.0 if value is None or math.isnan(value) else float(value)
