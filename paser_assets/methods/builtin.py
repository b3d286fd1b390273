"""The product's selection methods: PASER, every row, two random baselines and two published ones."""

from __future__ import annotations

from paser_assets.core.baselines import (
    ifd_selection,
    longest_selection,
    random_selection,
    token_matched_selection,
)
from paser_assets.methods import Candidates, SelectionMethod


def _paser(candidates: Candidates, budget: int) -> list[str]:
    return list(candidates.paser_ids)  # the `selection` asset's choice, in its order


def _full(candidates: Candidates, budget: int) -> list[str]:
    return sorted(candidates.frame["sample_id"])


def _random(candidates: Candidates, budget: int) -> list[str]:
    return random_selection(candidates.frame["sample_id"].tolist(), budget, candidates.seed)


def _random_tokens(candidates: Candidates, budget: int) -> list[str]:
    frame = candidates.frame
    tokens = dict(zip(frame["sample_id"], frame["tokens"].astype(int), strict=True))
    target = sum(tokens[i] for i in candidates.paser_ids if i in tokens)
    return token_matched_selection(tokens, target, candidates.seed)


def _ifd(candidates: Candidates, budget: int) -> list[str]:
    from paser_assets.models.response_scores import ifd_scores

    models = candidates.models
    scores = ifd_scores(models.pruned_model(), models.tokenizer(), candidates.frame, candidates.max_tokens)
    return ifd_selection(scores, budget)


def _longest(candidates: Candidates, budget: int) -> list[str]:
    from paser_assets.models.response_scores import response_lengths

    return longest_selection(response_lengths(candidates.models.tokenizer(), candidates.frame), budget)


BUILTIN = (
    SelectionMethod(
        "paser",
        _paser,
        "PASER's selection (the `selection` asset): CDS allocation, IES order, concept filter.",
        needs_scores=True,
    ),
    SelectionMethod("full", _full, "Every selectable row (not at the budget): the ceiling of recovery."),
    SelectionMethod("random", _random, "B rows drawn uniformly at random (PASER_RECOVERY_SEED)."),
    SelectionMethod(
        "random_tokens",
        _random_tokens,
        "Random rows until their training tokens reach PASER's: random at PASER's cost, not its count.",
        needs_scores=True,  # PASER's tokens
    ),
    SelectionMethod(
        "ifd",
        _ifd,
        "The B rows of highest Instruction-Following Difficulty under the pruned model (Li et al., 2024), the "
        "baseline the PASER paper compares against.",
        needs_scores=True,
    ),
    SelectionMethod(
        "longest",
        _longest,
        "The B rows with the longest responses, in tokens (Zhao et al., 2024), a strong simple baseline.",
    ),
)
