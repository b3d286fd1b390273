"""Crash safety, for real: `paser materialize` in a subprocess, killed with SIGKILL during scoring, inside a
table write and between the files of the selection export, then run again. Every table the killed run leaves
behind is complete (equal to the uninterrupted run's, or absent, or its previous content), the export folder
holds one run's files, and the rerun ends with exactly the uninterrupted run's tables.

The kill inside a table write uses ``tests/fault_injection.py``, which runs the CLI with that table's write
paused inside its transaction. All runs use one model cache folder, so the pruned checkpoint's path
(``pruned_model.path``) is the same
in every database and every column can be compared. The folder is emptied before each scenario: the uninterrupted
run started cold, and a warm cache changes the floats (the original's cached float16 states give scores that
differ from a cold run's in the last digits), so each scenario starts cold too.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from fault_injection import announcement, export_announcement
from paser_cli import PASER, run_paser

from paser_assets.report import REPORT_NAME

pytestmark = pytest.mark.system

DEMO_SIZE = "300"  # 282 distinct samples; scoring them takes ~6 s here, long enough to kill it midway
RUN_TIMEOUT_S = 600
FAULT_INJECTION = Path(__file__).with_name("fault_injection.py")


def paser_env(db: Path, models: Path, tiny_llama_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a run: the caller's, minus any PASER_* / DAGSTER_HOME, plus this test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASER_") and k != "DAGSTER_HOME"}
    env.update(
        PASER_DB=str(db),
        PASER_DEMO_SIZE=DEMO_SIZE,
        PASER_ORIGINAL_MODEL=str(tiny_llama_dir),
        PASER_PRUNE_METHOD="magnitude",
        PASER_MODEL_CACHE=str(models),
        PASER_EXPORT_DIR=str(db.parent / "export"),
        PASER_SCORING_MAX_BATCH="4",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra)
    return env


def run_to_completion(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return run_paser(["materialize"], env, Path(env["PASER_DB"]).parent, RUN_TIMEOUT_S)


class KillableRun:
    """`paser materialize` in a subprocess whose stderr (Dagster's log) is read line by line as it comes;
    with ``pause_in``, the run pauses inside the write of that table (see tests/fault_injection.py)."""

    def __init__(self, env: dict[str, str], pause_in: str | None = None) -> None:
        cwd = Path(env["PASER_DB"]).parent
        self.stdout = open(cwd / "killed-run.stdout", "w")  # closed in kill()
        command = [*PASER] if pause_in is None else [sys.executable, str(FAULT_INJECTION), pause_in]
        self.proc = subprocess.Popen(
            [*command, "materialize"],
            env=env,
            cwd=cwd,
            stdout=self.stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 300) -> re.Match[str]:
        """Block until ``count`` stderr lines have matched ``pattern``; return the last match."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.kill()
                pytest.fail(f"no {pattern!r} within {timeout} s; stderr tail:\n{''.join(self.lines[-30:])}")
            if line is None:
                self.kill()
                pytest.fail(f"the run ended before {pattern!r}; stderr tail:\n{''.join(self.lines[-30:])}")
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                seen += 1
                if seen >= count:
                    return match

    def kill(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait(timeout=60)
        self.stdout.close()
        return code


def dump(db: Path) -> dict[str, object]:
    """Every table and view of schema paser, row by row in a canonical order; score_cache as a set."""
    with duckdb.connect(str(db), read_only=True) as conn:
        catalog = conn.execute("SELECT current_database()").fetchone()[0]
        names = [
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
                "AND table_schema = 'paser' ORDER BY table_name"
            ).fetchall()
        ]
        tables: dict[str, object] = {}
        for name in names:
            rows = conn.execute(f'SELECT * FROM "{catalog}"."paser"."{name}" ORDER BY ALL').fetchall()
            tables[name] = set(rows) if name == "score_cache" else rows
    return tables


def assert_complete_or_absent(after_kill: dict[str, object], reference: dict[str, object]) -> None:
    """Each table left by a killed run equals the uninterrupted run's; score_cache holds a subset of its rows."""
    for name, rows in after_kill.items():
        if name == "score_cache":
            assert rows <= reference[name], "score_cache holds rows the uninterrupted run does not have"
            assert all(None not in row for row in rows), "score_cache holds a partial row"
        else:
            assert rows == reference[name], f"{name} differs from the uninterrupted run after the kill"


def score_count(db: Path) -> int:
    with duckdb.connect(str(db), read_only=True) as conn:
        return conn.execute(f'SELECT count(*) FROM "{db.stem}"."paser"."score_cache"').fetchone()[0]


@pytest.fixture(scope="module")
def models_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models") / "cache"


def cold(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, models_folder: Path, tiny_llama_dir: Path) -> tuple[Path, dict]:
    """An uninterrupted run from a cold model cache: its database and its tables."""
    models = cold(models_folder)
    db = tmp_path_factory.mktemp("reference") / "paser.duckdb"
    result = run_to_completion(paser_env(db, models, tiny_llama_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "0 scores reused, 282 samples to score" in result.stderr
    tables = dump(db)
    assert len(tables["recovery_pool"]) == 282
    assert len(tables["degradation_scores"]) == 282 and len(tables["score_cache"]) == 282
    assert tables["selection"] and tables["selected_instructions"]
    return db, tables


@pytest.fixture
def models(reference: tuple[Path, dict], models_folder: Path) -> Path:
    """The reference run's model cache folder, emptied again."""
    return cold(models_folder)


def test_killed_during_scoring_resumes_from_committed_scores(
    tmp_path: Path, models: Path, tiny_llama_dir: Path, reference: tuple[Path, dict]
) -> None:
    _, expected = reference
    db = tmp_path / "paser.duckdb"
    # Commit scores after every batch of 4 (default: every 30 s), and kill after the second commit: some
    # scores are committed, ~270 are still to come (each batch also pays for its commit, so that is seconds).
    run = KillableRun(paser_env(db, models, tiny_llama_dir, PASER_SCORE_COMMIT_S="0"))
    run.wait_for(r"0 scores reused, 282 samples to score")
    committed = run.wait_for(r"(\d+)/282 new scores committed", count=2)
    assert run.kill() == -signal.SIGKILL
    assert 0 < int(committed.group(1)) < 282

    after_kill = dump(db)
    assert "degradation_scores" not in after_kill and "selection" not in after_kill
    assert_complete_or_absent(after_kill, expected)
    kept = len(after_kill["score_cache"])
    print(f"killed after {committed.group(0)!r}: score_cache kept {kept}/282 scores")
    assert int(committed.group(1)) <= kept < 282, "the kill did not land in the middle of scoring"
    assert score_count(db) == kept, "score_cache holds duplicates"

    result = run_to_completion(paser_env(db, models, tiny_llama_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{kept} scores reused, {282 - kept} samples to score" in result.stderr
    final = dump(db)
    assert final == expected
    assert score_count(db) == 282
    with duckdb.connect(str(db), read_only=True) as conn:  # one row per pool sample and variant, no more
        counts = conn.execute(
            "SELECT count(*), count(DISTINCT (variant, sample_id)), "
            "count(*) FILTER (WHERE sample_id NOT IN (SELECT sample_id FROM paser.paser.recovery_pool)) "
            "FROM paser.paser.degradation_scores"
        ).fetchone()
    assert counts == (282, 282, 0)


def test_killed_inside_a_new_tables_write_leaves_no_table(
    tmp_path: Path, models: Path, tiny_llama_dir: Path, reference: tuple[Path, dict]
) -> None:
    _, expected = reference
    db = tmp_path / "paser.duckdb"
    run = KillableRun(paser_env(db, models, tiny_llama_dir), pause_in="degradation_scores")
    run.wait_for(re.escape(announcement("degradation_scores")))
    assert run.kill() == -signal.SIGKILL

    after_kill = dump(db)
    assert "degradation_scores" not in after_kill, "a killed write left degradation_scores behind"
    assert {"capability_degradation", "selection", "concept_graph"}.isdisjoint(after_kill)
    assert after_kill["score_cache"] == expected["score_cache"]  # committed before the table write
    assert_complete_or_absent(after_kill, expected)

    result = run_to_completion(paser_env(db, models, tiny_llama_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "282 scores reused, 0 samples to score" in result.stderr
    assert dump(db) == expected


@pytest.mark.parametrize("table", ["recovery_pool", "selection"])
def test_killed_while_replacing_a_table_keeps_its_old_content(
    table: str, tmp_path: Path, models: Path, tiny_llama_dir: Path, reference: tuple[Path, dict]
) -> None:
    """recovery_pool is replaced whole (CREATE OR REPLACE), selection per variant (DELETE + INSERT)."""
    reference_db, expected = reference
    db = tmp_path / "paser.duckdb"
    shutil.copy(reference_db, db)  # a database after a complete run; the rerun rewrites every table
    run = KillableRun(paser_env(db, models, tiny_llama_dir), pause_in=table)
    run.wait_for(rf"{re.escape(announcement(table))}$")
    assert run.kill() == -signal.SIGKILL
    # The table being written has its old rows; the ones rewritten before it are committed and equal.
    assert dump(db) == expected


VARIANT = "magnitude-50"  # the variant of paser_env's pruning settings
EXPORT_FILES = ("selection.json", "selection.jsonl", "selection.parquet")
PUBLISHED = (*EXPORT_FILES, REPORT_NAME)  # the report is written beside the three files once they are in place


ALPACA = ["instruction", "input", "output"]


def export_records(folder: Path) -> dict[str, list[dict]]:
    """The records of each file of an export, read as `datasets` users would."""
    return {
        "selection.json": json.loads((folder / "selection.json").read_text(encoding="utf-8")),
        "selection.jsonl": [json.loads(line) for line in (folder / "selection.jsonl").read_text().splitlines()],
        "selection.parquet": pd.read_parquet(folder / "selection.parquet")[ALPACA].to_dict(orient="records"),
    }


def test_killed_between_the_export_files_keeps_the_previous_set(
    tmp_path: Path, models: Path, tiny_llama_dir: Path, reference: tuple[Path, dict]
) -> None:
    """A run with another budget is killed once the new selection.json is written: the export folder still
    holds the previous run's three files, byte for byte; the next run publishes the new three together."""
    reference_db, _ = reference
    db = tmp_path / "paser.duckdb"
    shutil.copy(reference_db, db)
    shutil.copytree(reference_db.parent / "export", tmp_path / "export")
    folder = tmp_path / "export" / VARIANT
    previous = {name: (folder / name).read_bytes() for name in PUBLISHED}
    assert sorted(p.name for p in folder.iterdir()) == sorted(PUBLISHED)

    env = paser_env(db, models, tiny_llama_dir, PASER_BUDGET="0.1")  # the reference ran with the default 0.2
    run = KillableRun(env, pause_in="export:json")
    run.wait_for(re.escape(export_announcement("json")))
    assert run.kill() == -signal.SIGKILL

    assert {name: (folder / name).read_bytes() for name in PUBLISHED} == previous
    assert sorted(p.name for p in folder.iterdir()) == sorted(PUBLISHED)
    [leftover] = [p for p in folder.parent.iterdir() if p.name != VARIANT]
    assert leftover.name.startswith(f".{VARIANT}.") and [p.name for p in leftover.iterdir()] == ["selection.json"]

    result = run_to_completion(env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name for p in folder.parent.iterdir()] == [VARIANT]  # the killed run's leftover is gone
    published = export_records(folder)
    with duckdb.connect(str(db), read_only=True) as conn:
        selected = conn.execute(
            "SELECT instruction, input, output FROM paser.paser.selected_instructions WHERE variant = ? "
            "ORDER BY cluster, rank",
            [VARIANT],
        ).df()
    assert published["selection.json"] == selected.to_dict(orient="records")
    assert published["selection.jsonl"] == published["selection.json"] == published["selection.parquet"]
    assert len(published["selection.json"]) < len(json.loads(previous["selection.json"]))  # the new budget's
