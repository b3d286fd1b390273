"""lm-evaluation-harness as an evaluation backend: the tasks of PASER_EVAL_TASKS that the harness runs.

A bare name in PASER_EVAL_TASKS (``boolq``, ``arc_challenge``, ``mmlu``, ``gsm8k``) is one of the harness's own
tasks; ``name=path.yaml`` is a harness task configuration (it may read local files: ``dataset_path: json`` with
``dataset_kwargs: {data_files: {test: path.jsonl}}``), found through a ``TaskManager`` that includes the YAML's
folder. Each runs through ``lm_eval.simple_evaluate`` on the model already in memory (the harness's ``HFLM``
wraps the instance: a peft model with its adapter too), zero-shot unless the task's configuration says
otherwise, on the first PASER_EVAL_TASK_ITEMS documents (the harness's ``limit``), with its random seeds fixed
and no request cache. Its metrics and their standard errors become :class:`HarnessResult` rows, with the
harness's version.

lm-evaluation-harness is an optional extra (``pip install 'paser-assets[lm-eval]'``): it is imported here, only
when a harness task is named. A task whose data cannot be loaded (a hub dataset without network, a missing
local file) or that the harness does not know is a one-line ValueError naming the task. A YAML's ``!function``
entries run Python from its folder, as the harness runs them: name only configurations you trust.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paser_assets.settings.stages import TaskEntry

EXTRA = "pip install 'paser-assets[lm-eval]'"
BATCH_SIZE = 8  # requests per forward pass of the harness's HFLM
# Metrics aggregated by a mean (acc, acc_norm, exact_match) have a closed-form standard error; the others
# (f1, matthews_corrcoef, ...) are bootstrapped, with seeded draws, this many times.
BOOTSTRAP_ITERS = 1000
SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}


@dataclass(frozen=True)
class HarnessResult:
    """One metric of one task (or group, or a group's subtask) as the harness reports it."""

    entry: str  # the PASER_EVAL_TASKS name it came from
    task: str  # the entry's name for the task itself; the harness's name for a group's subtasks
    metric: str  # acc, acc_norm, exact_match, ...; 'metric,filter' for a filter other than 'none'
    value: float
    stderr: float | None
    items: int | None  # documents scored (None for a group's aggregate)
    version: str  # lm_eval's version


def _lm_eval(task: str) -> Any:
    try:
        import lm_eval
    except ImportError:
        raise ValueError(f"PASER_EVAL_TASKS names the lm-evaluation-harness task {task!r}: {EXTRA}") from None
    return lm_eval


def harness_version() -> str:
    """The installed lm-evaluation-harness's version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return str(getattr(_lm_eval("?"), "__version__", "unknown"))


def read_config(path: Path) -> Any:
    """A harness configuration's keys, its tags (``!function``) left unresolved (None)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    with path.open(encoding="utf-8") as handle:
        return yaml.load(handle, Loader=Loader)  # a SafeLoader that drops unknown tags


def harness_task_name(entry: TaskEntry) -> str:
    """The name the harness knows ``entry``'s task by: the bare name, or the YAML's ``task:`` (or ``group:``)."""
    if entry.kind == "harness":
        return entry.name
    try:
        config = read_config(Path(entry.path))
    except Exception as error:
        raise ValueError(f"PASER_EVAL_TASKS {entry.name}: {entry.path} is not YAML ({_one_line(error)})") from None
    for key in ("task", "group"):
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, str) and value:
            return value
    raise ValueError(f"PASER_EVAL_TASKS {entry.name}: {entry.path} names no task (a 'task:' or 'group:' name)")


