"""lm-evaluation-harness as an evaluation backend (paser_assets.models.harness): PASER_EVAL_TASKS' harness entries,
a harness task YAML over a local JSON-lines file run on the tiny Llama through ``evaluate_model`` and through the
recovery graph (references and one recovered arm, rows in DuckDB), and the one-line errors. Offline: the tests
write their own task files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from paser_assets.models.evaluation import read_task, score_task
from paser_assets.models.harness import HarnessResult, result_rows, run_harness
from paser_assets.settings import EvaluationSettings, PaserConfig, SettingError
from paser_assets.settings.stages import TaskEntry, parse_task_entries

ITEMS = 6


def write_task(folder: Path, items: int = 8, task: str = "tiny_qa", data: Path | None = None) -> Path:
    """A 2-choice question task as JSON lines (the plugin's format, which the YAML reads too) and a harness
    configuration over it with the plugin's question prompt; returns the YAML's path."""
    folder.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = folder / f"{task}.jsonl"
        rows = [
            {"id": i, "context": f"Which colour is the sky on day {i}?", "choices": ["blue", "a green stone"],
             "label": i % 2}
            for i in range(items)
        ]  # fmt: skip
        data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = folder / f"{task}.yaml"
    config.write_text(
        f"task: {task}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{context}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    return config


def heldout_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [{"sample_id": f"h{i}", "instruction": f"Name a colour {i}.", "input": "", "output": "Blue."} for i in range(2)]
    )


# -- settings


def test_eval_tasks_take_files_harness_names_and_harness_yaml(tmp_path: Path) -> None:
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text("{}\n")
    yaml_task = write_task(tmp_path / "tasks")
    settings = EvaluationSettings(eval_tasks=f"qa={jsonl}; boolq ; mine={yaml_task}")
    assert settings.tasks() == {"qa": str(jsonl)}  # the plugin's own, exactly as before
    assert settings.harness_tasks() == {
        "boolq": TaskEntry("boolq", "harness"),
        "mine": TaskEntry("mine", "harness_yaml", str(yaml_task)),
    }
    assert parse_task_entries(f"a={tmp_path / 'tasks' / 'tiny_qa.yaml'}")["a"].kind == "harness_yaml"
    bad = {
        f"boolq; boolq={jsonl}": "given twice",
        "bo ol q": "may hold only",
        f"mine={tmp_path / 'missing.yaml'}": "is not a file",
        f"={yaml_task}": "is not 'name=path'",
    }
    for value, message in bad.items():
        with pytest.raises(SettingError, match="PASER_EVAL_TASKS") as error:
            PaserConfig.from_env({"PASER_EVAL_TASKS": value})
        assert message in str(error.value) and "\n" not in str(error.value)


def test_a_harness_task_without_the_extra_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if not installed: find_spec and import both fail
    with pytest.raises(SettingError) as error:
        PaserConfig.from_env({"PASER_EVAL_TASKS": "boolq"})
    message = str(error.value)
    assert "PASER_EVAL_TASKS names the lm-evaluation-harness task 'boolq': pip install 'paser-assets[lm-eval]'" in (
        message
    )
    assert "\n" not in message
    with pytest.raises(SettingError, match=r"paser-assets\[lm-eval\]"):
        PaserConfig.from_env({"PASER_EVAL_TASKS": f"mine={write_task(tmp_path)}"})
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text("{}\n")
    assert PaserConfig.from_env({"PASER_EVAL_TASKS": f"qa={jsonl}"}).evaluation.tasks() == {"qa": str(jsonl)}
    with pytest.raises(ValueError, match=r"pip install 'paser-assets\[lm-eval\]'"):
        run_harness(None, None, {"boolq": TaskEntry("boolq", "harness")}, 4, print)


def test_the_harness_is_imported_only_when_a_harness_task_runs(tmp_path: Path) -> None:
    """`paser --help`, the definitions and the settings, a harness entry among them, never import lm_eval."""
    jsonl = tmp_path / "qa.jsonl"
    jsonl.write_text("{}\n")
    code = f"""
import contextlib, io, sys
from paser_assets.settings import PaserConfig
PaserConfig.from_env({{"PASER_EVAL_TASKS": "qa={jsonl}; boolq", "PASER_RECOVERY": "1"}})
import paser_assets.definitions
from paser_assets.cli import main
sys.argv = ["paser", "--help"]
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main()
assert "lm_eval" not in sys.modules, "lm_eval was imported"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# -- the backend on the tiny Llama


def test_a_yaml_task_runs_through_the_harness_in_evaluate_model(tiny_pair, tmp_path: Path) -> None:
    from paser_assets.models.evaluation import evaluate_model

    model, tokenizer = tiny_pair
    config = write_task(tmp_path / "tasks")
    data = tmp_path / "tasks" / "tiny_qa.jsonl"
    settings = EvaluationSettings(
        eval_text="", eval_tasks=f"qa={data}; mine={config}", eval_task_items=ITEMS, eval_max_tokens=64, eval_window=16
    )
    messages: list[str] = []
    result = evaluate_model(model, tokenizer, heldout_rows(), 64, settings, messages.append)
    rows = {(r.task, r.metric): r for r in result.harness}
    assert set(rows) == {("mine", "acc"), ("mine", "acc_norm")}
    import lm_eval

    for row in rows.values():
        assert row.entry == "mine" and row.items == ITEMS and row.version == lm_eval.__version__
        assert 0.0 <= row.value <= 1.0 and row.stderr > 0
    # The same items through the plugin's own scorer: the same prompts and the same tokenization, so the same
    # choices. (acc_norm: the harness divides by the choice's length, the plugin by the continuation's, its
    # leading space included; on these items that changes no choice.)
    ours = score_task(model, tokenizer, read_task(data, ITEMS), "question")[0]
    assert result.tasks["qa"] == ours
    assert rows["mine", "acc"].value == pytest.approx(ours.acc)
    assert rows["mine", "acc_norm"].value == pytest.approx(ours.acc_norm)
    assert rows["mine", "acc"].stderr == pytest.approx(ours.acc_stderr)
    assert any(m.startswith("mine (lm-evaluation-harness") for m in messages)


def test_a_task_whose_data_cannot_be_loaded_is_a_one_line_error_naming_it(tiny_pair, tmp_path: Path) -> None:
    model, tokenizer = tiny_pair
    gone = write_task(tmp_path / "gone", task="gone_qa", data=tmp_path / "missing.jsonl")
    hub = tmp_path / "hub" / "hub_qa.yaml"
    hub.parent.mkdir()
    hub.write_text(write_task(tmp_path / "x", task="hub_qa").read_text().replace("dataset_path: json", "dataset_path: "
                   "someone/no_such_dataset").replace("dataset_kwargs", "unused"))  # fmt: skip
    nameless = tmp_path / "nameless.yaml"
    nameless.write_text("dataset_path: json\n")
    cases = {
        "gone": (TaskEntry("gone", "harness_yaml", str(gone)), "the lm-evaluation-harness task 'gone_qa' could not"),
        "hub": (TaskEntry("hub", "harness_yaml", str(hub)), "the lm-evaluation-harness task 'hub_qa' could not"),
        "nameless": (TaskEntry("nameless", "harness_yaml", str(nameless)), "names no task"),
    }
    for name, (entry, message) in cases.items():
        with pytest.raises(ValueError) as error:
            run_harness(model, tokenizer, {name: entry}, 4, print)
        text = str(error.value)
        assert text.startswith(f"PASER_EVAL_TASKS {name}: ") and message in text and "\n" not in text, text


def test_a_harness_task_by_name_offline_or_unknown_is_a_one_line_error(tiny_pair) -> None:
    """conftest sets HF_HUB_OFFLINE: boolq's dataset cannot be downloaded."""
    model, tokenizer = tiny_pair
    for name, message in {"boolq": "could not be loaded", "no_such_task_anywhere": "has no task"}.items():
        with pytest.raises(ValueError) as error:
            run_harness(model, tokenizer, {name: TaskEntry(name, "harness")}, 4, print)
        text = str(error.value)
        assert text.startswith(f"PASER_EVAL_TASKS {name}: ") and message in text and "\n" not in text, text


def test_result_rows_keep_every_metric_with_its_stderr_and_filter() -> None:
    output = {
        "results": {
            "gsm": {"alias": "gsm", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
                    "exact_match,flexible-extract": 0.5, "exact_match_stderr,flexible-extract": "N/A"},
            "grp": {"acc,none": 0.4, "acc_stderr,none": 0.05},
            "grp_sub": {"acc,none": 0.3, "acc_stderr,none": 0.06, "sample_len": 10},
        },
        "n-samples": {"gsm": {"original": 9, "effective": 4}, "grp_sub": {"original": 10, "effective": 10}},
    }  # fmt: skip
    assert result_rows("math", "gsm", output, "0.4.x") == [
        HarnessResult("math", "grp", "acc", 0.4, 0.05, None, "0.4.x"),
        HarnessResult("math", "grp_sub", "acc", 0.3, 0.06, 10, "0.4.x"),
        HarnessResult("math", "math", "exact_match,strict-match", 0.25, 0.1, 4, "0.4.x"),
        HarnessResult("math", "math", "exact_match,flexible-extract", 0.5, None, 4, "0.4.x"),
    ]


def test_harness_rows_enter_the_comparison_with_recovery_ratios() -> None:
    from paser_assets.core.recovery_metrics import comparison_table

    arms = ["original", "pruned", "random"]
    heldout = pd.DataFrame(
        [{"arm": a, "sample_id": f"s{i}", "nll": 1.0 + i, "tokens": 3, "cluster": i, "family": None}
         for a in arms for i in range(2)]
    )  # fmt: skip
    empty_texts = pd.DataFrame(columns=["arm", "text", "perplexity"])
    empty_tasks = pd.DataFrame(columns=["arm", "task", "items", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr"])
    harness = pd.DataFrame(
        [{"arm": a, "task": "boolq", "metric": "acc", "value": v, "stderr": 0.01}
         for a, v in zip(arms, [0.8, 0.6, 0.75], strict=True)]
    )  # fmt: skip
    training = pd.DataFrame(columns=["arm", "train_samples", "train_tokens", "train_seconds"])
    table = comparison_table(heldout, empty_texts, empty_tasks, training, arms, harness)
    row = table[(table["method"] == "random") & (table["metric"] == "harness:boolq:acc")].iloc[0]
    assert row["value"] == 0.75 and row["stderr"] == 0.01 and row["recovery_ratio"] == pytest.approx(0.75)
    without = comparison_table(heldout, empty_texts, empty_tasks, training, arms)
    assert not without["metric"].str.startswith("harness:").any()


# -- through the graph: the references and one recovered arm


@pytest.mark.system
def test_harness_rows_of_the_references_and_a_recovered_arm_land_in_duckdb(tmp_path: Path, tiny_llama_dir) -> None:
    import dagster as dg

    from paser_assets import PaserDuckDB, build_definitions
    from paser_assets.runner import run_graph

    config_path = write_task(tmp_path / "tasks")
    config = PaserConfig(
        eval_text="",
        eval_tasks=f"mine={config_path}",
        eval_task_items=ITEMS,
        eval_window=16,
        eval_max_tokens=64,
        demo_size=64,
        original_model=str(tiny_llama_dir),
        prune_method="magnitude",
        lora_epochs=1,
        lora_batch_size=8,
        lora_grad_accumulation=2,
        model_cache_dir=str(tmp_path / "models"),
        export_dir=str(tmp_path / "export"),
        recovery_methods=["random"],
        include_recovery=True,
    )
    database = PaserDuckDB(database=str(tmp_path / "paser.duckdb"))
    run = run_graph(build_definitions(config, database), dg.DagsterInstance.ephemeral())
    assert run.success, run.failures()
    with duckdb.connect(database.database, read_only=True) as conn:
        conn.execute("USE paser.paser")
        rows = conn.execute(
            "SELECT method, model, task, metric, value, stderr, items, harness_version FROM harness_results "
            "ORDER BY method, model, metric"
        ).fetchall()
        comparison = conn.execute(
            "SELECT method, value, recovery_ratio FROM recovery_comparison WHERE metric = 'harness:mine:acc' "
            "ORDER BY method"
        ).fetchall()
    import lm_eval

    assert [(r[0], r[1], r[3]) for r in rows] == [
        ("random", "recovered", "acc"), ("random", "recovered", "acc_norm"),
        ("reference", "original", "acc"), ("reference", "original", "acc_norm"),
        ("reference", "pruned", "acc"), ("reference", "pruned", "acc_norm"),
    ]  # fmt: skip
    for _, _, task, _, value, stderr, items, version in rows:
        assert task == "mine" and 0 <= value <= 1 and stderr > 0 and items == ITEMS and version == lm_eval.__version__
    assert [r[0] for r in comparison] == ["original", "pruned", "random"]
    by_arm = {(r[0], r[1], r[3]): r[4] for r in rows}
    assert comparison[2][1] == pytest.approx(by_arm["random", "recovered", "acc"])
    assert comparison[0][2] in (1.0, None)  # NULL when the original and the pruned model tie
