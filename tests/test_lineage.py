"""The shape of the asset graph: which assets depend on which model, and the recovery assets' switch."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from tiny_models import save_tiny_checkpoint

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.per_variant import RECOVERY_TAG, group_of, variant_key
from paser_assets.registry import sync_variants
from paser_assets.runner import observe

VARIANTS = ["mag50", "nm-24"]  # the second one's group is nm_24
METHODS = ["paser", "random"]
RECOVERY = {
    "baseline_selections",
    *(f"recovered_model/{method}" for method in METHODS),
    "reference_evaluation",
    *(f"recovery_evaluation/{method}" for method in METHODS),
    "recovery_comparison",
}
PER_VARIANT = {
    "pruned_model", "degradation_scores", "capability_degradation", "selection", "concept_graph",
    "selection_export", *RECOVERY,
}  # fmt: skip
SHARED = {
    "recovery_pool", "holdout_split", "instruction_embeddings", "manifold", "clusters", "cluster_profiles",
    "sample_concepts",
}  # fmt: skip
# What each asset loads: the lineage draws an edge from a model only to the assets that read it.
LOADS_ORIGINAL = {
    "pruned_model",
    "degradation_scores",
    "baseline_selections",
    *(f"recovered_model/{method}" for method in METHODS),  # the teacher, with PASER_LORA_LOSS=distillation
    "reference_evaluation",
}
LOADS_PRUNED = {
    "degradation_scores",
    "baseline_selections",
    *(f"recovered_model/{method}" for method in METHODS),
    "reference_evaluation",
    *(f"recovery_evaluation/{method}" for method in METHODS),
}


def graph(**settings) -> dg.AssetGraph:
    config = PaserConfig(recovery_methods=METHODS, **settings)
    return build_definitions(config, PaserDuckDB(database=":memory:"), variants=VARIANTS).resolve_asset_graph()


def of(variant: str, names: set[str]) -> set[str]:
    return {f"{variant}/{name}" for name in names}


def children(assets: dg.AssetGraph, parent: dg.AssetKey | str) -> set[str]:
    key = parent if isinstance(parent, dg.AssetKey) else dg.AssetKey(parent)
    return {key.to_user_string() for key in assets.get(key).child_keys}


def test_every_per_variant_asset_hangs_off_its_observed_checkpoint_and_only_readers_off_the_models() -> None:
    assets = graph(include_recovery=True)
    assert {key.to_user_string() for key in assets.get_all_asset_keys()} == {
        "original_model", *SHARED, *(name for variant in VARIANTS for name in of(variant, {"pruned_checkpoint"})),
        *(name for variant in VARIANTS for name in of(variant, PER_VARIANT)),
    }  # fmt: skip
    assert not any(assets.get(key).is_partitioned for key in assets.get_all_asset_keys())
    assert {key for key in assets.get_all_asset_keys() if assets.get(key).is_observable} == {
        dg.AssetKey("original_model"), *(variant_key(variant, "pruned_checkpoint") for variant in VARIANTS)
    }  # fmt: skip
    for variant in VARIANTS:
        # Dagster marks only direct children stale: one observation must reach every asset of the variant
        # directly, and none of another variant's.
        assert children(assets, variant_key(variant, "pruned_checkpoint")) == of(variant, PER_VARIANT)
        assert children(assets, variant_key(variant, "pruned_model")) == of(variant, LOADS_PRUNED)
    assert children(assets, "original_model") == {name for variant in VARIANTS for name in of(variant, LOADS_ORIGINAL)}


def test_a_variants_assets_read_only_its_own_and_the_shared_assets() -> None:
    assets = graph(include_recovery=True)
    for variant in VARIANTS:
        for key in assets.get_all_asset_keys():
            if key.path[0] != variant:
                continue
            assert assets.get(key).group_name == group_of(variant), key
            for parent in assets.get(key).parent_keys:
                assert parent.path[0] == variant or parent.to_user_string() in {"original_model", *SHARED}, (
                    parent,
                    key,
                )
    for name in SHARED:  # the shared assets read no variant
        assert {parent.to_user_string() for parent in assets.get(dg.AssetKey(name)).parent_keys} <= SHARED


def test_the_recovery_assets_exist_only_with_paser_recovery() -> None:
    off, on = graph(), graph(include_recovery=True)
    recovery = {key for key in on.get_all_asset_keys() if RECOVERY_TAG in on.get(key).tags}
    assert {key.to_user_string() for key in recovery} == {
        name for variant in VARIANTS for name in of(variant, RECOVERY)
    }
    assert recovery <= on.materializable_asset_keys
    for key in recovery:
        assert on.get(key).group_name == key.path[0].replace("-", "_")
    # Without PASER_RECOVERY neither the UI's "Materialize all", automation nor `key:"<variant>/*"` can reach them.
    assert not recovery & off.get_all_asset_keys()
    assert off.get_all_asset_keys() == on.get_all_asset_keys() - recovery


def test_groups_read_left_to_right() -> None:
    """pool, semantic, models, then each variant's group: no edge runs from a later group to an earlier one,
    and none between two variants' groups."""
    shared = ["pool", "semantic", "models"]
    assets = graph(include_recovery=True)
    for key in assets.get_all_asset_keys():
        node = assets.get(key)
        order = [*shared, node.group_name] if node.group_name not in shared else shared
        assert node.group_name in [*shared, *map(group_of, VARIANTS)], key
        for parent in node.parent_keys:
            parent_group = assets.get(parent).group_name
            assert parent_group in order, (parent, key)
            assert order.index(parent_group) <= order.index(node.group_name), (parent, key)


@pytest.mark.parametrize("change", ["original", "pruned"])
def test_a_new_original_or_pruned_checkpoint_changes_the_observed_version(tmp_path: Path, change: str) -> None:
    """The original's hash is part of the version of external/pruned_checkpoint, which every asset of the variant
    reads directly."""
    original = save_tiny_checkpoint(tmp_path / "original", seed=1)
    pruned = save_tiny_checkpoint(tmp_path / "pruned", seed=2)
    config = PaserConfig(original_model=str(original), pruned_model=str(pruned), model_cache_dir=str(tmp_path / "m"))
    database = PaserDuckDB(database=str(tmp_path / "paser.duckdb"))
    defs = build_definitions(config, database)
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        sync_variants(database, config)

        def observed() -> tuple[str, str]:
            assert observe(defs, instance).success
            versions = [
                instance.get_latest_data_version_record(key, True).event_log_entry
                for key in (dg.AssetKey("original_model"), variant_key("external", "pruned_checkpoint"))
            ]
            return tuple(entry.asset_observation.data_version for entry in versions)

        first = observed()
        assert observed() == first  # unchanged checkpoints keep their versions
        save_tiny_checkpoint(original if change == "original" else pruned, seed=3)
        second = observed()
        assert second[1] != first[1]
        assert (second[0] != first[0]) == (change == "original")
