"""Jensen-Shannon divergence and NLL of next-token distributions (paser_assets.core.divergence)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from paser_assets.core.divergence import LN2, chunked_divergence, divergence_and_nll, jensen_shannon


def reference_jsd(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Textbook JSD = 1/2 KL(P||M) + 1/2 KL(Q||M) in float64, independent of the module's rewriting."""
    p = torch.softmax(logits_p.double(), dim=-1)
    q = torch.softmax(logits_q.double(), dim=-1)
    m = 0.5 * (p + q)
    kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(dim=-1)
    kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(dim=-1)
    return 0.5 * (kl_pm + kl_qm)


def reference_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.double(), targets, reduction="none")


def random_logits(rows: int, vocab: int, scale: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(rows, vocab, generator=generator)


def test_identical_logits_give_exactly_zero():
    for scale in (0.5, 3.0, 30.0, 100.0):
        logits = random_logits(16, 1000, scale, seed=1)
        jsd = jensen_shannon(logits, logits.clone())
        assert jsd.dtype == torch.float32
        assert torch.equal(jsd, torch.zeros(16))


def test_shifted_logits_describe_the_same_distribution():
    # Adding a constant per row leaves the softmax unchanged, so JSD is (numerically) zero.
    logits = random_logits(8, 500, 3.0, seed=2)
    shifted = logits + torch.linspace(-50.0, 50.0, 8).unsqueeze(1)
    assert torch.all(jensen_shannon(logits, shifted) < 1e-6)


def test_symmetric():
    for scale in (0.5, 3.0, 10.0, 30.0):
        logits_p = random_logits(32, 2000, scale, seed=3)
        logits_q = random_logits(32, 2000, scale, seed=4)
        forward = jensen_shannon(logits_p, logits_q)
        backward = jensen_shannon(logits_q, logits_p)
        assert torch.max(torch.abs(forward - backward)).item() <= 1e-7


def _extreme_pairs() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    vocab = 4096
    pairs = [("scale 100", random_logits(8, vocab, 100.0, seed=5), random_logits(8, vocab, 100.0, seed=6))]
    # One-hot-like rows on different tokens: P and Q have (almost) disjoint support, JSD -> ln 2.
    one_hot_p = torch.zeros(4, vocab)
    one_hot_q = torch.zeros(4, vocab)
    one_hot_p[torch.arange(4), torch.tensor([0, 10, 20, 30])] = 1e4
    one_hot_q[torch.arange(4), torch.tensor([1, 11, 21, 31])] = 1e4
    pairs.append(("one-hot, different tokens", one_hot_p, one_hot_q))
    same_token_q = one_hot_p.clone()
    same_token_q[:, 5] = 9990.0  # the same peak with a second, e^-10 smaller bump
    pairs.append(("one-hot, same token", one_hot_p, same_token_q))
    # Huge negative logits (finite, no -inf) everywhere but a few allowed tokens.
    masked_p = torch.full((4, vocab), -1e9)
    masked_q = torch.full((4, vocab), -3e38)
    masked_p[:, :10] = random_logits(4, 10, 2.0, seed=7)
    masked_q[:, 5:15] = random_logits(4, 10, 2.0, seed=8)
    pairs.append(("large negatives", masked_p, masked_q))
    pairs.append(("all large negatives, uniform", torch.full((2, vocab), -1e30), torch.full((2, vocab), -2e30)))
    return pairs


@pytest.mark.parametrize(("name", "logits_p", "logits_q"), _extreme_pairs(), ids=[p[0] for p in _extreme_pairs()])
def test_bounded_by_zero_and_ln2_on_extreme_logits(name, logits_p, logits_q):
    jsd = jensen_shannon(logits_p, logits_q)
    assert torch.all(torch.isfinite(jsd)), name
    assert torch.all(jsd >= 0.0) and torch.all(jsd <= LN2), name
    reference = reference_jsd(logits_p, logits_q).float()
    assert torch.allclose(jsd, reference, atol=1e-6, rtol=0.0), (name, jsd, reference)


def test_disjoint_support_reaches_ln2_and_identical_peak_is_tiny():
    _, one_hot_p, one_hot_q = _extreme_pairs()[1]
    assert torch.allclose(jensen_shannon(one_hot_p, one_hot_q), torch.full((4,), LN2), atol=1e-7, rtol=0.0)
    _, same_p, same_q = _extreme_pairs()[2]
    assert torch.all(jensen_shannon(same_p, same_q) < 1e-4)


def test_bounds_hold_on_many_random_rows():
    for seed, scale in enumerate((0.1, 1.0, 5.0, 20.0, 60.0, 150.0)):
        jsd = jensen_shannon(random_logits(64, 300, scale, seed), random_logits(64, 300, scale, seed + 100))
        assert torch.all(jsd >= 0.0) and torch.all(jsd <= LN2)


@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0, 30.0])
def test_matches_float64_reference_vocab_5000(scale):
    logits_p = random_logits(24, 5000, scale, seed=11)
    logits_q = random_logits(24, 5000, scale, seed=12)
    jsd = jensen_shannon(logits_p, logits_q)
    reference = reference_jsd(logits_p, logits_q)
    assert torch.max(torch.abs(jsd.double() - reference)).item() <= 1e-6


