"""PASER as a Dagster Component loaded from a defs.yaml."""

from __future__ import annotations

import textwrap
from pathlib import Path

import dagster as dg
import duckdb
import pytest
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
                    pool: {{demo_size: 40}}
                    semantic: {{n_clusters: 4}}
                """
            )
        )
        with sandbox.build_all_defs() as defs:
            graph = defs.resolve_asset_graph()
            keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
            # the default settings' one variant (Wanda at 50%) has its own assets, keyed by its name
            assert {"recovery_pool", "clusters", "original_model"} <= keys
            assert {"wanda-50/pruned_checkpoint", "wanda-50/pruned_model", "wanda-50/degradation_scores"} <= keys
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


def _component_defs(settings_yaml: str, database: Path):
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "paser"
        folder.mkdir(parents=True)
        body = textwrap.indent(textwrap.dedent(settings_yaml), " " * 4)
        (folder / "defs.yaml").write_text(
            f"type: paser_assets.PaserComponent\nattributes:\n  database: {database}\n  settings:\n{body}"
        )
        with sandbox.build_all_defs() as defs:
            return defs.resources["paser"]


def test_component_settings_grouped_by_stage(tmp_path: Path) -> None:
    config = _component_defs(
        """
        scoring:
          max_tokens: 64
        semantic: {n_clusters: 3}
        selection: {budget: 0.1}
        """,
        tmp_path / "c.duckdb",
    )
    assert (config.scoring.max_tokens, config.semantic.n_clusters, config.selection.budget) == (64, 3, 0.1)


def test_component_schema_names_every_setting() -> None:
    """The component's YAML schema is typed: each stage with each of its settings and their help."""
    from paser_assets.component import PaserComponent
    from paser_assets.settings import all_settings

    schema = PaserComponent.model_json_schema()
    definitions = schema["$defs"]
    stages = definitions["PaserSettings"]["properties"]
    for item in all_settings():
        if item.stage is None:
            assert stages[item.name]["description"] == item.description
            continue
        fields = definitions[stages[item.stage]["$ref"].rsplit("/", 1)[1]]["properties"]
        assert fields[item.name]["description"] == item.description, item.path


def test_component_settings_typo_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(Exception) as raised:
        _component_defs("selection: {budgett: 0.1}\n", tmp_path / "c.duckdb")
    chain, error = [], raised.value
    while error is not None:  # Dagster wraps the component's own error
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("budgett" in message for message in chain), chain
