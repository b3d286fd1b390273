"""A third-party selection method for paser-assets: the B rows with the shortest responses.

Shortest-first is a deliberately simple rule (the mirror of the ``longest`` baseline): it shows the whole
contract of a method. ``select`` receives the selectable candidates (one row per sample, with the text,
token counts, cluster and the models' scores) and PASER's sample budget B, and returns sample ids in
selection order. Installed, it is listed by ``paser methods`` and can be recovered with and compared:
``PASER_RECOVERY=1 PASER_RECOVERY_METHODS=shortest,random paser materialize``.
"""

from __future__ import annotations

from paser_assets.methods import Candidates, SelectionMethod


def shortest_responses(candidates: Candidates, budget: int) -> list[str]:
    """The ``budget`` rows with the fewest response tokens (ties by sample_id), from the scores' token counts."""
    frame = candidates.frame.sort_values(["response_tokens", "sample_id"])
    return frame["sample_id"].head(budget).tolist()


SHORTEST = SelectionMethod(
    "shortest",
    shortest_responses,
    "The B rows with the shortest responses (an example plugin, examples/shortest).",
    needs_scores=True,  # the response token counts come from the scoring run
)
