"""Prompt building, encoding, batch planning and teacher-forced pair scoring
(paser_assets.models.scoring), on the tiny Llama and on the packaged SmolLM2."""

from __future__ import annotations

import copy
import itertools
import math
import random
import shutil
import statistics

import numpy as np
import pytest
import torch
from tiny_models import SHORT_CONTEXT
from transformers import AutoTokenizer

from paser_assets.core.divergence import LN2
from paser_assets.models.checkpoints import (
    CheckpointError,
    ContextLimitWarning,
    context_limit,
    load_causal_lm,
    load_tokenizer,
    parse_model_reference,
)
from paser_assets.models.pruning import PruneRecipe, prune_model
from paser_assets.models.scoring import (
    EncodedSample,
    PairScorer,
    SampleScore,
    build_prompt,
    encode_sample,
    plan_batches,
)
from paser_assets.pool.demo import generate_demo_pool

ROWS = generate_demo_pool(8, seed=4)


@pytest.fixture(scope="module")
def model(tiny_pair):
    return tiny_pair[0]


@pytest.fixture(scope="module")
def pruned(model):
    copied = copy.deepcopy(model)
    prune_model(copied, PruneRecipe("magnitude", 0.5))
    return copied


@pytest.fixture(scope="module")
def samples(tokenizer) -> list[EncodedSample]:
    return [
        encode_sample(tokenizer, f"s{i}", row["instruction"], row["input"], row["output"], max_tokens=256)
        for i, row in enumerate(ROWS)
    ]


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --- prompts ------------------------------------------------------------------------------------------


def test_build_prompt_uses_the_chat_template(tokenizer):
    assert tokenizer.chat_template
    assert (
        build_prompt(tokenizer, "Sort the list.", "3, 1, 2")
        == "<|user|>\nSort the list.\n\n3, 1, 2</s>\n<|assistant|>\n"
    )
    assert build_prompt(tokenizer, "Say hi.", "") == "<|user|>\nSay hi.</s>\n<|assistant|>\n"
    assert build_prompt(tokenizer, "Say hi.", "") == tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hi."}], tokenize=False, add_generation_prompt=True
    )


def test_build_prompt_falls_back_to_alpaca(tiny_alpaca_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_alpaca_dir)
    assert not tokenizer.chat_template
    assert build_prompt(tokenizer, "Sort the list.", "3, 1, 2") == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSort the list.\n\n### Input:\n3, 1, 2\n\n### Response:\n"
    )
    assert build_prompt(tokenizer, "Say hi.", "") == (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSay hi.\n\n### Response:\n"
    )


def test_a_tokenizer_whose_template_is_removed_uses_alpaca(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    prompt = build_prompt(plain, "Say hi.", "")
    assert prompt.startswith("Below is an instruction") and prompt.endswith("### Response:\n")


@pytest.mark.parametrize(
    ("template", "attempt"),
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "access to attribute '__class__' of 'str' object is unsafe"),
        ("{{ cycler.__init__.__globals__.os.popen('id').read() }}", "attribute '__init__'"),
    ],
)
def test_a_chat_template_that_tries_to_escape_the_sandbox_is_one_clear_error(
    tiny_llama_dir, tmp_path, template, attempt
):
    """Jinja's sandbox holds; the user gets one line naming the checkpoint's chat template and what it tried, as
    a CheckpointError (which the assets turn into a Dagster failure), not jinja2's SecurityError."""
    folder = shutil.copytree(tiny_llama_dir, tmp_path / "hostile")
    (folder / "chat_template.jinja").write_text(template)
    tokenizer = load_tokenizer(parse_model_reference(str(folder)), tmp_path / "cache")
    with pytest.raises(CheckpointError) as raised:
        encode_sample(tokenizer, "a", "Say hi.", "", "Hi.", max_tokens=64)
    message = str(raised.value)
    assert message.startswith(f"the chat template of {folder} tried to escape Jinja's sandbox (")
    assert attempt in message and "no code ran" in message
    assert "\n" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_a_chat_template_that_fails_otherwise_names_the_checkpoint(tokenizer):
    broken = copy.deepcopy(tokenizer)
    broken.chat_template = "{{ raise_exception('Only system and user roles are supported') }}"
    with pytest.raises(CheckpointError) as raised:
        build_prompt(broken, "Say hi.", "")
    assert str(raised.value) == (
        f"the chat template of {tokenizer.name_or_path} cannot format a prompt: "
        "TemplateError: Only system and user roles are supported"
    )


