"""Where models run and in which precision: the PASER_DEVICE and PASER_PRECISION rules.

``auto`` device: the GPU when torch sees one, else the CPU. ``cuda`` without an index takes
``cuda:$LOCAL_RANK`` (modulo the visible GPUs) when ``LOCAL_RANK`` is set, else ``cuda:0``; so a
multi-GPU executor gives each worker its own GPU either by starting it with its own
``CUDA_VISIBLE_DEVICES`` (then its GPU is ``cuda:0``; dask-cuda does this) or with ``LOCAL_RANK``
(torchrun and accelerate set it).

``auto`` precision: bfloat16 on a GPU that has it (float16 on an older GPU) and on a CPU with
AVX512-BF16 or AMX; float32 elsewhere. Models are then held in that dtype (measured on a 2-core
AVX512-BF16 CPU shared with other jobs, SmolLM2-135M decoder, 8 x 256 random tokens: bfloat16 weights
1.98x faster than float32, ``torch.autocast`` over float32 weights 1.82x, as autocast casts every weight
on every call; on a batch of 16 rows of ../shared/data, 2,426 tokens, bfloat16 weights 4.0x).
Training keeps float32 adapter weights and runs under autocast; see ``models.training``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

Precision = Literal["float32", "bfloat16", "float16"]
PRECISION_SETTINGS = ("auto", "float32", "bfloat16")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEVICE_SETTING = re.compile(r"auto|cpu|cuda(:\d+)?")
_CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")
CPU = torch.device("cpu")
CPUINFO = Path("/proc/cpuinfo")  # Linux; elsewhere the probe relies on torch


class DeviceError(ValueError):
    """A device setting that is malformed or names a GPU this process cannot see."""


def parse_device(value: str) -> str:
    """The device setting normalised (``auto``, ``cpu``, ``cuda``, ``cuda:N``); anything else raises."""
    text = value.strip().lower()
    if not _DEVICE_SETTING.fullmatch(text):
        raise DeviceError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {value!r}")
    return text


def worker_gpu_index(count: int, environ: Mapping[str, str] | None = None) -> int:
    """The GPU of this worker among ``count`` visible ones: ``LOCAL_RANK`` modulo ``count``, else 0."""
    environ = os.environ if environ is None else environ
    rank = environ.get("LOCAL_RANK", "").strip()
    return int(rank) % count if rank.isdigit() else 0


def resolve_device(setting: str = "auto", environ: Mapping[str, str] | None = None) -> torch.device:
    """The torch device a setting names on this machine (see the module docstring)."""
    setting = parse_device(setting)
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(f"PASER_DEVICE={setting} but torch sees no GPU (CUDA_VISIBLE_DEVICES, driver, CPU build?)")
    count = torch.cuda.device_count()
    if setting in ("auto", "cuda"):
        return torch.device("cuda", worker_gpu_index(count, environ))
    index = int(setting.split(":")[1])
    if index >= count:
        raise DeviceError(f"PASER_DEVICE={setting} but only {count} GPU(s) are visible")
    return torch.device("cuda", index)


def _cpuinfo_flags() -> set[str]:
    try:
        text = CPUINFO.read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


@functools.cache
def cpu_has_fast_bfloat16() -> bool:
    """True on a CPU with AVX512-BF16 or AMX, where bfloat16 matrix products run 2-4x faster than float32.

    Asks torch first (private probes in PyTorch 2.x), then /proc/cpuinfo; False when neither can tell.
    """
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:
            continue
    return any(flag in _cpuinfo_flags() for flag in _CPU_BFLOAT16_FLAGS)


def _gpu_has_bfloat16(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] >= 8  # Ampere and later


def resolve_precision(setting: str, device: torch.device | str) -> Precision:
    """What a precision setting computes in on ``device``; 'auto' as in the module docstring."""
    if setting in ("float32", "bfloat16"):
        return setting  # type: ignore[return-value]
    if setting != "auto":
        raise ValueError(f"precision must be one of {', '.join(PRECISION_SETTINGS)}, not {setting!r}")
    device = torch.device(device)
    if device.type == "cuda":
        return "bfloat16" if _gpu_has_bfloat16(device) else "float16"
    return "bfloat16" if device.type == "cpu" and cpu_has_fast_bfloat16() else "float32"


def precision_key(setting: str, device_setting: str = "auto") -> str:
    """The precision setting as it bears on stored scores: 'auto' with what it resolves to on this machine."""
    if setting != "auto":
        return setting
    try:
        device = resolve_device(device_setting)
    except DeviceError:
        return f"auto:{device_setting}-unavailable"  # the run itself will fail with the DeviceError
    return f"auto:{resolve_precision('auto', device)}"


@dataclass(frozen=True)
class Placement:
    """Where a model runs and the dtype its weights are held in."""

    device: torch.device = CPU
    precision: Precision = "float32"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]


def place_model(model: Any, placement: Placement) -> Any:
    """``model`` moved to the placement's device with its floating-point weights in its dtype (in place)."""
    return model.to(device=placement.device, dtype=placement.dtype)


def model_precision(model: Any) -> Precision:
    """The dtype a model's weights are held in, as a precision name."""
    dtype = next(model.parameters()).dtype
    return next((name for name, known in DTYPES.items() if known == dtype), "float32")  # type: ignore[return-value]


@contextlib.contextmanager
def autocast(device: torch.device | str, precision: str) -> Iterator[None]:
    """torch.autocast to ``precision`` on ``device``; nothing at all for float32, so that path is unchanged."""
    if precision == "float32":
        yield
        return
    with torch.autocast(torch.device(device).type, dtype=DTYPES[precision]):
        yield