@functools.lru_cache(maxsize=8)
def task_manager(folders: tuple[str, ...], include_defaults: bool) -> Any:
    """A harness TaskManager over the YAML tasks' folders, with the harness's own tasks when one is named (their
    index takes some seconds to build: it is built once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(folders) or None, include_defaults=include_defaults)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def load_tasks(manager: Any, entry: str, name: str) -> list[Any]:
    """The harness's task objects for ``name``, their datasets loaded; a ValueError naming the entry when the
    harness does not know the task or cannot load its data."""
    load = getattr(manager, "load", None)
    if load is None:  # a 0.4 release before TaskManager.load: simple_evaluate loads the task by its name
        return [name]
    try:
        loaded = load([name])
    except KeyError:
        raise ValueError(
            f"PASER_EVAL_TASKS {entry}: lm-evaluation-harness {harness_version()} has no task {name!r}"
        ) from None
    except Exception as error:  # datasets' and the hub's errors: no network, a missing file, a gated dataset
        raise ValueError(
            f"PASER_EVAL_TASKS {entry}: the lm-evaluation-harness task {name!r} could not be loaded "
            f"({type(error).__name__}: {_one_line(error)})"
        ) from None
    groups = loaded.get("groups") or {}
    return [groups[name]] if name in groups else list(loaded["tasks"].values())


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def result_rows(entry: str, name: str, output: Mapping[str, Any], version: str) -> list[HarnessResult]:
    """``simple_evaluate``'s results as rows: every numeric metric of every task (and group) it reports."""
    counts = output.get("n-samples") or {}
    rows: list[HarnessResult] = []
    for key, metrics in sorted(output.get("results", {}).items()):
        items = (counts.get(key) or {}).get("effective")
        for label, raw in metrics.items():
            metric, separator, kind = label.partition(",")
            value = _number(raw)
            if not separator or metric.endswith("_stderr") or value is None:
                continue  # alias, name, sample_len; the standard errors go beside their metrics
            rows.append(
                HarnessResult(
                    entry=entry,
                    task=entry if key == name else key,
                    metric=metric if kind == "none" else label,
                    value=value,
                    stderr=_number(metrics.get(f"{metric}_stderr,{kind}")),
                    items=int(items) if items is not None else None,
                    version=version,
                )
            )
    return rows


def run_harness(
    model: Any,
    tokenizer: Any,
    entries: Mapping[str, TaskEntry],
    limit: int,
    log: Callable[[str], None],
    batch_size: int = BATCH_SIZE,
) -> list[HarnessResult]:
    """Every harness task of ``entries`` on ``model`` (in memory, as it is placed), ``limit`` documents each."""
    if not entries:
        return []
    lm_eval = _lm_eval(next(iter(entries.values())).label)
    from lm_eval.models.huggingface import HFLM

    names = {entry: harness_task_name(task) for entry, task in entries.items()}
    folders = tuple(sorted({str(Path(t.path).resolve().parent) for t in entries.values() if t.kind != "harness"}))
    manager = task_manager(folders, any(t.kind == "harness" for t in entries.values()))
    version = harness_version()
    harness_model = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    rows: list[HarnessResult] = []
    for entry, name in names.items():
        tasks: Sequence[Any] = load_tasks(manager, entry, name)
        try:
            output = lm_eval.simple_evaluate(
                model=harness_model,
                tasks=list(tasks),
                task_manager=manager,
                limit=limit,
                bootstrap_iters=BOOTSTRAP_ITERS,
                log_samples=False,
                cache_requests=False,
                **SEEDS,
            )
        except (ConnectionError, FileNotFoundError) as error:  # data loaded late (a release without load())
            raise ValueError(
                f"PASER_EVAL_TASKS {entry}: the lm-evaluation-harness task {name!r} could not be loaded "
                f"({type(error).__name__}: {_one_line(error)})"
            ) from None
        found = result_rows(entry, name, output or {}, version)
        if not found:
            raise ValueError(f"PASER_EVAL_TASKS {entry}: the lm-evaluation-harness task {name!r} reported no metric")
        rows.extend(found)
        summary = ", ".join(f"{r.metric} {r.value:.4f}" for r in found if r.task == entry)
        log(f"{entry} (lm-evaluation-harness {version}): {summary}")
    return rows