@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0, 30.0])
def test_matches_float64_reference_vocab_49152(scale):
    logits_p = random_logits(3, 49152, scale, seed=21)
    logits_q = random_logits(3, 49152, scale, seed=22)
    jsd = jensen_shannon(logits_p, logits_q)
    reference = reference_jsd(logits_p, logits_q)
    assert torch.max(torch.abs(jsd.double() - reference)).item() <= 1e-6


def test_matches_reference_for_close_distributions():
    # A pruned model is close to the original: small JSD, where cancellation would hurt most.
    logits_p = random_logits(16, 5000, 3.0, seed=31)
    logits_q = logits_p + 0.01 * random_logits(16, 5000, 1.0, seed=32)
    jsd = jensen_shannon(logits_p, logits_q)
    reference = reference_jsd(logits_p, logits_q)
    assert torch.all(reference > 0) and torch.all(reference < 1e-3)
    assert torch.max(torch.abs(jsd.double() - reference)).item() <= 1e-7


@pytest.mark.parametrize("scale", [0.5, 3.0, 30.0])
def test_nll_equals_float64_cross_entropy(scale):
    logits_p = random_logits(32, 5000, scale, seed=41)
    logits_q = random_logits(32, 5000, scale, seed=42)
    targets = torch.randint(0, 5000, (32,), generator=torch.Generator().manual_seed(43))
    jsd, nll_p, nll_q = divergence_and_nll(logits_p, logits_q, targets)
    assert nll_p.dtype == torch.float32 and nll_q.dtype == torch.float32
    # 1e-5 absolute; the NLLs are float32, so at scale 30 (NLLs of about 200 nats, where one float32
    # step is 1.5e-5) the bound also allows one part in 1e7.
    for nll, logits in ((nll_p, logits_p), (nll_q, logits_q)):
        reference = reference_nll(logits, targets)
        assert torch.all(torch.abs(nll.double() - reference) <= 1e-5 + 1e-7 * reference)
    # Giving targets does not change the divergence.
    assert torch.equal(jsd, jensen_shannon(logits_p, logits_q))


def test_nll_of_a_uniform_distribution_is_log_vocab():
    logits = torch.zeros(4, 1000)
    _, nll_p, nll_q = divergence_and_nll(logits, logits, torch.tensor([0, 1, 500, 999]))
    assert torch.allclose(nll_p, torch.full((4,), math.log(1000)), atol=1e-6, rtol=0.0)
    assert torch.equal(nll_p, nll_q)


def test_without_targets_no_nll():
    jsd, nll_p, nll_q = divergence_and_nll(torch.zeros(2, 10), torch.ones(2, 10))
    assert nll_p is None and nll_q is None
    assert torch.equal(jsd, torch.zeros(2))


def test_does_not_modify_its_inputs():
    logits_p = random_logits(4, 100, 3.0, seed=51)
    logits_q = random_logits(4, 100, 3.0, seed=52)
    saved_p, saved_q = logits_p.clone(), logits_q.clone()
    divergence_and_nll(logits_p, logits_q, torch.tensor([1, 2, 3, 4]))
    assert torch.equal(logits_p, saved_p) and torch.equal(logits_q, saved_q)


def _heads(hidden: int, vocab: int, seed: int) -> tuple[torch.nn.Linear, torch.nn.Linear]:
    """An output head and a perturbed copy of it, like an original and a pruned model's lm_head."""
    torch.manual_seed(seed)
    head_p = torch.nn.Linear(hidden, vocab, bias=False)
    head_q = torch.nn.Linear(hidden, vocab, bias=False)
    with torch.no_grad():
        head_p.weight.mul_(6.0)
        head_q.weight.copy_(head_p.weight + 0.5 * torch.randn_like(head_p.weight))
    return head_p, head_q


@torch.no_grad()
def test_chunked_is_exactly_the_direct_result_for_any_chunk_size():
    # Identity heads: the hidden states are the logits, so chunking is the only difference.
    logits_p = random_logits(300, 3000, 4.0, seed=61)
    logits_q = logits_p + random_logits(300, 3000, 1.0, seed=62)
    targets = torch.randint(0, 3000, (300,), generator=torch.Generator().manual_seed(63))
    direct = divergence_and_nll(logits_p, logits_q, targets)
    identity = torch.nn.Identity()
    for size in (1, 7, 128, 1000):
        chunked = chunked_divergence(logits_p, logits_q, identity, identity, targets, size)
        for got, expected in zip(chunked, direct, strict=True):
            assert got.shape == (300,) and got.dtype == torch.float32
            assert torch.equal(got, expected), size


