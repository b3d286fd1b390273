"""Pruned checkpoints as other tools write them: compressed-tensors folders and LLM-Pruner pickles.

- **compressed-tensors** (llm-compressor, and SparseML before it): a folder whose ``config.json`` carries a
  ``quantization_config`` (older: ``compression_config``) with ``quant_method: compressed-tensors``. It is
  decompressed once into a plain safetensors folder in the model cache, keyed by its content hash, as a GGUF
  file is. Quantized formats (int/float/pack-quantized) are dequantized by transformers' own
  ``CompressedTensorsConfig(dequantize=True)``; the legacy sparse formats (``sparse-bitmask``,
  ``sparse-24-bitmask``), which compressed-tensors dropped in 0.15 and which transformers 5 loads as *randomly
  initialised* weights with only a warning, are decoded here with the package's own ``unpack_bitmasks``.
- **LLM-Pruner**: ``torch.save({'model': model, 'tokenizer': tokenizer}, path)``, a whole pickled model whose
  layers have different widths. Read only with ``allow_pickle`` (``torch.load(weights_only=False)`` runs
  whatever code the file carries).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from paser_assets.models.checkpoints import (
    CheckpointError,
    LoadOptions,
    ModelReference,
    content_hash,
    publish_folder,
    staging_folder,
)

COMPRESSED_METHOD = "compressed-tensors"
COMPRESSED_INSTALL = "pip install 'paser-assets[compressed]'"
LEGACY_SPARSE_FORMATS = ("sparse-bitmask", "sparse-24-bitmask")
CONVERSION_RECORD = "paser_decompressed.json"
_CONFIG_KEYS = ("quantization_config", "compression_config")
# Files of a checkpoint folder that the decompressed copy does not take over: weights and their index (written
# anew) and the config (written without its compression section).
_REWRITTEN = re.compile(r".*\.safetensors$|.*\.safetensors\.index\.json$|^config\.json$")


# --- compressed-tensors ----------------------------------------------------------------------------------


def compression_config(folder: str | Path) -> dict | None:
    """The compressed-tensors section of a folder's ``config.json``; None for any other checkpoint."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for key in _CONFIG_KEYS:
        section = config.get(key) if isinstance(config, dict) else None
        if isinstance(section, dict) and section.get("quant_method") == COMPRESSED_METHOD:
            return section
    return None


def compression_format(section: dict) -> str:
    """A readable name of what a compressed-tensors section holds, e.g. ``sparse-bitmask`` or ``pack-quantized``."""
    sparse = (section.get("sparsity_config") or {}).get("format")
    quantized = section.get("format") if section.get("config_groups") else None
    return "+".join(part for part in (sparse, quantized) if part) or "dense"


def compressed_tensors_installed() -> bool:
    return importlib.util.find_spec("compressed_tensors") is not None


