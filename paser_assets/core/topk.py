"""A compact summary of the original model's next-token distributions, and the JSD computed from it.

Re-pruning does not change the original model, so its distributions can be kept and reused. Only
the top-k log-probabilities per response token are kept; the rest of the vocabulary is lumped into
one "tail" bin. The JSD between the lumped distributions (top-k tokens + tail) is a lower bound of
the full JSD (coarse-graining never increases a divergence) and equals it when both models spread
their tail mass alike; ``bench/rescore.py`` measures the gap on real data to choose k.
"""

from __future__ import annotations

import torch

from paser_assets.core.divergence import LN2, log_softmax_parts


def topk_summary(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most likely token ids (int32) and their log-probabilities (float32), per row."""
    log_probs = log_softmax_parts(logits)
    values, ids = torch.topk(log_probs, min(k, log_probs.shape[-1]), dim=-1)
    return ids.to(torch.int32), values


def _tail_log_mass(top_log_probs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum exp(top)), computed the same way for both models so identical inputs agree bit for bit."""
    mass = 1.0 - top_log_probs.double().exp().sum(dim=-1, keepdim=True)
    return mass.clamp(min=1e-30).log().float()


def jsd_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-bin JSD terms 1/2 [p (ln2 - softplus(d)) + q (ln2 - softplus(-d))], d = log q - log p."""
    delta = log_q - log_p
    half_gap = LN2 - torch.log1p(torch.exp(-delta.abs()))
    return 0.5 * (log_p.exp() * (half_gap - delta.clamp(min=0.0)) + log_q.exp() * (half_gap - (-delta).clamp(min=0.0)))


def lumped_jsd(top_ids: torch.Tensor, top_log_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """JSD(P||Q) over the bins {top-k of P} + tail, from P's summary and Q's full logits; 0 <= result <= ln 2."""
    log_q_all = log_softmax_parts(logits_q)
    top_log_q = log_q_all.gather(-1, top_ids.long())
    log_p = torch.cat([top_log_p, _tail_log_mass(top_log_p)], dim=-1)
    log_q = torch.cat([top_log_q, _tail_log_mass(top_log_q)], dim=-1)
    return jsd_terms(log_p, log_q).double().sum(dim=-1).float().clamp_(0.0, LN2)