# --- encoding -----------------------------------------------------------------------------------------


def test_encode_sample_layout(tokenizer):
    row = next(r for r in ROWS if r["input"])
    sample = encode_sample(tokenizer, "a", row["instruction"], row["input"], row["output"], max_tokens=512)
    prompt_ids = ids(tokenizer, build_prompt(tokenizer, row["instruction"], row["input"]))
    response_ids = ids(tokenizer, row["output"])
    assert sample.sample_id == "a" and not sample.truncated
    assert sample.prompt_tokens == len(prompt_ids)
    assert list(sample.input_ids) == [*prompt_ids, *response_ids, tokenizer.eos_token_id]
    assert sample.input_ids[-1] == tokenizer.eos_token_id
    assert sample.response_tokens == len(response_ids) + 1
    assert tokenizer.decode(sample.input_ids[sample.prompt_tokens : -1]) == row["output"]


def test_truncation_keeps_the_prompt_tail(tokenizer):
    row = ROWS[0]
    prompt_ids = ids(tokenizer, build_prompt(tokenizer, row["instruction"], row["input"]))
    response_ids = ids(tokenizer, row["output"])
    limit = 20
    assert len(prompt_ids) > limit // 2 and len(response_ids) > limit // 2
    sample = encode_sample(tokenizer, "t", row["instruction"], row["input"], row["output"], max_tokens=limit)
    assert sample.truncated
    assert len(sample.input_ids) == limit
    assert sample.prompt_tokens == limit // 2
    assert list(sample.input_ids[: limit // 2]) == prompt_ids[-(limit // 2) :]
    assert tokenizer.decode(sample.input_ids[: sample.prompt_tokens]).endswith("assistant|>\n")
    assert list(sample.input_ids[limit // 2 :]) == response_ids[: limit // 2]


def test_truncation_of_a_long_response_keeps_a_short_prompt(tokenizer):
    output = " ".join(["the answer is forty two"] * 40)
    prompt_ids = ids(tokenizer, build_prompt(tokenizer, "Answer.", ""))
    limit = 2 * len(prompt_ids) + 6
    sample = encode_sample(tokenizer, "t", "Answer.", "", output, max_tokens=limit)
    assert sample.truncated
    assert sample.prompt_tokens == len(prompt_ids)
    assert list(sample.input_ids) == [*prompt_ids, *ids(tokenizer, output)[: limit - len(prompt_ids)]]
    assert sample.input_ids[-1] != tokenizer.eos_token_id  # the end was cut off, EOS with it


def test_a_sample_that_fits_exactly_is_not_truncated(tokenizer):
    full = encode_sample(tokenizer, "f", "Say hi.", "", "Hi there.", max_tokens=1000)
    exact = encode_sample(tokenizer, "f", "Say hi.", "", "Hi there.", max_tokens=len(full.input_ids))
    assert exact == full and not exact.truncated


def test_max_tokens_above_the_models_context_is_cut_to_the_context(short_context_dir, tmp_path):
    """The loader records the model's context on its tokenizer; encoding never goes past it, and says so once,
    naming the setting and the limit."""
    _, short = load_causal_lm(parse_model_reference(str(short_context_dir)), tmp_path / "cache")
    assert context_limit(short) == SHORT_CONTEXT
    row = ROWS[0]
    with pytest.warns(ContextLimitWarning, match=rf"PASER_MAX_TOKENS=512 .*context of {SHORT_CONTEXT} tokens"):
        sample = encode_sample(short, "c", row["instruction"], row["input"], row["output"] * 8, max_tokens=512)
    assert len(sample.input_ids) == SHORT_CONTEXT and sample.truncated
    assert sample == encode_sample(short, "c", row["instruction"], row["input"], row["output"] * 8, SHORT_CONTEXT)
    # Within the context the setting rules, as before.
    assert len(encode_sample(short, "c", row["instruction"], row["input"], row["output"] * 8, 20).input_ids) == 20


# --- batch planning -------------------------------------------------------------------------------------


def test_plan_batches_covers_every_index_once_within_limits():
    rng = random.Random(3)
    lengths = [rng.randint(1, 300) for _ in range(200)]
    batches = plan_batches(lengths, token_budget=1024, max_batch=8)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert flat == sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    for batch in batches:
        assert 1 <= len(batch) <= 8
        assert len(batch) * max(lengths[i] for i in batch) <= 1024
    # Greedy: a batch is closed only when the next row would break a limit.
    for batch, following in itertools.pairwise(batches):
        grown = len(batch) + 1
        assert grown > 8 or grown * lengths[following[0]] > 1024
    assert plan_batches(lengths, token_budget=1024, max_batch=8) == batches


def test_plan_batches_edge_cases():
    assert plan_batches([]) == []
    # A row longer than the budget still gets a batch of its own.
    assert plan_batches([5, 5000, 5], token_budget=100, max_batch=4) == [[0, 2], [1]]
    # Ties keep index order; max_batch splits rows of equal length.
    assert plan_batches([7, 7, 7, 7, 7], token_budget=10_000, max_batch=2) == [[0, 1], [2, 3], [4]]


# --- pair scoring on the tiny Llama ----------------------------------------------------------------------


def reference_scores(original, pruned, sample: EncodedSample) -> tuple[float, float, float]:
    """JSD and both NLLs from full forward passes over the unpadded sequence, in float64, averaged
    over exactly the positions that predict response tokens."""
    input_ids = torch.tensor([sample.input_ids])
    with torch.inference_mode():
        logits_p = original(input_ids).logits[0].double()
        logits_q = pruned(input_ids).logits[0].double()
    positions = torch.arange(sample.prompt_tokens - 1, len(sample.input_ids) - 1)
    assert len(positions) == sample.response_tokens
    targets = torch.tensor(sample.input_ids)[positions + 1]
    log_p = torch.log_softmax(logits_p[positions], dim=-1)
    log_q = torch.log_softmax(logits_q[positions], dim=-1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    jsd = 0.5 * ((log_p.exp() * (log_p - log_m)).sum(-1) + (log_q.exp() * (log_q - log_m)).sum(-1))
    nll_p = -log_p.gather(-1, targets.view(-1, 1)).squeeze(-1)
    nll_q = -log_q.gather(-1, targets.view(-1, 1)).squeeze(-1)
    return float(jsd.mean()), float(nll_p.mean()), float(nll_q.mean())


def test_identical_models_give_exactly_zero(model, tokenizer, samples):
    scores = PairScorer(model, model, tokenizer.pad_token_id).score(samples)
    assert [s.sample_id for s in scores] == [s.sample_id for s in samples]
    for score in scores:
        assert score.jsd == 0.0
        assert score.original_nll == score.pruned_nll
        assert math.isfinite(score.original_nll) and score.original_nll > 0


def test_a_separately_loaded_identical_copy_gives_exactly_zero(model, tokenizer, samples, tiny_llama_dir, tmp_path):
    twin, _ = load_causal_lm(parse_model_reference(str(tiny_llama_dir)), tmp_path)
    assert twin is not model
    scores = PairScorer(model, twin, tokenizer.pad_token_id).score(samples)
    assert all(score.jsd == 0.0 and score.original_nll == score.pruned_nll for score in scores)


ROUNDING = 3e-5  # float16 rounding of the final hidden states, with the sharpened test head


def test_scores_match_a_full_forward_reference(sharp_pair, tokenizer, samples):
    original, pruned = sharp_pair
    scores = PairScorer(original, pruned, tokenizer.pad_token_id).score(samples)
    for sample, score in zip(samples, scores, strict=True):
        assert (score.prompt_tokens, score.response_tokens) == (sample.prompt_tokens, sample.response_tokens)
        jsd, nll_original, nll_pruned = reference_scores(original, pruned, sample)
        assert jsd > 1e-3  # large enough for the tolerance below to mean something
        # The scorer rounds both models' final hidden states to float16 (the cached form); with this
        # model's 40x sharpened head that moves the JSD by ~1e-5, far below what a wrong position costs.
        assert score.jsd == pytest.approx(jsd, abs=ROUNDING), sample.sample_id
        assert score.original_nll == pytest.approx(nll_original, abs=1e-3), sample.sample_id
        assert score.pruned_nll == pytest.approx(nll_pruned, abs=1e-3), sample.sample_id


def test_prompt_tokens_do_not_count(sharp_pair, tokenizer, samples):
    """Scoring positions over the prompt would change the average: a reference over every position
    of the sequence, instead of only the response's, is far from the score."""
    original, pruned = sharp_pair
    scorer = PairScorer(original, pruned, tokenizer.pad_token_id)
    for sample, score in zip(samples[:3], scorer.score(samples[:3]), strict=True):
        whole = EncodedSample(sample.sample_id, sample.input_ids, 1, False)
        assert score.jsd == pytest.approx(reference_scores(original, pruned, sample)[0], abs=ROUNDING)
        assert abs(score.jsd - reference_scores(original, pruned, whole)[0]) > 10 * ROUNDING


def test_padding_does_not_change_a_sample_score(sharp_pair, tokenizer, samples):
    original, pruned = sharp_pair
    short = min(samples, key=lambda s: len(s.input_ids))
    long_output = " ".join(row["output"] for row in ROWS) * 3
    longer = [encode_sample(tokenizer, f"long{i}", "Repeat.", "", long_output[i:], max_tokens=512) for i in range(3)]
    assert all(len(s.input_ids) > 3 * len(short.input_ids) for s in longer)
    scorer = PairScorer(original, pruned, tokenizer.pad_token_id)
    alone = scorer.score([short])[0]
    padded = scorer.score([longer[0], short, *longer[1:]])[1]
    assert padded.sample_id == short.sample_id
    assert alone.jsd > 1e-3
    for field in ("jsd", "original_nll", "pruned_nll"):
        assert getattr(padded, field) == pytest.approx(getattr(alone, field), abs=1e-6), field
    # The pad id itself does not matter either: padded positions are masked and never scored.
    other_pad = PairScorer(original, pruned, pad_token_id=7).score([longer[0], short, *longer[1:]])
    assert other_pad[1].jsd == pytest.approx(padded.jsd, abs=1e-7)


def test_pruned_copy_diverges_within_bounds_and_deterministically(model, pruned, sharp_pair, tokenizer, samples):
    for original, copy_pruned in ((model, pruned), sharp_pair):
        scorer = PairScorer(original, copy_pruned, tokenizer.pad_token_id)
        first = scorer.score(samples)
        for score in first:
            assert 0.0 < score.jsd <= LN2
            assert math.isfinite(score.original_nll) and math.isfinite(score.pruned_nll)
        assert scorer.score(samples) == first
        assert PairScorer(original, copy.deepcopy(copy_pruned), tokenizer.pad_token_id).score(samples) == first


def test_chunk_size_does_not_matter(sharp_pair, tokenizer, samples):
    original, pruned = sharp_pair
    large = PairScorer(original, pruned, tokenizer.pad_token_id, chunk_size=4096).score(samples)
    small = PairScorer(original, pruned, tokenizer.pad_token_id, chunk_size=3).score(samples)
    for a, b in zip(large, small, strict=True):
        assert a.jsd == pytest.approx(b.jsd, abs=1e-7)
        assert a.original_nll == pytest.approx(b.original_nll, rel=1e-6)


def test_scoring_by_planned_batches_matches_one_batch(model, pruned, tokenizer, samples):
    plan = plan_batches([len(s.input_ids) for s in samples], token_budget=300, max_batch=3)
    assert len(plan) > 1
    scorer = PairScorer(model, pruned, tokenizer.pad_token_id)
    results = [scorer.score([samples[i] for i in batch]) for batch in plan]
    assert [[s.sample_id for s in batch] for batch in results] == [[samples[i].sample_id for i in b] for b in plan]
    by_id = {s.sample_id: s for batch in results for s in batch}
    together = {s.sample_id: s for s in PairScorer(model, pruned, tokenizer.pad_token_id).score(samples)}
    for sample_id, score in together.items():
        assert by_id[sample_id].jsd == pytest.approx(score.jsd, abs=1e-6)


def test_models_with_capped_logits_are_refused(model):
    capped = copy.deepcopy(model)
    capped.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="the pruned model scales or caps its logits"):
        PairScorer(model, capped, pad_token_id=2)


def test_sample_score_cost_and_efficiency():
    score = SampleScore(
        "x", jsd=0.3, original_nll=1.0, pruned_nll=2.0, prompt_tokens=6, response_tokens=4, truncated=False
    )
    assert score.cost == 100
    assert score.ies == pytest.approx(0.3 / math.log(100))
    assert math.isnan(SampleScore("y", 0.3, 1.0, 2.0, 1, 0, False).ies)


# --- the packaged SmolLM2 ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2(smollm2_conversion):
    model, tokenizer = load_causal_lm(parse_model_reference(None), smollm2_conversion.cache_dir)
    pruned = copy.deepcopy(model)
    prune_model(pruned, PruneRecipe("magnitude", 0.5))
    rows = generate_demo_pool(3)
    samples = [
        encode_sample(tokenizer, str(i), row["instruction"], row["input"], row["output"], max_tokens=256)
        for i, row in enumerate(rows)
    ]
    return model, pruned, tokenizer, samples


@pytest.mark.system
def test_smollm2_pruned_pair(smollm2):
    model, pruned, tokenizer, samples = smollm2
    assert tokenizer.chat_template and tokenizer.pad_token_id is not None
    scores = PairScorer(model, pruned, tokenizer.pad_token_id).score(samples)
    assert len(scores) == 3
    for score in scores:
        assert math.isfinite(score.jsd) and 0.0 < score.jsd <= LN2
        assert math.isfinite(score.original_nll) and math.isfinite(score.pruned_nll)
    assert statistics.mean(s.original_nll for s in scores) < statistics.mean(s.pruned_nll for s in scores)


@pytest.mark.system
def test_smollm2_bfloat16_heads_match_float32_heads(smollm2):
    model, pruned, tokenizer, samples = smollm2
    exact = PairScorer(model, pruned, tokenizer.pad_token_id, head_precision="float32").score(samples)
    fast = PairScorer(model, pruned, tokenizer.pad_token_id, head_precision="bfloat16").score(samples)
    for a, b in zip(exact, fast, strict=True):
        # Measured on 200 rows of ../shared/data: 2e-4 nats on average (bench/rescore.py).
        assert abs(a.jsd - b.jsd) < 2e-3
        assert abs(a.original_nll - b.original_nll) < 2e-2 and abs(a.pruned_nll - b.pruned_nll) < 2e-2


@pytest.mark.system
def test_smollm2_against_itself_is_zero(smollm2):
    model, _, tokenizer, samples = smollm2
    for score in PairScorer(model, model, tokenizer.pad_token_id).score(samples):
        assert score.jsd == 0.0
        assert score.original_nll == score.pruned_nll and math.isfinite(score.original_nll)


@pytest.mark.system
def test_smollm2_bfloat16_decoder_stays_close_to_float32_and_scores_itself_zero(smollm2):
    from paser_assets.models.device import Placement, place_model

    model, pruned, tokenizer, samples = smollm2
    where = Placement(torch.device("cpu"), "bfloat16")
    model_low, pruned_low = (place_model(copy.deepcopy(m), where) for m in (model, pruned))
    exact = PairScorer(model, pruned, tokenizer.pad_token_id).score(samples)
    scorer = PairScorer(model_low, pruned_low, tokenizer.pad_token_id)
    assert (scorer.precision, scorer.head_precision) == ("bfloat16", "bfloat16")  # auto heads follow
    for a, b in zip(exact, scorer.score(samples), strict=True):
        # Measured on 12 rows of ../shared/data: 7e-4 nats on average, at most 2e-3, on JSDs of 0.1-0.5.
        assert abs(a.jsd - b.jsd) <= 0.03 * a.jsd + 1e-3, (a, b)
        # On these 4-token demo responses the NLLs reach 15 nats; bfloat16 moves them by about 1%.
        assert b.original_nll == pytest.approx(a.original_nll, rel=0.03)
        assert b.pruned_nll == pytest.approx(a.pruned_nll, rel=0.03)
    same = PairScorer(model_low, copy.deepcopy(model_low), tokenizer.pad_token_id).score(samples)
    assert all(s.jsd == 0.0 and s.original_nll == s.pruned_nll for s in same)


# --- the original-output cache ---------------------------------------------------------------------------


def test_cached_original_states_give_the_same_scores_with_the_pruned_model_alone(
    model, pruned, tokenizer, samples, tmp_path
):
    from paser_assets.models.original_cache import OriginalOutputCache

    cache = OriginalOutputCache(tmp_path, "key")
    first = PairScorer(model, pruned, tokenizer.pad_token_id).score_batch(samples, cache)
    assert not first.used_cache and len(first.states) == len(samples)
    assert all(s.hidden.dtype == np.float16 for s in first.states.values())
    cache.put(first.states)
    reopened = OriginalOutputCache(tmp_path, "key")
    assert len(reopened) == len(samples)
    again = PairScorer(None, pruned, tokenizer.pad_token_id).score_batch(
        samples, reopened, model.get_output_embeddings()
    )
    assert again.used_cache
    # The live pass rounds the states exactly as they are cached: the numbers are the same to the bit.
    assert first.scores == again.scores


def test_identical_models_score_exactly_zero_with_and_without_the_cache(model, tokenizer, samples, tmp_path):
    from paser_assets.models.original_cache import OriginalOutputCache

    cache = OriginalOutputCache(tmp_path, "same")
    first = PairScorer(model, model, tokenizer.pad_token_id).score_batch(samples, cache)
    cache.put(first.states)
    second = PairScorer(None, model, tokenizer.pad_token_id).score_batch(samples, cache, model.get_output_embeddings())
    assert second.used_cache
    assert all(s.jsd == 0.0 for s in first.scores + second.scores)


def test_states_that_overflow_float16_are_kept_in_float32():
    from paser_assets.models.original_cache import compact_states

    assert compact_states(np.array([[1.5, -2.0]], dtype=np.float32)).hidden.dtype == np.float16
    assert compact_states(np.array([[1e6, 0.0]], dtype=np.float32)).hidden.dtype == np.float32


def test_missing_original_model_or_head_is_a_clear_error(model, pruned, tokenizer, samples, tmp_path):
    from paser_assets.models.original_cache import OriginalOutputCache

    with pytest.raises(ValueError, match="original model is needed"):
        PairScorer(None, pruned, tokenizer.pad_token_id).score_batch(samples, OriginalOutputCache(tmp_path, "x"))
    cache = OriginalOutputCache(tmp_path, "y")
    cache.put(PairScorer(model, pruned, tokenizer.pad_token_id).score_batch(samples, cache).states)
    with pytest.raises(ValueError, match="output head"):
        PairScorer(None, pruned, tokenizer.pad_token_id).score_batch(samples, cache)


def test_the_jsd_kernel_is_compiled_only_for_large_vocabularies(model, tokenizer):
    from paser_assets.models.scoring import COMPILE_MIN_VOCABULARY

    vocabulary = model.get_output_embeddings().weight.shape[0]
    assert vocabulary < COMPILE_MIN_VOCABULARY  # the tiny test model
    assert PairScorer(model, model, tokenizer.pad_token_id).compile_jsd is False
    assert PairScorer(model, model, tokenizer.pad_token_id, compile_jsd=True).compile_jsd is True


@pytest.mark.system
def test_compiled_scoring_matches_eager_scoring(model, pruned, tokenizer, samples):
    eager = PairScorer(model, pruned, tokenizer.pad_token_id, compile_jsd=False).score(samples)
    compiled = PairScorer(model, pruned, tokenizer.pad_token_id, compile_jsd=True).score(samples)
    for a, b in zip(eager, compiled, strict=True):
        assert a.sample_id == b.sample_id
        assert abs(a.jsd - b.jsd) < 1e-6 and abs(a.pruned_nll - b.pruned_nll) < 1e-5
    assert all(s.jsd == 0.0 for s in PairScorer(model, model, tokenizer.pad_token_id, compile_jsd=True).score(samples))


# --- output-head precision -------------------------------------------------------------------------------


def test_head_precision_auto_follows_the_models_precision_for_large_vocabularies():
    from paser_assets.models import scoring

    assert scoring.resolve_head_precision("float32", 10**6, "bfloat16") == "float32"
    assert scoring.resolve_head_precision("bfloat16", 10) == "bfloat16"
    large = scoring.COMPILE_MIN_VOCABULARY
    assert scoring.resolve_head_precision("auto", large, "bfloat16") == "bfloat16"
    assert scoring.resolve_head_precision("auto", large - 1, "bfloat16") == "float32"
    assert scoring.resolve_head_precision("auto", large, "float32") == "float32"
    assert scoring.resolve_head_precision("auto", large, "float16") == "float32"
    with pytest.raises(ValueError, match="'half'"):
        scoring.resolve_head_precision("half", large)


def test_the_tiny_model_keeps_float32_heads_by_default(model, tokenizer):
    assert PairScorer(model, model, tokenizer.pad_token_id).head_precision == "float32"


def test_bfloat16_heads_stay_close_to_float32_and_the_cache_path_matches_to_the_bit(
    sharp_pair, tokenizer, samples, tmp_path
):
    from paser_assets.models.original_cache import OriginalOutputCache

    original, pruned = sharp_pair
    pad = tokenizer.pad_token_id
    exact = PairScorer(original, pruned, pad, head_precision="float32").score(samples)
    cache = OriginalOutputCache(tmp_path, "bf16")
    live = PairScorer(original, pruned, pad, head_precision="bfloat16").score_batch(samples, cache)
    cache.put(live.states)
    cached = PairScorer(None, pruned, pad, head_precision="bfloat16").score_batch(
        samples, cache, original.get_output_embeddings()
    )
    assert cached.used_cache and cached.scores == live.scores
    assert statistics.mean(s.jsd for s in exact) > 0.01
    for a, b in zip(exact, live.scores, strict=True):
        assert a.sample_id == b.sample_id
        assert abs(a.jsd - b.jsd) < 2e-3
        assert abs(a.original_nll - b.original_nll) < 2e-2 and abs(a.pruned_nll - b.pruned_nll) < 2e-2
    same = PairScorer(original, original, pad, head_precision="bfloat16").score(samples)
    assert all(s.jsd == 0.0 for s in same)


# --- decoder precision and device ------------------------------------------------------------------------


def float32_scores_as_before_the_precision_setting(original, pruned, batch, pad_token_id, chunk_size=128):
    """The scoring path as it was before models could run elsewhere than in float32 on the CPU, spelled out
    from the primitives: per-sample float16 rounding of both models' states, float32 module heads, the
    eager kernel a chunk at a time, and float64 per-sample means."""
    from paser_assets.core.divergence import divergence_and_nll
    from paser_assets.models.original_cache import compact_states
    from paser_assets.models.scoring import _final_hidden, pack_batch

    input_ids, mask, rows, columns = pack_batch(batch, pad_token_id)
    targets = input_ids[rows, columns + 1]

    def rounded(model):
        live = _final_hidden(model, input_ids, mask)[rows, columns]
        pieces, offset = [], 0
        for sample in batch:
            pieces.append(compact_states(live[offset : offset + sample.response_tokens].numpy()).hidden)
            offset += sample.response_tokens
        return torch.from_numpy(np.concatenate([p.astype(np.float32) for p in pieces]))

    with torch.inference_mode():
        hidden_p, hidden_q = rounded(original), rounded(pruned)
        outputs = [torch.empty(len(targets)) for _ in range(3)]
        for start in range(0, len(targets), chunk_size):
            part = slice(start, start + chunk_size)
            logits_p = original.get_output_embeddings()(hidden_p[part])
            logits_q = pruned.get_output_embeddings()(hidden_q[part])
            for output, value in zip(outputs, divergence_and_nll(logits_p, logits_q, targets[part]), strict=True):
                output[part] = value
    result, offset = [], 0
    for sample in batch:
        part = slice(offset, offset + sample.response_tokens)
        result.append(tuple(float(output[part].double().mean()) for output in outputs))
        offset += sample.response_tokens
    return result


def test_float32_scores_are_unchanged_to_the_bit(sharp_pair, tokenizer, samples):
    original, pruned = sharp_pair
    scorer = PairScorer(original, pruned, tokenizer.pad_token_id, head_precision="auto", device="cpu")
    assert (scorer.precision, scorer.head_precision, scorer.device) == ("float32", "float32", torch.device("cpu"))
    for batch in (samples[:3], samples):
        before = float32_scores_as_before_the_precision_setting(original, pruned, batch, tokenizer.pad_token_id)
        now = [(s.jsd, s.original_nll, s.pruned_nll) for s in scorer.score(batch)]
        assert now == before


@pytest.fixture(scope="module")
def bfloat16_sharp_pair(sharp_pair):
    from paser_assets.models.device import Placement, place_model

    where = Placement(torch.device("cpu"), "bfloat16")
    return tuple(place_model(copy.deepcopy(model), where) for model in sharp_pair)


def test_a_model_loaded_in_bfloat16_holds_bfloat16_weights_and_scores_in_it(tiny_llama_dir, tmp_path, tokenizer):
    from paser_assets.models.device import Placement

    where = Placement(torch.device("cpu"), "bfloat16")
    model, _ = load_causal_lm(parse_model_reference(str(tiny_llama_dir)), tmp_path, placement=where)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device for p in model.parameters()} == {torch.device("cpu")}
    scorer = PairScorer(model, model, tokenizer.pad_token_id)
    assert (scorer.precision, scorer.device) == ("bfloat16", torch.device("cpu"))


# The tiny Llama's bfloat16 decoder moves the sharpened pair's JSD (about 0.01) by up to 8e-4 nats, 6%.
BFLOAT16_JSD = 2e-3


@pytest.mark.parametrize("head_precision", ["float32", "bfloat16"])
def test_bfloat16_decoder_scores_stay_close_to_float32(
    sharp_pair, bfloat16_sharp_pair, tokenizer, samples, head_precision
):
    exact = PairScorer(*sharp_pair, tokenizer.pad_token_id).score(samples)
    scorer = PairScorer(*bfloat16_sharp_pair, tokenizer.pad_token_id, head_precision=head_precision)
    assert scorer.precision == "bfloat16" and scorer.head_precision == head_precision
    fast = scorer.score(samples)
    assert statistics.mean(s.jsd for s in exact) > 0.005
    for a, b in zip(exact, fast, strict=True):
        assert a.sample_id == b.sample_id and b.jsd > 0
        assert abs(a.jsd - b.jsd) < BFLOAT16_JSD
        assert abs(a.original_nll - b.original_nll) < 5e-2 and abs(a.pruned_nll - b.pruned_nll) < 5e-2


def test_identical_bfloat16_models_score_exactly_zero_live_and_from_the_cache(
    bfloat16_sharp_pair, tokenizer, samples, tmp_path
):
    from paser_assets.models.original_cache import OriginalOutputCache

    original = bfloat16_sharp_pair[0]
    twin = copy.deepcopy(original)
    for head_precision in ("float32", "bfloat16"):
        cache = OriginalOutputCache(tmp_path, head_precision)
        live = PairScorer(original, twin, tokenizer.pad_token_id, head_precision=head_precision).score_batch(
            samples, cache
        )
        cache.put(live.states)
        cached = PairScorer(None, twin, tokenizer.pad_token_id, head_precision=head_precision).score_batch(
            samples, cache, original.get_output_embeddings()
        )
        assert cached.used_cache and cached.scores == live.scores
        assert all(s.jsd == 0.0 and s.original_nll == s.pruned_nll for s in live.scores)


def test_bfloat16_states_are_cached_in_float16_without_loss(bfloat16_sharp_pair, tokenizer, samples, tmp_path):
    from paser_assets.models.original_cache import OriginalOutputCache
    from paser_assets.models.scoring import _final_hidden, pack_batch

    original, _ = bfloat16_sharp_pair
    result = PairScorer(*bfloat16_sharp_pair, tokenizer.pad_token_id).score_batch(
        samples[:2], OriginalOutputCache(tmp_path, "k")
    )
    input_ids, mask, rows, columns = pack_batch(samples[:2], tokenizer.pad_token_id)
    with torch.inference_mode():
        live = _final_hidden(original, input_ids, mask)[rows, columns].float().numpy()
    cached = np.concatenate([result.states[s.sample_id].hidden for s in samples[:2]])
    assert cached.dtype == np.float16
    assert np.array_equal(cached.astype(np.float32), live)


def test_token_budget_from_free_memory():
    from paser_assets.models.scoring import gpu_token_budget

    assert gpu_token_budget(free_bytes=80 * 2**30, per_token_bytes=16_000) == 1 << 18  # capped
    assert gpu_token_budget(free_bytes=2**30, per_token_bytes=16_000) == 2**29 // 16_000
    assert gpu_token_budget(2**30, 16_000, fixed_bytes=2**28) == (2**29 - 2**28) // 16_000
    assert gpu_token_budget(2**20, 16_000) == 512  # at least a few rows
    assert gpu_token_budget(2**30, 16_000, share=0.25) < gpu_token_budget(2**30, 16_000)


def test_batch_limits_are_fixed_on_a_cpu_and_follow_the_settings(model):
    from paser_assets.models.scoring import CPU_MAX_BATCH, CPU_TOKEN_BUDGET, activation_bytes_per_token, batch_limits

    assert batch_limits("cpu", model, 512) == (CPU_TOKEN_BUDGET, CPU_MAX_BATCH) == (4096, 16)
    assert batch_limits("cpu", model, 512, token_budget=1000, max_batch=3) == (1000, 3)
    # The tiny Llama: hidden 32, intermediate 64, 4 heads; bfloat16 elements.
    assert activation_bytes_per_token(model.config, 2, 256) == 2 * (6 * 32 + 3 * 64 + 4 * 256)