@pytest.mark.system
@torch.no_grad()
def test_chunked_with_linear_heads_matches_heads_applied_directly():
    head_p, head_q = _heads(hidden=48, vocab=3000, seed=64)
    generator = torch.Generator().manual_seed(65)
    hidden_p = torch.randn(300, 48, generator=generator)
    hidden_q = hidden_p + 0.1 * torch.randn(300, 48, generator=generator)
    targets = torch.randint(0, 3000, (300,), generator=generator)

    logits_p, logits_q = head_p(hidden_p), head_q(hidden_q)
    direct = divergence_and_nll(logits_p, logits_q, targets)
    assert torch.all(direct[0] > 1e-3) and torch.all(direct[0] < LN2)
    # The direct result is itself right: compare with the float64 textbook formulas.
    assert torch.allclose(direct[0].double(), reference_jsd(logits_p, logits_q), atol=1e-6, rtol=0.0)
    assert torch.allclose(direct[1].double(), reference_nll(logits_p, targets), atol=1e-5, rtol=0.0)
    assert torch.allclose(direct[2].double(), reference_nll(logits_q, targets), atol=1e-5, rtol=0.0)

    results = {size: chunked_divergence(hidden_p, hidden_q, head_p, head_q, targets, size) for size in (1, 7, 128)}
    for size, (jsd, nll_p, nll_q) in results.items():
        assert jsd.shape == nll_p.shape == nll_q.shape == (300,), size
        # A one-row matmul may round differently from a 300-row one (about 1e-6 per logit), so the
        # agreement is to float32 rounding of the logits, not bitwise.
        assert torch.allclose(jsd, direct[0], atol=5e-6, rtol=0.0), size
        assert torch.allclose(nll_p, direct[1], atol=2e-5, rtol=0.0), size
        assert torch.allclose(nll_q, direct[2], atol=2e-5, rtol=0.0), size


@torch.no_grad()
def test_chunked_with_identical_models_is_exactly_zero():
    head_p, _ = _heads(hidden=32, vocab=2000, seed=71)
    head_q = copy.deepcopy(head_p)
    hidden = torch.randn(50, 32, generator=torch.Generator().manual_seed(72))
    targets = torch.randint(0, 2000, (50,), generator=torch.Generator().manual_seed(73))
    for size in (1, 7, 128):
        jsd, nll_p, nll_q = chunked_divergence(hidden, hidden.clone(), head_p, head_q, targets, size)
        assert torch.equal(jsd, torch.zeros(50))
        assert torch.equal(nll_p, nll_q)
        assert torch.all(nll_p > 0)


@torch.no_grad()
def test_chunked_with_no_positions():
    head_p, head_q = _heads(hidden=8, vocab=50, seed=81)
    empty = torch.zeros(0, 8)
    jsd, nll_p, nll_q = chunked_divergence(empty, empty, head_p, head_q, torch.zeros(0, dtype=torch.long))
    assert jsd.shape == nll_p.shape == nll_q.shape == (0,)


@pytest.mark.system
def test_compiled_kernel_matches_the_float64_reference_and_keeps_exact_zero():
    # torch.compile fuses the same formula; chunk sizes vary so the dynamic-shape kernel is exercised.
    logits_p = random_logits(200, 4096, 4.0, seed=71)
    logits_q = logits_p + random_logits(200, 4096, 1.0, seed=72)
    targets = torch.randint(0, 4096, (200,), generator=torch.Generator().manual_seed(73))
    identity = torch.nn.Identity()
    with torch.inference_mode():
        eager = chunked_divergence(logits_p, logits_q, identity, identity, targets, 64)
        compiled = chunked_divergence(logits_p, logits_q, identity, identity, targets, 64, compiled=True)
        same = chunked_divergence(logits_p, logits_p.clone(), identity, identity, targets, 37, compiled=True)
    assert (compiled[0] - reference_jsd(logits_p, logits_q)).abs().max() < 1e-6
    assert (compiled[0] - eager[0]).abs().max() < 1e-6
    assert (compiled[1] - reference_nll(logits_p, targets)).abs().max() < 1e-5
    assert torch.equal(compiled[2], eager[2]) or (compiled[2] - eager[2]).abs().max() < 1e-5
    assert torch.equal(same[0], torch.zeros(200))
    assert bool(((compiled[0] >= 0) & (compiled[0] <= LN2)).all())
