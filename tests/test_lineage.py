"""The shape of the asset graph: which assets depend on which model, and the recovery group's switch."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from tiny_models import save_tiny_checkpoint

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.registry import sync_variants
from paser_assets.runner import observe

RECOVERY = {
    "baseline_selections",
    "recovered_model",
    "reference_evaluation",
    "recovery_evaluation",
    "recovery_comparison",
}
# What each asset loads: the lineage draws an edge from a model only to the assets that read it.
LOADS_ORIGINAL = {
    "pruned_model",
    "degradation_scores",
    "baseline_selections",
    "recovered_model",  # the teacher, with PASER_LORA_LOSS=distillation
    "reference_evaluation",
}
LOADS_PRUNED = {
    "degradation_scores",
    "baseline_selections",
    "recovered_model",
    "reference_evaluation",
    "recovery_evaluation",
}


def graph(**settings) -> dg.AssetGraph:
    return build_definitions(PaserConfig(**settings), PaserDuckDB(database=":memory:")).resolve_asset_graph()


def children(assets: dg.AssetGraph, parent: str) -> set[str]:
    return {key.to_user_string() for key in assets.get(dg.AssetKey(parent)).child_keys}


def test_every_per_variant_asset_hangs_off_the_observed_checkpoints_and_only_readers_off_the_models() -> None:
    assets = graph(include_recovery=True)
    per_variant = {key.to_user_string() for key in assets.materializable_asset_keys if assets.get(key).is_partitioned}
    assert per_variant == {
        "pruned_model", "degradation_scores", "capability_degradation", "selection", "concept_graph",
        "selection_export", *RECOVERY,
    }  # fmt: skip
    # Dagster marks only direct children stale: one observation must reach every per-variant asset directly.
    assert children(assets, "pruned_checkpoint") == per_variant
    assert children(assets, "original_model") == LOADS_ORIGINAL
    assert children(assets, "pruned_model") == LOADS_PRUNED


def test_the_recovery_group_is_shown_but_not_launchable_without_paser_recovery() -> None:
    off, on = graph(), graph(include_recovery=True)
    recovery = {key for key in on.get_all_asset_keys() if on.get(key).group_name == "recovery"}
    assert {key.to_user_string() for key in recovery} == RECOVERY
    assert recovery <= on.materializable_asset_keys
    # Without PASER_RECOVERY the UI's "Materialize all" (every executable asset in view) and automation leave
    # them out; the lineage still shows them, with the same code versions and parents.
    assert not recovery & off.materializable_asset_keys and not recovery & off.executable_asset_keys
    for key in recovery:
        assert off.get(key).group_name == "recovery" and off.get(key).automation_condition is None
        assert (off.get(key).code_version, off.get(key).parent_keys) == (
            on.get(key).code_version,
            on.get(key).parent_keys,
        )
    assert len(off.materializable_asset_keys) == len(on.materializable_asset_keys) - len(RECOVERY)


def test_groups_read_left_to_right() -> None:
    """pool, semantic, models, scores, selection, recovery: no edge runs from a later group to an earlier one."""
    order = ["pool", "semantic", "models", "scores", "selection", "recovery"]
    assets = graph(include_recovery=True)
    for key in assets.get_all_asset_keys():
        node = assets.get(key)
        assert node.group_name in order, key
        for parent in node.parent_keys:
            parent_group = assets.get(parent).group_name
            assert order.index(parent_group) <= order.index(node.group_name), (parent, key)


@pytest.mark.parametrize("change", ["original", "pruned"])
def test_a_new_original_or_pruned_checkpoint_changes_the_observed_version(tmp_path: Path, change: str) -> None:
    """The original's hash is part of pruned_checkpoint's version, which every per-variant asset reads directly."""
    original = save_tiny_checkpoint(tmp_path / "original", seed=1)
    pruned = save_tiny_checkpoint(tmp_path / "pruned", seed=2)
    config = PaserConfig(original_model=str(original), pruned_model=str(pruned), model_cache_dir=str(tmp_path / "m"))
    database = PaserDuckDB(database=str(tmp_path / "paser.duckdb"))
    defs = build_definitions(config, database)
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        sync_variants(instance, database, config)

        def observed() -> tuple[str, str]:
            assert observe(defs, instance).success
            versions = [
                instance.get_latest_data_version_record(dg.AssetKey(key), True, partition).event_log_entry
                for key, partition in (("original_model", None), ("pruned_checkpoint", "external"))
            ]
            return tuple(entry.asset_observation.data_version for entry in versions)

        first = observed()
        assert observed() == first  # unchanged checkpoints keep their versions
        save_tiny_checkpoint(original if change == "original" else pruned, seed=3)
        second = observed()
        assert second[1] != first[1]
        assert (second[0] != first[0]) == (change == "original")
