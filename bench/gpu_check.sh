#!/usr/bin/env bash
# The offline GPU check, bench/gpu_check.py, with the machine's own Python as it is: nothing is installed or
# downloaded, the repository is put on PYTHONPATH. From anywhere:
#   bash bench/gpu_check.sh                     # = cd <repo> && PYTHONPATH=. python3 bench/gpu_check.py --device cuda
#   bash bench/gpu_check.sh --shapes llama-8b   # further arguments go to the script (see --help, docs/gpu.md)
# PYTHON picks the interpreter (default python3), GPU_CHECK_DEVICE the device (default cuda; cpu with --tiny is
# what the CI test runs). One JSON line on stdout, also in $OUT/gpu_check.json when OUT is set.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec "${PYTHON:-python3}" bench/gpu_check.py --device "${GPU_CHECK_DEVICE:-cuda}" "$@"
