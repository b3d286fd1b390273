"""Declarative Automation on a real instance and real models: ticks evaluated as the sensor does, each tick's run
requests built as the daemon builds them, and executed one after another as they would be launched.

- On an empty instance, the first evaluations fill in everything (the observations, the shared branch, then
  every variant), one run per tick, and then request nothing.
- After a re-prune, one evaluation requests exactly the re-pruned variant's assets, in a single run, so no two
  runs can read each other's inputs; every result of that run is computed from the new checkpoint, in Dagster's
  own provenance (the input data versions it recorded), and nothing is left unsynced.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.automation_tick_evaluation_context import build_run_requests

from paser_assets import PaserConfig, PaserDuckDB, build_definitions, storage
from paser_assets.models.checkpoints import content_hash
from paser_assets.runner import _execute, observe, run_graph
from paser_assets.staleness import stale_or_missing

pytestmark = pytest.mark.system

VARIANT_ASSETS = ["pruned_model", "degradation_scores", "capability_degradation", "selection", "concept_graph",
                  "selection_export"]  # fmt: skip


def _setup(root: Path, original: Path, external: Path) -> dg.Definitions:
    database = PaserDuckDB(database=str(root / "paser.duckdb"))
    config = PaserConfig(
        demo_size=40,
        original_model=str(original),
        variants={"mag50": "magnitude:0.5", "ext": str(external)},
        model_cache_dir=str(root / "models"),
        export_dir=str(root / "export"),
        automation=True,
    )
    return build_definitions(config, database)


def _checkpoint(folder: Path, seed: int) -> Path:
    from tiny_models import save_tiny_checkpoint

    shutil.rmtree(folder, ignore_errors=True)
    return save_tiny_checkpoint(folder, seed=seed)


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor):
    """One evaluation of the automation sensor: its cursor and the run requests the daemon would launch."""
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    requests = build_run_requests(list(result._requested_subsets), defs.resolve_asset_graph(), None, True)
    return result.cursor, [set(request.asset_selection or []) for request in requests]


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey):
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1).records
    return records[0] if records else None


def _input_version(instance: dg.DagsterInstance, key: dg.AssetKey, parent: dg.AssetKey) -> str:
    """The data version of ``parent`` that the latest materialization of ``key`` was computed from."""
    return _latest(instance, key).asset_materialization.tags[f"dagster/input_data_version/{parent.to_user_string()}"]


def _version(instance: dg.DagsterInstance, key: dg.AssetKey) -> str:
    return _latest(instance, key).asset_materialization.tags["dagster/data_version"]


def test_the_first_evaluations_on_an_empty_instance_fill_in_everything_one_run_per_tick(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    defs = _setup(tmp_path, tiny_llama_dir, _checkpoint(tmp_path / "ext-ckpt", seed=1))
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        cursor, launched = None, []
        for _ in range(6):
            cursor, requests = _tick(defs, instance, cursor)
            assert len(requests) <= 1, requests  # never two runs side by side
            for keys in requests:
                assert _execute(defs, keys, instance, "automation").success
            launched.append(sorted(key.to_user_string() for keys in requests for key in keys))
        graph = defs.resolve_asset_graph()
        first = set(launched[0])
        assert {"original_model", "ext/pruned_checkpoint", "mag50/pruned_checkpoint", "recovery_pool"} <= first
        done = {key.to_user_string() for key in graph.materializable_asset_keys if _latest(instance, key)}
        assert done == {key.to_user_string() for key in graph.materializable_asset_keys}
        assert not stale_or_missing(defs, instance)
        assert launched[-1] == []  # it settles: nothing more to do


def test_a_reprune_is_recomputed_in_one_run_from_the_new_checkpoint(tiny_llama_dir: Path, tmp_path: Path) -> None:
    external = _checkpoint(tmp_path / "ext-ckpt", seed=1)
    defs = _setup(tmp_path, tiny_llama_dir, external)
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        assert run_graph(defs, instance).success
        cursor, requests = _tick(defs, instance, None)
        cursor, requests = _tick(defs, instance, cursor)
        assert requests == []  # everything up to date

        old_scores = _version(instance, dg.AssetKey(["ext", "degradation_scores"]))
        _checkpoint(external, seed=9)  # the user re-prunes in place
        assert observe(defs, instance).success  # what the sensor's cron observation does
        cursor, requests = _tick(defs, instance, cursor)

        expected = {dg.AssetKey(["ext", name]) for name in VARIANT_ASSETS}
        assert requests == [expected]  # one run, exactly the re-pruned variant: nothing to race with
        # Whatever order the tick's runs are launched in (here there is one), the results are the same.
        assert len(list(itertools.permutations(requests))) == 1
        result = _execute(defs, requests[0], instance, "automation")
        assert result.success
        order = [event.asset_key.path[-1] for event in result.get_asset_materialization_events()]
        assert order.index("degradation_scores") < order.index("capability_degradation") < order.index("selection")

        checkpoint = dg.AssetKey(["ext", "pruned_checkpoint"])
        scores, cds = dg.AssetKey(["ext", "degradation_scores"]), dg.AssetKey(["ext", "capability_degradation"])
        observed = instance.get_latest_data_version_record(checkpoint).asset_observation.tags["dagster/data_version"]
        assert content_hash(external) in observed
        for key in (scores, cds, dg.AssetKey(["ext", "selection"])):
            assert _input_version(instance, key, checkpoint) == observed  # computed from the new checkpoint
        assert _version(instance, scores) != old_scores
        assert _input_version(instance, cds, scores) == _version(instance, scores)
        assert _input_version(instance, dg.AssetKey(["ext", "selection"]), cds) == _version(instance, cds)
        metadata = _latest(instance, scores).asset_materialization.metadata
        assert metadata["pruned_hash"].value == content_hash(external)

        # The CDS table holds the new scores' cluster means.
        database = defs.resources["duckdb"]
        with database.get_connection(read_only=True) as conn:
            frame = storage.read_table(conn, "capability_degradation")
            means = conn.execute(
                "SELECT c.cluster, avg(s.jsd) FROM degradation_scores s JOIN clusters c USING (sample_id) "
                "WHERE s.variant = 'ext' AND s.sample_id NOT IN (SELECT sample_id FROM holdout_split) GROUP BY 1"
            ).fetchall()
        cds_rows = frame[frame["variant"] == "ext"].set_index("cluster")["cds"]
        assert {cluster: pytest.approx(mean) for cluster, mean in means} == cds_rows.to_dict()

        assert not stale_or_missing(defs, instance)
        _, requests = _tick(defs, instance, cursor)
        assert requests == []
