"""bench/gpu_check.py, the offline GPU check, run on the CPU with its tiny shapes so that it cannot rot.

The script runs as on the GPU machine: a fresh interpreter, the repository on PYTHONPATH, no install. Its JSON
must be complete and finite, and the modules it imported must not include Dagster, DuckDB or the other
packages that machine lacks.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"
SHAPES = ("smollm2-135m", "llama-1b", "llama-8b")


def run_check(arguments: list[str], out: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OUT": str(out), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *arguments],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def test_tiny_check_on_the_cpu(tmp_path: Path) -> None:
    done = run_check(
        ["--device", "cpu", "--tiny"], tmp_path, timeout=300
    )  # about 10 s on a quiet machine; CI boxes shared with other jobs are slower
    assert done.returncode == 0, done.stderr[-4000:]
    line = done.stdout.strip().splitlines()[-1]
    result = json.loads(line)
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == result
    assert result["ok"] and result["errors"] == []
    assert result["heavy_modules_loaded"] == []
    assert result["device"] == "cpu" and result["tiny"] is True
    assert finite(result["peak_tflops"]["bfloat16"]) and finite(result["peak_tflops"]["float32"])
    assert list(result["shapes"]) == list(SHAPES)
    for name, shape in result["shapes"].items():
        assert shape["model"]["method"] == "wanda"
        assert abs(shape["model"]["sparsity"] - 0.5) < 0.01, name
        for precision in ("bfloat16", "float32"):
            figures = shape["scoring"][precision]
            assert figures["precision"] == precision
            assert figures["rows"] > 0 and figures["batches"] >= 1 and figures["oom_retries"] == 0
            for key in ("tokens_per_s", "floor_tokens_per_s", "ratio_to_floor", "tflops", "share_of_bf16_peak"):
                assert finite(figures[key]) and figures[key] > 0, (name, precision, key, figures[key])
        assert shape["scoring"]["float32"]["head_precision"] == "float32"
        fidelity = shape["fidelity"]
        assert fidelity["rows"] == shape["scoring"]["float32"]["rows"]
        assert fidelity["jsd_mean_fp32"] > 0  # the pruned partner differs from the original
        assert 0 <= fidelity["jsd_mean_abs_diff"] <= fidelity["jsd_max_abs_diff"] < 1e-3
        assert fidelity["jsd_spearman"] > 0.9
        assert finite(shape["bf16_speedup"])
    # The 16,384-token vocabularies take the bfloat16 heads, as the real 1B and 8B shapes do.
    assert result["shapes"]["llama-8b"]["scoring"]["bfloat16"]["head_precision"] == "bfloat16"
    assert "lora" not in result["shapes"]["smollm2-135m"]
    for name in ("llama-1b", "llama-8b"):
        lora = result["shapes"][name]["lora"]
        assert lora["gradient_checkpointing"] is True and lora["precision"] == "bfloat16"
        assert lora["steps"] == 2 and lora["trainable_parameters"] > 0
        for key in ("step_s", "tokens_per_s", "first_loss", "last_loss"):
            assert finite(lora[key]) and lora[key] > 0, (name, key)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where torch sees no GPU")
def test_no_gpu_stops_with_one_line(tmp_path: Path) -> None:
    done = run_check(["--device", "cuda"], tmp_path, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: FAILED") and "sees no GPU" in lines[0]
    assert done.stdout == "" and not (tmp_path / "gpu_check.json").exists()
