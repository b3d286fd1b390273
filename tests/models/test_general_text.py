"""The general text set (paser_assets.models.general_text) cut to what the evaluated model can read."""

from __future__ import annotations

from pathlib import Path

from tiny_models import SHORT_CONTEXT

from paser_assets.models.checkpoints import load_causal_lm, parse_model_reference
from paser_assets.models.general_text import general_text, general_text_samples


def test_segments_are_no_longer_than_the_models_context(short_context_dir: Path, tmp_path: Path) -> None:
    _, short = load_causal_lm(parse_model_reference(str(short_context_dir)), tmp_path / "cache")
    segments = general_text_samples(short, tokens=256, limit=4)
    assert len(segments) == 4 and all(len(s.input_ids) == SHORT_CONTEXT for s in segments)
    ids = short(general_text(), add_special_tokens=False, verbose=False)["input_ids"]
    assert [t for s in segments for t in s.input_ids] == ids[: 4 * SHORT_CONTEXT]  # consecutive, as before
