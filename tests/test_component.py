"""PASER as a Dagster Component loaded from a defs.yaml."""

from __future__ import annotations

import textwrap
from pathlib import Path

import dagster as dg
import duckdb
from dagster.components.testing import create_defs_folder_sandbox

from paser_assets import PaserConfig, PaserDuckDB


def test_component_from_yaml_builds_and_materializes(tmp_path: Path) -> None:
    database = tmp_path / "component.duckdb"
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "paser"
        folder.mkdir(parents=True)
        (folder / "defs.yaml").write_text(
            textwrap.dedent(
                f"""
                type: paser_assets.PaserComponent
                attributes:
                  database: {database}
                  schema_name: recovery
                  settings:
                    demo_size: 40
                    n_clusters: 4
                """
            )
        )
        with sandbox.build_all_defs() as defs:
            graph = defs.resolve_asset_graph()
            keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
            assert {"recovery_pool", "clusters", "degradation_scores", "original_model", "pruned_model"} <= keys
            assert isinstance(defs.resources["paser"], PaserConfig)
            assert defs.resources["paser"].semantic.n_clusters == 4
            assert isinstance(defs.resources["duckdb"], PaserDuckDB)
            result = dg.materialize(
                [defs.get_assets_def("recovery_pool")],
                resources=defs.resources,
                instance=dg.DagsterInstance.ephemeral(),
            )
            assert result.success
    with duckdb.connect(str(database), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM component.recovery.recovery_pool").fetchall()[0][0] > 30
