"""The typed settings: environment names, validation, and code versions derived from what each asset reads."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import torch
from reference_script import reference_script

from paser_assets import build_definitions
from paser_assets.graph import declared_settings
from paser_assets.resources import PaserDuckDB
from paser_assets.settings import (
    STAGES,
    PaserConfig,
    SettingError,
    SettingInfo,
    SettingsView,
    UndeclaredSettingError,
    all_settings,
    environment_names,
    reads,
)

SETTINGS = list(all_settings())


def test_every_setting_has_its_own_name_and_environment_variable() -> None:
    names = [item.name for item in SETTINGS]
    envs = [item.env for item in SETTINGS]
    assert len(set(names)) == len(names)  # flat keys in a component's `settings` are unambiguous
    assert len(set(envs)) == len(envs)
    assert all(env.startswith("PASER_") for env in envs)
    assert not set(names) & set(STAGES)  # a flat key never reads as a stage
    assert all(item.description for item in SETTINGS), [item.path for item in SETTINGS if not item.description]


def test_defaults_without_environment() -> None:
    config = PaserConfig.from_env({})
    assert config.pool.dataset is None  # the generated demo pool
    assert config.models.original_model is None  # the packaged SmolLM2
    assert config.models.pruned_model is None  # built-in pruning
    assert (config.pruning.prune_method, config.pruning.sparsity, config.selection.budget) == ("wanda", 0.5, 0.2)
    assert config == PaserConfig()


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
            "PASER_PRECISION": "Float32",
            "PASER_DEVICE": "CUDA:1",
            "PASER_SCORING_TOKEN_BUDGET": "auto",
            "PASER_VARIANTS": "a=wanda:0.5; b=/ckpt",
            "PASER_RECOVERY_METHODS": "random, PASER",
            "PASER_RECOVERY": "1",
        }
    )
    assert config.pool.dataset == "data/my.jsonl"
    assert config.pool.field_map == {"output": "answer", "instruction": "question"}
    assert config.semantic.n_clusters == 12 and config.selection.budget == 150 and config.pruning.sparsity == 0.6
    assert config.pruning.prune_n_m == "2:4" and config.models.allow_pickle is True
    assert config.semantic.manifold == "diffusion" and config.scoring.head_precision == "bfloat16"
    assert config.scoring.precision == "float32" and config.models.device == "cuda:1"
    assert config.scoring.scoring_token_budget is None
    assert config.models.variants == {"a": "wanda:0.5", "b": "/ckpt"}
    assert config.recovery.recovery_methods == ["paser", "random"]  # in the canonical order
    assert config.execution.include_recovery is True
    assert PaserConfig.from_env({"PASER_CLUSTERS": "auto"}).semantic.n_clusters is None
    assert PaserConfig.from_env({"PASER_DATASET": "  "}).pool.dataset is None


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PASER_CLUSTERS", "many"),
        ("PASER_CLUSTERS", "1"),
        ("PASER_SPARSITY", "1.5"),
        ("PASER_BUDGET", "0"),
        ("PASER_BUDGET", "12.5"),
        ("PASER_BUDGET", "inf"),
        ("PASER_BUDGET", "nan"),
        ("PASER_MANIFOLD", "tsne"),
        ("PASER_DEMO_SIZE", "0"),
        ("PASER_ALLOW_PICKLE", "perhaps"),
        ("PASER_HEAD_PRECISION", "float16"),
        ("PASER_PRECISION", "float16"),
        ("PASER_DEVICE", "gpu"),
        ("PASER_DEVICE", "cuda:one"),
        ("PASER_SEED", "-1"),
        ("PASER_PRUNE_NM", "4:2"),
        ("PASER_PRUNE_NM", "2-4"),
        ("PASER_GRAPH_REGULARIZATION", "-0.5"),
        ("PASER_LORA_LR", "nan"),
        ("PASER_FIELD_MAP", "output"),
        ("PASER_VARIANTS", "a=wanda:0.5;a=wanda:0.6"),
        ("PASER_VARIANTS", "bad name=wanda:0.5"),
        ("PASER_RECOVERY_METHODS", "paser,nonsense"),
    ],
)
def test_bad_values_are_one_line_naming_the_variable_and_value(variable: str, value: str) -> None:
    with pytest.raises(SettingError, match=variable) as error:
        PaserConfig.from_env({variable: value})
    assert "\n" not in str(error.value) and repr(value) in str(error.value)


@pytest.mark.parametrize(
    ("variable", "value"), [("PASER_DB_LOCK_TIMEOUT", "nan"), ("PASER_DB_LOCK_TIMEOUT", "-1"), ("PASER_SCHEMA", "a-b")]
)
def test_bad_database_settings_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingError, match=variable):
        PaserDuckDB.from_env({variable: value})


def test_an_unknown_variable_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(SettingError, match=r"PASER_BUDGETT \(did you mean PASER_BUDGET\?\)"):
        PaserConfig.from_env({"PASER_BUDGETT": "0.1"})
    assert PaserConfig.from_env({"PASER_DB": "x.duckdb"}) == PaserConfig()  # the database's own settings


def test_flat_and_grouped_settings_agree_and_typos_are_refused() -> None:
    flat = PaserConfig(max_tokens=256, demo_size=40, seed=3)
    grouped = PaserConfig(scoring={"max_tokens": 256}, pool={"demo_size": 40}, seed=3)
    assert flat == grouped
    assert PaserConfig(pool={"demo_size": 40}, holdout_max=5).pool.holdout_max == 5  # both forms merge
    with pytest.raises(SettingError, match="'budgett' \\(did you mean 'budget'\\?\\)"):
        PaserConfig(budgett=0.1)


def test_the_settings_reference_is_the_generated_one() -> None:
    script = reference_script()
    text = script.REFERENCE.read_text(encoding="utf-8")
    block = text.split(script.SETTINGS_START + "\n", 1)[1].split(script.SETTINGS_END, 1)[0]
    expected = script.settings_markdown(PaserDuckDB.documented_settings())
    assert block == expected, f"docs/reference.md's settings are out of date: run {script.UPDATE_COMMAND}"
    for variable in [*environment_names().values(), *PaserDuckDB.environment_names().values()]:
        assert f"`{variable}`" in block, variable


def test_paser_settings_lists_every_variable_with_its_default() -> None:
    from paser_assets.cli import settings_listing

    listing = settings_listing()
    defaults = PaserConfig()
    for item in SETTINGS:
        assert f"  {item.env}=" in listing, item.env
    assert "  PASER_BUDGET=0.2  [results]" in listing and defaults.selection.budget == 0.2
    for variable in PaserDuckDB.environment_names().values():
        assert f"  {variable}=" in listing, variable
    assert "|" not in listing.split("\n", 1)[0]  # plain text, not the Markdown tables


# -- code versions follow the settings each asset reads


def _alternative(item: SettingInfo) -> Any:
    """A valid value of the setting other than its default."""
    default = PaserConfig().value(item.path)
    annotation = item.info.annotation
    options = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return next(option for option in options if option != default)
    if annotation is bool:
        return not default
    if typing.get_origin(annotation) is dict:
        return {"output": "answer"} if item.name == "field_map" else {"other": "wanda:0.3"}
    if typing.get_origin(annotation) is list:
        return ["paser", "random"]
    base = next((t for t in (int, float, str) if t is annotation or t in options), None)
    if base is int:
        return 5 if default is None else default + 1
    if base is float:
        return default / 2 if default else 0.5
    # The device: the other name of what 'auto' takes here, so that PASER_PRECISION=auto resolves alike.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    named_file = f"other={__file__}"  # any readable file will do for a corpus or a task
    return {
        "prune_n_m": "2:4",
        "dask_address": "tcp://127.0.0.1:8786",
        "device": device,
        "eval_text": named_file,
        "eval_tasks": named_file,
    }.get(item.name, f"/tmp/other-{item.name}")


def _asset_name(key: dg.AssetKey) -> str:
    """A shared asset's key; a variant's asset as ``<variant>/<asset>[/<method>]``, whichever the variant: the
    settings that name the variant (the pruning recipe, the pruned model) change its keys, not its assets."""
    return "/".join(["<variant>", *key.path[1:]]) if len(key.path) > 1 else key.path[0]


def _code_versions(config: PaserConfig) -> dict[str, str | None]:
    """Every asset's code version, by :func:`_asset_name`; the recovery assets keep theirs when PASER_RECOVERY
    leaves them external."""
    graph = build_definitions(config, PaserDuckDB(database=":memory:")).resolve_asset_graph()
    versions: dict[str, str | None] = {}
    for key in graph.get_all_asset_keys():
        version = graph.get(key).code_version
        assert versions.setdefault(_asset_name(key), version) == version, key  # every variant's alike
    return versions


# The recovery assets are materializable (so their @reads are visible) only with PASER_RECOVERY.
WITH_RECOVERY = {"include_recovery": True}


def _readers(path: str, stage: str | None) -> set[str]:
    """The assets whose @reads declaration names the setting or its whole stage."""
    defs = build_definitions(PaserConfig(**WITH_RECOVERY), PaserDuckDB(database=":memory:"))
    names = set()
    for asset in defs.assets or []:
        if isinstance(asset, dg.AssetsDefinition) and asset.is_materializable:
            declared = declared_settings(asset)
            if path in declared or stage in declared:
                names |= {_asset_name(key) for key in asset.keys}
    return names


@pytest.mark.parametrize("item", SETTINGS, ids=[item.path for item in SETTINGS])
def test_changing_a_setting_marks_stale_exactly_the_assets_that_read_it(item: SettingInfo) -> None:
    base = {} if item.name in WITH_RECOVERY else WITH_RECOVERY  # PASER_RECOVERY itself: from its default
    before = _code_versions(PaserConfig(**base))
    after = _code_versions(PaserConfig(**{**base, item.name: _alternative(item)}))
    # Only PASER_RECOVERY and the recovery methods (one recovered_model and recovery_evaluation per method) add or
    # remove assets.
    added_or_removed = before.keys() ^ after.keys()
    assert not added_or_removed or item.path in ("recovery.recovery_methods", "execution.include_recovery"), (
        added_or_removed
    )
    changed = {name for name in before.keys() & after.keys() if before[name] != after[name]}
    if item.affects == "results":
        readers = _readers(item.path, item.stage)
        assert readers, f"{item.path} is declared to affect results but no asset reads it"
        assert changed == readers & after.keys()
    else:
        assert changed == set(), f"{item.path} ({item.affects}) must not change a code version"


def test_an_undeclared_setting_cannot_be_read() -> None:
    @reads("scoring.max_tokens")
    def asset_function(paser: PaserConfig) -> int:
        return paser.scoring.max_tokens + paser.selection.concepts_per_sample

    with pytest.raises(UndeclaredSettingError, match=r"selection\.concepts_per_sample"):
        asset_function(paser=PaserConfig())
    view = SettingsView(PaserConfig(), frozenset({"pruning"}), "test")
    assert view.pruning.recipe().method == "wanda"  # a method of a declared stage reads through the view
    with pytest.raises(UndeclaredSettingError, match="seed"):
        _ = SettingsView(PaserConfig(), frozenset({"pool"}), "test").seed


def test_every_asset_declares_what_it_reads() -> None:
    defs = build_definitions(PaserConfig(), PaserDuckDB(database=":memory:"))
    for asset in defs.assets or []:
        if isinstance(asset, dg.AssetsDefinition) and asset.is_materializable:
            assert isinstance(declared_settings(asset), frozenset)
    with pytest.raises(ValueError, match="unknown settings in @reads"):
        reads("scoring.max_tokenz")


def test_the_launchpad_config_sets_a_grouped_setting() -> None:
    @dg.asset
    def budget_of(paser: PaserConfig) -> float:
        return paser.selection.budget

    result = dg.materialize(
        [budget_of],
        resources={"paser": PaserConfig()},
        run_config={"resources": {"paser": {"config": {"selection": {"budget": 0.05}}}}},
    )
    assert result.output_for_node("budget_of") == 0.05


def test_the_ui_config_schema_is_grouped_by_stage_with_help_on_every_field() -> None:
    """What the launchpad shows under resources.paser.config: one section per stage, each field described."""
    schema = PaserConfig.to_config_schema().as_field().config_type
    assert list(schema.fields) == ["seed", *STAGES]
    for stage, model in STAGES.items():
        section = schema.fields[stage]
        assert section.description == model.__doc__
        assert list(section.config_type.fields) == list(model.model_fields)
        assert all(field.description for field in section.config_type.fields.values()), stage


def test_named_files_are_parsed_and_checked(tmp_path: Path) -> None:
    corpus, task = tmp_path / "wiki.txt", tmp_path / "arc.jsonl"
    corpus.write_text("text")
    task.write_text("{}")
    config = PaserConfig.from_env({"PASER_EVAL_TEXT": f"wiki={corpus}", "PASER_EVAL_TASKS": f" arc={task} ; "})
    assert config.evaluation.texts() == {"wiki": str(corpus)}
    assert config.evaluation.tasks() == {"arc": str(task)}
    assert PaserConfig().evaluation.texts() == {}  # the standard-library text, named stdlib_docs
    bad = {
        f"{corpus}": "is not 'name=path'",
        f"wiki={tmp_path / 'missing.txt'}": "is not a file",
        f"wiki={corpus}; wiki={corpus}": "given twice",
        f"wi ki={corpus}": "may hold only",
    }
    for value, message in bad.items():
        with pytest.raises(SettingError, match="PASER_EVAL_TEXT") as error:
            PaserConfig.from_env({"PASER_EVAL_TEXT": value})
        assert message in str(error.value)
