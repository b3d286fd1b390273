"""Settings from the environment and as Dagster resources."""

from __future__ import annotations

import pytest

from paser_assets.resources import ENV_VARS, PaserConfig, PaserDuckDB, SettingError, parse_field_map


def test_every_setting_has_an_environment_variable() -> None:
    assert set(ENV_VARS) == set(PaserConfig.model_fields)
    assert all(name.startswith("PASER_") for name in ENV_VARS.values())


def test_defaults_without_environment() -> None:
    config = PaserConfig.from_env({})
    assert config.dataset is None  # the generated demo pool
    assert config.original_model is None  # the packaged SmolLM2
    assert config.pruned_model is None  # built-in pruning
    assert (config.prune_method, config.sparsity, config.budget) == ("wanda", 0.5, 0.2)
    database = PaserDuckDB.from_env({})
    assert database.database == "paser.duckdb" and database.schema_name == "paser"


def test_environment_values_are_parsed() -> None:
    config = PaserConfig.from_env(
        {
            "PASER_DATASET": "data/my.jsonl",
            "PASER_FIELD_MAP": "output=answer, instruction=question",
            "PASER_CLUSTERS": "12",
            "PASER_BUDGET": "150",
            "PASER_SPARSITY": "0.6",
            "PASER_PRUNE_NM": "2:4",
            "PASER_ALLOW_PICKLE": "true",
            "PASER_MANIFOLD": "Diffusion",
            "PASER_HEAD_PRECISION": "BFloat16",
        }
    )
    assert config.dataset == "data/my.jsonl"
    assert config.field_map == {"output": "answer", "instruction": "question"}
    assert config.n_clusters == 12 and config.budget == 150 and config.sparsity == 0.6
    assert config.prune_n_m == "2:4" and config.allow_pickle is True and config.manifold == "diffusion"
    assert config.head_precision == "bfloat16" and PaserConfig().head_precision == "auto"
    assert PaserConfig.from_env({"PASER_CLUSTERS": "auto"}).n_clusters is None
    assert PaserConfig.from_env({"PASER_DATASET": "  "}).dataset is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PASER_CLUSTERS", "many"),
        ("PASER_CLUSTERS", "1"),
        ("PASER_SPARSITY", "1.5"),
        ("PASER_BUDGET", "0"),
        ("PASER_BUDGET", "12.5"),
        ("PASER_MANIFOLD", "tsne"),
        ("PASER_DEMO_SIZE", "0"),
        ("PASER_ALLOW_PICKLE", "perhaps"),
        ("PASER_HEAD_PRECISION", "float16"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingError, match=variable):
        PaserConfig.from_env({variable: value})


def test_field_map_syntax_errors() -> None:
    with pytest.raises(SettingError, match="pool_field=source_field"):
        parse_field_map("output")
    with pytest.raises(SettingError):
        parse_field_map("=answer")


@pytest.mark.parametrize("schema", ["paser; DROP TABLE x", 'paser"', "1abc", "a-b", "x" * 64, "main.paser"])
def test_schema_names_are_validated(schema: str) -> None:
    with pytest.raises(SettingError, match="schema"):
        PaserDuckDB.from_env({"PASER_SCHEMA": schema})


def test_readme_documents_every_setting() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for variable in [*ENV_VARS.values(), "PASER_DB", "PASER_SCHEMA", "PASER_DB_LOCK_TIMEOUT"]:
        assert f"`{variable}`" in readme, variable
