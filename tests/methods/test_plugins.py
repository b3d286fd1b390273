"""A third-party selection method, installed by pip as a user would, recovers and is compared end to end.

The example package (``examples/shortest``) is installed into a folder of its own on PYTHONPATH, so that the
rest of the suite keeps seeing the product's methods only; ``paser`` runs as a subprocess, as a user runs it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import paser_cli
import pytest

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("plugin-site")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
         str(site), str(REPO / "examples" / "shortest")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    return site


def plugin_env(site: Path, **settings: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, "DAGSTER_HOME": "", **settings}


def test_the_installed_plugin_is_listed_with_its_package(plugin_site: Path, tmp_path: Path) -> None:
    listed = paser_cli.run_paser(["methods"], plugin_env(plugin_site), tmp_path)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "shortest  [paser-shortest 0.1.0 (entry point shortest)]  (needs scores)" in listed.stdout
    assert "paser  [paser-assets]" in listed.stdout
    alone = paser_cli.run_paser(["methods"], {**os.environ}, tmp_path)
    assert "shortest" not in alone.stdout  # not installed in the project's own environment


def test_the_plugin_recovers_is_evaluated_and_compared(plugin_site: Path, tmp_path: Path, tiny_llama_dir: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"The {w} sat on the mat and read the report." for w in ["cat", "dog"] * 40))
    database = tmp_path / "paser.duckdb"
    env = plugin_env(
        plugin_site,
        PASER_DB=str(database),
        PASER_DEMO_SIZE="64",
        PASER_ORIGINAL_MODEL=str(tiny_llama_dir),
        PASER_PRUNE_METHOD="magnitude",
        PASER_MODEL_CACHE=str(tmp_path / "models"),
        PASER_RECOVERY="1",
        PASER_RECOVERY_METHODS="shortest,random",
        PASER_LORA_EPOCHS="1",
        PASER_EVAL_TEXT=f"tiny={text}",
        PASER_EVAL_WINDOW="16",
        PASER_EVAL_MAX_TOKENS="128",
    )
    run = paser_cli.run_paser(["materialize"], env, tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    with duckdb.connect(str(database), read_only=True) as conn:
        conn.execute("USE paser.paser")
        methods = {m for (m,) in conn.execute("SELECT DISTINCT method FROM recovery_comparison").fetchall()}
        assert methods == {"original", "pruned", "shortest", "random"}
        trained = dict(conn.execute("SELECT method, train_samples FROM recovered_adapters").fetchall())
        budget = conn.execute("SELECT sum(budget) FROM capability_degradation").fetchone()[0]
        assert trained == {"shortest": budget, "random": budget}
        # The plugin's rule, applied: no selectable row has a shorter response than the longest it chose.
        chosen, rest = conn.execute(
            """SELECT max(d.response_tokens) FILTER (WHERE b.sample_id IS NOT NULL),
                      min(d.response_tokens) FILTER (WHERE b.sample_id IS NULL)
            FROM degradation_scores d
            LEFT JOIN (SELECT sample_id FROM baseline_selections WHERE method = 'shortest') b USING (sample_id)
            WHERE d.sample_id NOT IN (SELECT sample_id FROM holdout_split)"""
        ).fetchone()
        assert chosen <= rest
        ratio = conn.execute(
            "SELECT recovery_ratio FROM recovery_comparison WHERE method = 'shortest' AND metric = 'heldout_nll'"
        ).fetchone()[0]
        assert not math.isnan(ratio)  # the pruned and original models differ on the held-out rows
