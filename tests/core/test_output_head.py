"""Output heads for scoring (paser_assets.core.output_head): the target-centred bfloat16 product."""

from __future__ import annotations

import torch

from paser_assets.core.divergence import chunked_divergence, divergence_and_nll
from paser_assets.core.output_head import Float32Head, TargetCentredBFloat16Head, head_logits

VOCABULARY, HIDDEN, ROWS = 4096, 96, 64


def language_model_like_head(seed: int) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """(head, hidden, targets) whose logits look like a small LM's: a shared offset of about +25 on
    every token (so bfloat16's rounding, relative to size, is large), a peaked top and a long tail;
    the targets are drawn from the distributions themselves."""
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(HIDDEN, VOCABULARY, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(VOCABULARY, HIDDEN, generator=generator) * 0.35)
        head.weight[:, 0] = 1.0  # the offset direction: every logit gets 25 from hidden[:, 0]
    hidden = torch.randn(ROWS, HIDDEN, generator=generator)
    hidden[:, 0] = 25.0
    with torch.no_grad():
        probabilities = torch.softmax(head(hidden), dim=-1)
    targets = torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)
    return head, hidden, targets


def log_softmax_error(logits: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest |log p - log p_ref| over the tokens holding at least 1e-4 of the mass."""
    log_p = torch.log_softmax(logits.double(), dim=-1)
    log_ref = torch.log_softmax(reference.double(), dim=-1)
    mass = log_ref.exp() >= 1e-4
    return float((log_p - log_ref).abs()[mass].max())


def test_centred_logits_are_the_float32_logits_shifted_by_the_target_logit():
    head, hidden, targets = language_model_like_head(0)
    with torch.no_grad():
        exact = head(hidden).double()
    centred = TargetCentredBFloat16Head(head.weight)(hidden, targets)
    assert centred.dtype == torch.bfloat16 and centred.shape == (ROWS, VOCABULARY)
    target_logit = exact.gather(1, targets.view(-1, 1))
    gap = centred.double() - (exact - target_logit)
    # The centre enters the product rounded to bfloat16, which shifts a whole row by a constant that
    # softmax ignores; what is left is the rounding of the inputs and of each output.
    row_shift = gap.median(dim=1, keepdim=True).values
    assert bool((row_shift.abs() <= target_logit.abs() * 2**-8 + 1e-6).all())
    assert float((gap - row_shift).abs().max()) < 0.15
    assert float(centred.double().gather(1, targets.view(-1, 1)).abs().max()) < 0.15


def test_centring_removes_most_of_the_bfloat16_rounding():
    head, hidden, targets = language_model_like_head(1)
    with torch.no_grad():
        exact = head(hidden)
        uncentred = (hidden.bfloat16() @ head.weight.bfloat16().T).float()
    centred = TargetCentredBFloat16Head(head.weight)(hidden, targets).float()
    centred_error = log_softmax_error(centred, exact)
    assert centred_error < 0.5 * log_softmax_error(uncentred, exact)
    assert centred_error < 0.1  # inputs rounded to bfloat16 alone cost about 0.04 here


def test_jsd_and_nll_from_bfloat16_heads_stay_close_to_float32():
    head_p, hidden_p, targets = language_model_like_head(2)
    head_q = torch.nn.Linear(HIDDEN, VOCABULARY, bias=False)
    with torch.no_grad():
        head_q.weight.copy_(head_p.weight)
        head_q.weight[:, 1:].mul_((torch.rand(VOCABULARY, HIDDEN - 1) > 0.3).float())  # a "pruned" head
    with torch.no_grad():
        exact_jsd, exact_nll_p, exact_nll_q = chunked_divergence(hidden_p, hidden_p, head_p, head_q, targets)
    jsd, nll_p, nll_q = chunked_divergence(
        hidden_p, hidden_p, TargetCentredBFloat16Head(head_p.weight), TargetCentredBFloat16Head(head_q.weight), targets
    )
    assert float(exact_jsd.mean()) > 0.05  # the check below means something
    assert float((jsd - exact_jsd).abs().mean()) < 2e-3
    assert float((nll_p - exact_nll_p).abs().mean()) < 2e-2 and float((nll_q - exact_nll_q).abs().mean()) < 2e-2


def test_identical_states_through_bfloat16_heads_score_exactly_zero():
    head, hidden, targets = language_model_like_head(3)
    centred = TargetCentredBFloat16Head(head.weight)
    for size in (1, 17, 128):
        jsd, nll_p, nll_q = chunked_divergence(hidden, hidden.clone(), centred, centred, targets, size)
        assert torch.equal(jsd, torch.zeros_like(jsd))
        assert torch.equal(nll_p, nll_q)


def test_a_head_with_bias_keeps_its_bias():
    head, hidden, targets = language_model_like_head(4)
    biased = torch.nn.Linear(HIDDEN, VOCABULARY, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.copy_(torch.linspace(-3.0, 3.0, VOCABULARY))
        exact = biased(hidden)
    centred = TargetCentredBFloat16Head(biased.weight, biased.bias)(hidden, targets)
    without_bias = TargetCentredBFloat16Head(biased.weight)(hidden, targets)
    assert log_softmax_error(centred.float(), exact) < 0.1
    assert log_softmax_error(without_bias.float(), exact) > 0.5  # the bias matters here


def test_head_logits_calls_a_plain_module_without_targets():
    head, hidden, targets = language_model_like_head(5)
    with torch.no_grad():
        assert torch.equal(head_logits(head, hidden, targets), head(hidden))
    centred = TargetCentredBFloat16Head(head.weight)
    assert torch.equal(head_logits(centred, hidden, targets), centred(hidden, targets))
    jsd, _, _ = divergence_and_nll(head_logits(centred, hidden, targets), head_logits(centred, hidden, targets))
    assert torch.equal(jsd, torch.zeros_like(jsd))


def test_heads_over_bfloat16_weights_compute_as_over_their_float32_copy():
    """A model held in bfloat16 gets the same heads as one holding the same (bfloat16-representable) weights
    in float32: the float32 head upcasts exactly, and the centred head's target logit is float32 either way."""
    head, hidden, targets = language_model_like_head(6)
    weight = head.weight.detach().to(torch.bfloat16)
    bias = torch.linspace(-1.0, 1.0, VOCABULARY).to(torch.bfloat16)
    upcast, upcast_bias = weight.float(), bias.float()
    with torch.no_grad():
        exact = torch.nn.functional.linear(hidden, upcast, upcast_bias)
    assert torch.equal(
        Float32Head(weight, bias)(hidden.to(torch.bfloat16)),
        torch.nn.functional.linear(hidden.to(torch.bfloat16).float(), upcast, upcast_bias),
    )
    assert torch.equal(Float32Head(weight, bias)(hidden), exact)
    low = TargetCentredBFloat16Head(weight, bias)(hidden, targets)
    assert torch.equal(low, TargetCentredBFloat16Head(upcast, upcast_bias)(hidden, targets))
    assert log_softmax_error(low.float(), exact) < 0.1
