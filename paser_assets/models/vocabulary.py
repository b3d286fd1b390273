"""A checkpoint's vocabulary size (the rows of its output head), read from its files without loading it."""

from __future__ import annotations

import json
from pathlib import Path


def vocabulary_size(location: str | Path) -> int | None:
    """``vocab_size`` of a checkpoint folder's ``config.json`` (or of its ``text_config``, for models that
    wrap a language model), or of a ``.gguf`` file's metadata; None when the files do not say."""
    path = Path(location)
    if path.suffix.lower() == ".gguf":
        return _gguf_vocabulary(path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for section in (config, config.get("text_config") or {}):
        size = section.get("vocab_size") if isinstance(section, dict) else None
        if isinstance(size, int) and size > 0:
            return size
    return None


def _gguf_vocabulary(path: Path) -> int | None:
    try:
        from gguf import GGUFReader  # what transformers reads GGUF files with

        reader = GGUFReader(str(path))
    except Exception:  # not installed, or not a readable GGUF file: the size is just unknown
        return None
    architecture = reader.fields.get("general.architecture")
    declared = reader.fields.get(f"{architecture.contents()}.vocab_size") if architecture is not None else None
    if declared is not None:
        return int(declared.contents())
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return len(tokens.data) if tokens is not None else None
