"""The CLI's answer to faults of the user's environment and data: one line, and the documented exit code.

- A full disk under the Dagster instance (beside ``PASER_DB``): the run that meets it and the next one each say
  "no space left" in one line and exit 2, with no traceback, and the DuckDB file is no larger than after a
  successful run. It needs a small tmpfs, so it runs as root only (it is skipped elsewhere).
- The exit code rule: 2 when the run stopped on something the user can fix (here a dataset of the wrong shape,
  reported by the step that reads it), as for a refused setting.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from paser_cli import run_paser

pytestmark = pytest.mark.system


def _env(root: Path, original: Path, database: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PASER_") and k != "DAGSTER_HOME"}
    env.update(
        PASER_DB=str(database),
        PASER_ORIGINAL_MODEL=str(original),
        PASER_PRUNE_METHOD="magnitude",
        PASER_DEMO_SIZE="48",
        PASER_MODEL_CACHE=str(root / "models"),
        PASER_EXPORT_DIR=str(root / "export"),
    )
    return env


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs: room for the instance's first files and part of a run, not for a whole run."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3000k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_under_the_instance_is_one_line_and_exit_2_in_this_run_and_the_next(
    small_disk: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    full = run_paser(["materialize"], _env(tmp_path, tiny_llama_dir, small_disk / "p.duckdb"), tmp_path)
    again = run_paser(["materialize"], _env(tmp_path, tiny_llama_dir, small_disk / "p.duckdb"), tmp_path)
    for result in (full, again):
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("paser: no space left on") and str(small_disk / ".dagster_home") in last, last

    roomy = tmp_path / "roomy"
    roomy.mkdir()
    succeeded = run_paser(["materialize"], _env(roomy, tiny_llama_dir, roomy / "p.duckdb"), roomy)
    assert succeeded.returncode == 0, succeeded.stderr[-3000:]
    assert (small_disk / "p.duckdb").stat().st_size <= (roomy / "p.duckdb").stat().st_size


def test_a_dataset_of_the_wrong_shape_exits_2_like_a_refused_setting(tiny_llama_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "pool.json"
    dataset.write_text(json.dumps({"instruction": "an object, not a list of records"}))
    env = _env(tmp_path, tiny_llama_dir, tmp_path / "p.duckdb")
    shape = run_paser(["materialize", "--dataset", str(dataset)], env, tmp_path)
    setting = run_paser(["materialize", "--budget", "-3"], env, tmp_path)
    assert shape.returncode == setting.returncode == 2, (shape.stderr[-2000:], setting.stderr[-2000:])
    assert "FAILED recovery_pool" in shape.stderr and "Traceback" not in shape.stderr
