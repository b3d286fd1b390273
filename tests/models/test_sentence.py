"""The sentence model (paser_assets.models.sentence) is loaded under the LLMs' safety rules: no pickled
weights unless PASER_ALLOW_PICKLE."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from paser_assets.models.checkpoints import CheckpointError, LoadOptions
from paser_assets.models.sentence import embed_texts

TEXTS = ["Name three primary colors.", "Summarise the paragraph below in one sentence."]


@pytest.fixture(scope="module")
def pickled_sentence_model(tmp_path_factory: pytest.TempPathFactory, tiny_builders: ModuleType) -> Path:
    return tiny_builders.save_tiny_sentence_model(tmp_path_factory.mktemp("sentence") / "pickled", safe=False)


def test_a_sentence_model_with_only_pickled_weights_is_refused(pickled_sentence_model: Path) -> None:
    weights = pickled_sentence_model / "pytorch_model.bin"
    assert weights.is_file() and not list(pickled_sentence_model.rglob("*.safetensors"))
    with pytest.raises(CheckpointError, match="PASER_ALLOW_PICKLE") as refused:
        embed_texts(str(pickled_sentence_model), TEXTS)
    assert str(weights) in str(refused.value)


def test_allow_pickle_loads_the_pickled_sentence_model(pickled_sentence_model: Path) -> None:
    vectors = embed_texts(str(pickled_sentence_model), TEXTS, options=LoadOptions(allow_pickle=True))
    assert vectors.shape == (2, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_pickled_weights_in_a_module_subfolder_are_refused_too(
    tmp_path: Path, tiny_builders: ModuleType, pickled_sentence_model: Path
) -> None:
    """sentence-transformers loads a module's weights (a Dense layer, say) from its own subfolder."""
    folder = tiny_builders.save_tiny_sentence_model(tmp_path / "safe", safe=True)
    assert embed_texts(str(folder), TEXTS).shape == (2, 16)  # safetensors: loaded by default
    module = folder / "2_Dense"
    module.mkdir()
    (module / "pytorch_model.bin").write_bytes((pickled_sentence_model / "pytorch_model.bin").read_bytes())
    with pytest.raises(CheckpointError, match="PASER_ALLOW_PICKLE") as refused:
        embed_texts(str(folder), TEXTS)
    assert str(module / "pytorch_model.bin") in str(refused.value)
