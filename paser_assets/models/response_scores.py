"""Per-sample scores of the responses that some selection methods rank by: length and IFD."""

from __future__ import annotations

from typing import Any

import pandas as pd

from paser_assets.core.baselines import instruction_following_difficulty
from paser_assets.models.scoring import EncodedSample, encode_sample
from paser_assets.models.training import response_nll


def encode_rows(tokenizer: Any, frame: pd.DataFrame, max_tokens: int) -> list[EncodedSample]:
    """The rows (``sample_id, instruction, input, output``) as chat-formatted prompt + response token ids."""
    return [
        encode_sample(tokenizer, row.sample_id, row.instruction, row.input, row.output, max_tokens)
        for row in frame.itertuples(index=False)
    ]


def lead_token(tokenizer: Any) -> tuple[int, ...]:
    """The one token a response-only sequence starts with, so that its first token has a prediction."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return (int(token),)


def response_lengths(tokenizer: Any, frame: pd.DataFrame) -> dict[str, int]:
    """Tokens of each response, untruncated."""
    lengths = tokenizer(frame["output"].tolist(), add_special_tokens=False)["input_ids"]
    return {sample_id: len(ids) for sample_id, ids in zip(frame["sample_id"], lengths, strict=True)}


def ifd_scores(model: Any, tokenizer: Any, frame: pd.DataFrame, max_tokens: int) -> dict[str, float]:
    """Instruction-Following Difficulty per sample: NLL of the response with the prompt (the rows' ``pruned_nll``)
    over its NLL without it."""
    alone = [
        EncodedSample(s.sample_id, (*lead_token(tokenizer), *s.input_ids[s.prompt_tokens :]), 1, s.truncated)
        for s in encode_rows(tokenizer, frame, max_tokens)
    ]
    unconditioned = response_nll(model, alone, tokenizer.pad_token_id)
    return {
        row.sample_id: instruction_following_difficulty(float(row.pruned_nll), unconditioned[row.sample_id])
        for row in frame.itertuples(index=False)
    }
