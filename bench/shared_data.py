"""What the benchmarks share: the four files of ``../shared/data`` read as Alpaca records, the evaluation files of
``../shared/eval``, and a timer."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

EVAL = Path(__file__).resolve().parents[2] / "shared" / "eval"
# The four zero-shot tasks and the text corpus of ../shared/eval (formats and protocol in its README).
EVAL_TASKS = {
    "arc_easy": EVAL / "arc_easy_test.jsonl",
    "piqa": EVAL / "piqa_valid.jsonl",
    "hellaswag": EVAL / "hellaswag_val.jsonl",
    "winogrande": EVAL / "winogrande_dev.jsonl",
}
EVAL_TEXTS = {"wikitext2": EVAL / "wikitext2_test.txt"}
DATA_FILES = ("gsm8k_train.json", "gpteacher_toolformer.json", "gpteacher_roleplay.json", "gpteacher_codegen.json")


def read_file(path: Path) -> list[dict[str, str]]:
    """The Alpaca records of one file, with the file's stem as ``family``.

    The answer field is ``output``, or ``response`` in gpteacher_codegen.json.
    """
    return [
        {
            "instruction": record["instruction"],
            "input": record.get("input", ""),
            "output": record.get("output", record.get("response", "")),
            "family": path.name.split(".")[0],
        }
        for record in json.loads(path.read_text(encoding="utf-8"))
    ]


def read_records(data_dir: Path) -> list[dict[str, str]]:
    """Every record of the four files in order (see :func:`read_file`)."""
    return [record for name in DATA_FILES for record in read_file(data_dir / name)]


def median_time(function: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``function``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