def decompressed_folder(folder: str | Path, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "compressed" / content_hash(folder)


def convert_compressed(folder: str | Path, cache_dir: str | Path, options: LoadOptions | None = None) -> Path:
    """Decompress a compressed-tensors checkpoint into a plain safetensors folder once; later calls reuse it.
    The folder's ``paser_decompressed.json`` records the format and the measured sparsity."""
    folder = Path(folder)
    section = compression_config(folder)
    if section is None:
        raise CheckpointError(f"{folder}: config.json carries no compressed-tensors config")
    target = decompressed_folder(folder, cache_dir)
    if (target / "config.json").exists():
        return target
    name = compression_format(section)
    if not compressed_tensors_installed():
        raise CheckpointError(
            f"{folder} is a compressed-tensors checkpoint ({name}); reading it needs the compressed-tensors "
            f"package: {COMPRESSED_INSTALL}"
        )
    sparse = (section.get("sparsity_config") or {}).get("format")
    quantized = bool(section.get("config_groups"))
    staging = staging_folder(target)
    try:
        if sparse in LEGACY_SPARSE_FORMATS:
            if quantized:
                raise CheckpointError(
                    f"{folder}: {name} (sparse and quantized at once) is not supported; decompress it with "
                    "compressed-tensors<=0.14 and save it dense, or use its unquantized sparse checkpoint"
                )
            _write_bitmask_decoded(folder, staging)
        elif sparse in (None, "dense"):
            _write_dequantized(folder, staging, options or LoadOptions())
        else:
            raise CheckpointError(f"{folder}: unknown compressed-tensors sparsity format {sparse!r}")
        for file in folder.iterdir():
            if file.is_file() and not file.name.startswith(".") and not _REWRITTEN.match(file.name):
                if not (staging / file.name).exists():
                    shutil.copy2(file, staging / file.name)
        record = {"source": str(folder), "format": name, "sparsity": folder_sparsity(staging)}
        (staging / CONVERSION_RECORD).write_text(json.dumps(record))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_folder(staging, target)
    return target


def _plain_config(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    for key in _CONFIG_KEYS:
        config.pop(key, None)
    return config


def _write_bitmask_decoded(folder: Path, staging: Path) -> None:
    """The legacy bitmask formats: per weight, ``bitmask`` (packed bits of the non-zeros), ``compressed`` (their
    values in row order), ``shape`` (and ``row_offsets``, not needed to decode). Keys are ``<module>.<part>``
    (or ``<module>.weight.<part>``); every other tensor is copied as it is."""
    import torch
    from compressed_tensors.utils import unpack_bitmasks
    from safetensors import safe_open
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    prefixes = [key.removesuffix(".bitmask") for key in tensors if key.endswith(".bitmask")]
    state: dict[str, Any] = {}
    parts = {f"{prefix}.{part}" for prefix in prefixes for part in ("bitmask", "compressed", "shape", "row_offsets")}
    for prefix in prefixes:
        missing = [part for part in ("compressed", "shape") if f"{prefix}.{part}" not in tensors]
        if missing:
            raise CheckpointError(f"{folder}: {prefix} has a bitmask but no {', '.join(missing)}")
        shape = [int(size) for size in tensors[f"{prefix}.shape"].flatten().tolist()]
        values = tensors[f"{prefix}.compressed"]
        dense = torch.zeros(shape, dtype=values.dtype)
        dense[unpack_bitmasks(tensors[f"{prefix}.bitmask"], shape)] = values.flatten()
        state[prefix if prefix.endswith(".weight") else f"{prefix}.weight"] = dense
    state.update({key: value for key, value in tensors.items() if key not in parts})
    save_file({key: value.contiguous() for key, value in state.items()}, str(staging / "model.safetensors"))
    (staging / "config.json").write_text(json.dumps(_plain_config(folder), indent=2, sort_keys=True))


def _write_dequantized(folder: Path, staging: Path, options: LoadOptions) -> None:
    """Dense and quantized formats: transformers dequantizes them; the weights go into a plain model (a model
    that still carries its quantization config would re-quantize on save and in training)."""
    from transformers import AutoConfig, AutoModelForCausalLM, CompressedTensorsConfig

    try:
        with warnings.catch_warnings():  # that the config's own quantization_config is used, with dequantize set
            warnings.filterwarnings("ignore", message=".*already has a `quantization_config`", category=UserWarning)
            loaded = AutoModelForCausalLM.from_pretrained(
                str(folder),
                dtype="auto",
                quantization_config=CompressedTensorsConfig(dequantize=True),
                trust_remote_code=options.trust_remote_code,
            )
    except Exception as error:
        raise CheckpointError(f"cannot decompress the compressed-tensors checkpoint {folder}: {error}") from None
    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=options.trust_remote_code)
    for key in _CONFIG_KEYS:
        if hasattr(config, key):
            delattr(config, key)
    state = loaded.state_dict()
    dtype = next((value.dtype for value in state.values() if value.is_floating_point()), None)
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=options.trust_remote_code)
    plain.load_state_dict(state)
    plain.save_pretrained(staging, safe_serialization=True)


_DECODER_WEIGHT = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.(.+)\.weight$")


def folder_sparsity(folder: str | Path) -> float:
    """Share of exact zeros among the decoder linears' weights (the 2-D weights inside the decoder layers), read
    tensor by tensor from a folder's safetensors files, as ``pruning.measured_sparsity`` counts a loaded model."""
    from safetensors import safe_open

    zeros = total = 0
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                if _DECODER_WEIGHT.search(key) and len(handle.get_slice(key).get_shape()) == 2:
                    tensor = handle.get_tensor(key)
                    zeros += int((tensor == 0).sum())
                    total += tensor.numel()
    return zeros / total if total else 0.0


# --- what a checkpoint is made of ----------------------------------------------------------------------


_MLP_IN = ("up_proj", "gate_proj", "fc1", "c_fc", "w1", "dense_h_to_4h")
_QUERY = ("q_proj", "query", "wq")


def layer_widths(shapes: Iterable[tuple[str, tuple[int, ...]]], head_dim: int | None) -> list[dict[str, int]]:
    """Per decoder layer, from its weights' shapes: ``mlp`` (the MLP's intermediate width), ``q`` (the query
    projection's outputs) and ``heads`` (those over ``head_dim``). LLM-Pruner cuts them differently per layer."""
    layers: dict[int, dict[str, int]] = {}
    for name, shape in shapes:
        match = _DECODER_WEIGHT.search(name)
        if match is None or len(shape) != 2:
            continue
        layer, module = int(match.group(1)), match.group(2).rsplit(".", 1)[-1]
        facts = layers.setdefault(layer, {})
        if module in _MLP_IN and "mlp" not in facts:
            facts["mlp"] = int(shape[0])
        elif module in _QUERY:
            facts["q"] = int(shape[0])
            if head_dim:
                facts["heads"] = int(shape[0]) // head_dim
    return [layers[index] for index in sorted(layers)]


def _head_dim(config: Any) -> int | None:
    get = config.get if isinstance(config, dict) else lambda name, default=None: getattr(config, name, default)
    head_dim, hidden, heads = get("head_dim"), get("hidden_size"), get("num_attention_heads")
    if isinstance(head_dim, int) and head_dim > 0:
        return head_dim
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 else None


def model_facts(model: Any) -> dict[str, Any]:
    """Parameter count and per-layer widths of a loaded model."""
    parameters = sum(parameter.numel() for parameter in model.parameters())  # shared (tied) tensors count once
    shapes = ((name, tuple(p.shape)) for name, p in model.named_parameters())
    return {"parameters": parameters, "layer_widths": layer_widths(shapes, _head_dim(model.config))}


def folder_facts(folder: str | Path) -> dict[str, Any]:
    """Parameter count and per-layer widths of a safetensors folder, from the files' headers (no weights read)."""
    from safetensors import safe_open

    shapes: list[tuple[str, tuple[int, ...]]] = []
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            shapes += [(key, tuple(handle.get_slice(key).get_shape())) for key in handle.keys()]
    if not shapes:
        return {"parameters": None, "layer_widths": None}
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    parameters = 0
    for _, shape in shapes:
        count = 1
        for size in shape:
            count *= size
        parameters += count
    return {
        "parameters": parameters,
        "layer_widths": layer_widths(shapes, _head_dim(config.get("text_config") or config)),
    }


def checkpoint_facts(reference: ModelReference, cache_dir: str | Path, options: LoadOptions) -> dict[str, Any]:
    """What the ``pruned_model`` table records of a checkpoint: ``sparsity`` (measured for compressed-tensors and
    LLM-Pruner checkpoints, None otherwise: an ordinary folder is not read for it), ``parameters`` and
    ``layer_widths`` (None for GGUF files and hub ids)."""
    if reference.kind == "pickle":
        from paser_assets.models.pruning import measured_sparsity

        model, _ = load_pickled(reference.location, options)
        try:
            sparsity: float | None = measured_sparsity(model)
        except ValueError:  # no decoder layers found where transformers keeps them
            sparsity = None
        return {"sparsity": sparsity, **model_facts(model)}
    if reference.kind == "folder":
        folder, sparsity = Path(reference.location), None
        if compression_config(folder) is not None:
            folder = convert_compressed(folder, cache_dir, options)
            sparsity = json.loads((folder / CONVERSION_RECORD).read_text()).get("sparsity")
        return {"sparsity": sparsity, **folder_facts(folder)}
    return {"sparsity": None, "parameters": None, "layer_widths": None}


# --- LLM-Pruner pickles ----------------------------------------------------------------------------------


def refuse_pickle(path: str | Path, options: LoadOptions) -> None:
    if not options.allow_pickle:
        raise CheckpointError(
            f"{path} is a pickled checkpoint (LLM-Pruner's torch.save format); unpickling can run arbitrary code, so "
            "it is off by default: set PASER_ALLOW_PICKLE=1 if you trust the file"
        )


def load_pickled(path: str | Path, options: LoadOptions) -> tuple[Any, Any]:
    """The ``model`` module and tokenizer of an LLM-Pruner checkpoint, on the CPU as saved; the tokenizer is the
    one the file holds, else one saved beside it. Only with ``allow_pickle``."""
    import torch

    refuse_pickle(path, options)
    try:
        content = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as error:
        raise CheckpointError(f"cannot unpickle {path}: {type(error).__name__}: {error}") from None
    model = content.get("model") if isinstance(content, dict) else None
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        found = (
            f"a dict with keys {sorted(map(str, content))[:6]}" if isinstance(content, dict) else type(content).__name__
        )
        raise CheckpointError(
            f"{path} holds {found}, not an LLM-Pruner checkpoint: a dict whose 'model' is the pruned causal LM "
            "(torch.save({'model': model, 'tokenizer': tokenizer}, path))"
        )
    tokenizer = content.get("tokenizer")
    if tokenizer is None:
        tokenizer = _tokenizer_beside(Path(path), options)
    elif not hasattr(tokenizer, "get_vocab"):
        raise CheckpointError(f"{path}: its 'tokenizer' is a {type(tokenizer).__name__}, not a tokenizer")
    return model, tokenizer


def _tokenizer_beside(path: Path, options: LoadOptions) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path.parent), trust_remote_code=options.trust_remote_code)
    except Exception:
        raise CheckpointError(
            f"{path} holds no 'tokenizer' and none is saved beside it: save it as LLM-Pruner does, "
            "torch.save({'model': model, 'tokenizer': tokenizer}, path), or save the tokenizer into its folder"
        ) from None
