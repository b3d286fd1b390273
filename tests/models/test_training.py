"""LoRA recovery training, adapter save/load, held-out NLL and the general text set
(paser_assets.models.training, paser_assets.models.general_text), on the tiny Llama."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import tempfile
from pathlib import Path

import pytest
import torch

from paser_assets.models.device import Placement, place_model
from paser_assets.models.general_text import general_text, general_text_samples
from paser_assets.models.scoring import EncodedSample, encode_sample
from paser_assets.models.training import (
    LoraSettings,
    _batch_tensors,
    distillation_loss,
    learning_rate_scheduler,
    load_adapter,
    perplexity,
    response_loss,
    response_nll,
    save_adapter,
    train_lora,
)
from paser_assets.pool.demo import generate_demo_pool

EPOCHS = 8
SETTINGS = LoraSettings(learning_rate=1e-2, epochs=EPOCHS, batch_size=4, seed=0)
MAX_TOKENS = 64


@pytest.fixture(scope="module")
def base(tiny_pair):
    """The tiny Llama (not to be modified: train on deep copies)."""
    return tiny_pair[0]


@pytest.fixture(scope="module")
def samples(tokenizer) -> list[EncodedSample]:
    rows = generate_demo_pool(16, seed=4)
    return [
        encode_sample(tokenizer, f"s{i:02d}", r["instruction"], r["input"], r["output"], MAX_TOKENS)
        for i, r in enumerate(rows)
    ]


@pytest.fixture(scope="module")
def trained(base, tokenizer, samples):
    """(peft model, training log) of 8 epochs over 16 samples, batches of 4 (32 steps)."""
    return train_lora(copy.deepcopy(base), samples, tokenizer.pad_token_id, SETTINGS)


def epoch_means(losses: list[float], epochs: int) -> list[float]:
    steps = len(losses) // epochs
    return [sum(losses[e * steps : (e + 1) * steps]) / steps for e in range(epochs)]


def logits(model, sample: EncodedSample) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([sample.input_ids])).logits[0].float()


# -- train_lora


def test_response_loss_equals_the_models_own_labelled_loss(base, tokenizer, samples) -> None:
    input_ids, attention_mask, labels = _batch_tensors(samples[:4], tokenizer.pad_token_id)
    with torch.inference_mode():
        expected = base(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        ours = response_loss(base, input_ids, attention_mask, labels)
    assert float(ours) == pytest.approx(float(expected), rel=1e-5)


def test_distillation_loss_is_the_mean_kl_from_the_teacher_over_the_response_tokens(sharp_pair, samples) -> None:
    original, pruned = sharp_pair
    batch = samples[:3]
    input_ids, attention_mask, labels = _batch_tensors(batch, pad_id=0)
    with torch.no_grad():
        loss = distillation_loss(pruned, original, input_ids, attention_mask, labels)
        same = distillation_loss(original, original, input_ids, attention_mask, labels)
    terms = []
    for sample in batch:
        teacher, student = (torch.log_softmax(logits(m, sample), dim=-1) for m in (original, pruned))
        for position in range(sample.prompt_tokens - 1, len(sample.input_ids) - 1):  # predicts a response token
            terms.append((teacher[position].exp() * (teacher[position] - student[position])).sum())
    assert float(loss) == pytest.approx(float(torch.stack(terms).mean()), rel=1e-4)
    assert float(loss) > 0.01 and abs(float(same)) < 1e-6


def test_distillation_brings_the_model_towards_the_teacher(sharp_pair, samples) -> None:
    original, pruned = sharp_pair
    input_ids, attention_mask, labels = _batch_tensors(samples, pad_id=0)
    with torch.no_grad():
        before = float(distillation_loss(pruned, original, input_ids, attention_mask, labels))
    # The sharp pair's 40x head makes steep gradients: a rate of 1e-2 overshoots here, 1e-3 converges.
    settings = LoraSettings(learning_rate=1e-3, epochs=4, batch_size=4, seed=0, loss="distillation")
    model, _ = train_lora(copy.deepcopy(pruned), samples, 0, settings, teacher=original)
    with torch.no_grad():
        after = float(distillation_loss(model, original, input_ids, attention_mask, labels))
    assert after < 0.5 * before


def test_the_loss_setting_offers_exactly_the_losses() -> None:
    import typing

    from paser_assets.models.training import LOSSES
    from paser_assets.settings import RecoverySettings

    assert typing.get_args(RecoverySettings.model_fields["lora_loss"].annotation) == LOSSES
    assert RecoverySettings(lora_loss="distillation").lora(0).loss == "distillation"
    assert RecoverySettings().lora(0).loss == LoraSettings().loss == LOSSES[0]


def test_distillation_needs_a_teacher_and_a_known_loss(base, samples) -> None:
    with pytest.raises(ValueError, match="teacher"):
        train_lora(copy.deepcopy(base), samples, 0, LoraSettings(loss="distillation"))
    with pytest.raises(ValueError, match="unknown recovery loss 'mse'"):
        train_lora(copy.deepcopy(base), samples, 0, LoraSettings(loss="mse"))


def scheduled_factors(total: int, warmup: float, schedule: str) -> list[float]:
    """lr_t / lr of the first ``total`` steps of learning_rate_scheduler."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = learning_rate_scheduler(optimizer, total, warmup, schedule)
    factors = []
    for _ in range(total):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    total = 20  # warm-up of 10%: steps 0 and 1 (transformers' warm-up starts at 0)
    cosine = scheduled_factors(total, 0.1, "cosine")
    assert cosine[:3] == [0.0, 0.5, 1.0]
    assert all(a >= b for a, b in itertools.pairwise(cosine[2:]))
    assert cosine[-1] < 0.01
    linear = scheduled_factors(total, 0.1, "linear")
    assert linear[2] == 1.0 and linear[-1] == pytest.approx(1 / 18)
    assert scheduled_factors(total, 0.0, "constant") == [1.0] * total
    with pytest.raises(ValueError, match="schedule"):
        scheduled_factors(total, 0.1, "exponential")


def test_training_follows_the_schedule(trained) -> None:
    _, record = trained
    rates = record.learning_rates
    steps = len(record.steps)
    warmup = math.ceil(SETTINGS.warmup * steps)
    assert len(rates) == steps
    assert rates[0] == 0.0 and rates[1] == pytest.approx(SETTINGS.learning_rate / warmup)
    assert max(rates) == pytest.approx(SETTINGS.learning_rate)
    assert rates[-1] < 0.05 * SETTINGS.learning_rate


def test_lora_training_reduces_the_training_loss(trained, samples) -> None:
    _, log = trained
    assert len(log.losses) == EPOCHS * math.ceil(len(samples) / SETTINGS.batch_size)
    assert log.steps == list(range(1, len(log.losses) + 1))
    assert all(math.isfinite(loss) for loss in log.losses)
    means = epoch_means(log.losses, EPOCHS)
    assert means[0] > 5.0  # a random model over ~600 tokens starts near ln(600) = 6.4
    assert means[-1] < means[0] - 0.1, means
    assert all(mean < means[0] for mean in means[1:]), means
    assert log.tokens == EPOCHS * sum(len(s.input_ids) for s in samples)
    assert log.seconds > 0


def test_only_the_lora_parameters_change(base, trained) -> None:
    peft_model, _ = trained
    original = dict(base.named_parameters())
    lora, frozen = 0, 0
    for name, parameter in peft_model.named_parameters():
        if "lora_" in name:
            lora += 1
            assert parameter.requires_grad, name
            continue
        frozen += 1
        assert not parameter.requires_grad, name
        base_name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        assert torch.equal(parameter, original[base_name]), name
    assert frozen == len(original)
    # Two LoRA matrices per targeted linear: 7 projections in each of the 2 layers.
    assert lora == 2 * 7 * 2
    layer = peft_model.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.equal(layer.base_layer.weight, base.model.layers[0].self_attn.q_proj.weight)
    assert layer.lora_B["default"].weight.abs().sum() > 0  # B starts at zero: training moved it


def test_training_changes_the_model_outputs(base, trained, samples) -> None:
    peft_model, _ = trained
    assert not torch.allclose(logits(peft_model, samples[0]), logits(base, samples[0]), atol=1e-4)


def test_training_is_deterministic_for_a_seed(base, tokenizer, samples, trained) -> None:
    short = LoraSettings(learning_rate=1e-2, epochs=2, batch_size=4, seed=0)
    _, first = train_lora(copy.deepcopy(base), samples, tokenizer.pad_token_id, short)
    _, again = train_lora(copy.deepcopy(base), samples, tokenizer.pad_token_id, short)
    assert first.losses == again.losses
    # The same initialisation and first batch as the long run (whose schedule, longer, differs after it).
    assert first.losses[0] == trained[1].losses[0]
    _, other = train_lora(
        copy.deepcopy(base), samples, tokenizer.pad_token_id, LoraSettings(learning_rate=1e-2, epochs=2, seed=1)
    )
    assert other.losses != first.losses


def test_training_refuses_no_samples_and_missing_targets(base, tokenizer, samples) -> None:
    with pytest.raises(ValueError, match="no samples"):
        train_lora(copy.deepcopy(base), [], tokenizer.pad_token_id, SETTINGS)
    with pytest.raises(ValueError, match="target modules"):
        train_lora(copy.deepcopy(base), samples, tokenizer.pad_token_id, LoraSettings(target_modules=("nope",)))


def test_training_logs_progress_with_an_eta(base, tokenizer, samples) -> None:
    lines: list[str] = []
    train_lora(
        copy.deepcopy(base), samples[:4], tokenizer.pad_token_id, LoraSettings(batch_size=2, epochs=1), lines.append
    )
    assert lines and lines[-1].startswith("LoRA step 2/2, loss ")
    assert "ETA" in lines[-1]


# -- save_adapter / load_adapter


def test_adapter_round_trips_through_safetensors(base, trained, samples, tmp_path: Path) -> None:
    peft_model, _ = trained
    folder = save_adapter(peft_model, tmp_path / "adapter")
    files = {path.name for path in folder.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not any(name.endswith(".bin") for name in files)
    recovered = load_adapter(copy.deepcopy(base), folder)
    assert not recovered.training
    for sample in samples[:3]:
        expected = logits(peft_model, sample)
        assert torch.allclose(logits(recovered, sample), expected, atol=1e-5, rtol=0)


def test_load_adapter_refuses_a_folder_without_safetensors(base, trained, tmp_path: Path) -> None:
    folder = save_adapter(trained[0], tmp_path / "adapter")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"adapter_model\.safetensors"):
        load_adapter(copy.deepcopy(base), folder)


# -- response_nll


def manual_nll(model, sample: EncodedSample, first: int | None = None) -> float:
    """Mean cross-entropy of tokens ``first..`` (default: the response) from the full logits of the sample alone."""
    first = sample.prompt_tokens if first is None else first
    log_probs = torch.log_softmax(logits(model, sample).double(), dim=-1)
    targets = torch.tensor(sample.input_ids[first:])
    return float(-log_probs[first - 1 : len(sample.input_ids) - 1].gather(1, targets[:, None]).mean())


def test_response_nll_matches_a_manual_cross_entropy(base, tokenizer, samples) -> None:
    result = response_nll(base, samples, tokenizer.pad_token_id)
    assert set(result) == {s.sample_id for s in samples}
    for sample in samples:
        assert result[sample.sample_id] == pytest.approx(manual_nll(base, sample), abs=1e-5)


def test_response_nll_excludes_the_prompt_tokens(base, tokenizer, samples) -> None:
    sample = samples[0]
    assert sample.prompt_tokens > 2
    whole = manual_nll(base, sample, first=1)  # every token after the first, prompt included
    response = response_nll(base, [sample], tokenizer.pad_token_id)[sample.sample_id]
    assert abs(response - whole) > 1e-3
    # Moving the prompt/response boundary changes which positions count, and only those.
    shifted = EncodedSample(sample.sample_id, sample.input_ids, sample.prompt_tokens + 3, sample.truncated)
    moved = response_nll(base, [shifted], tokenizer.pad_token_id)[sample.sample_id]
    assert moved == pytest.approx(manual_nll(base, shifted), abs=1e-5)
    assert abs(moved - response) > 1e-4


def test_response_nll_does_not_depend_on_the_batch(base, tokenizer, samples) -> None:
    together = response_nll(base, samples, tokenizer.pad_token_id)
    small = response_nll(base, samples, tokenizer.pad_token_id, token_budget=128, chunk_size=7)
    for sample in samples:
        assert small[sample.sample_id] == pytest.approx(together[sample.sample_id], abs=1e-5)


def test_response_nll_of_a_peft_model_uses_its_adapter(trained, tokenizer, samples) -> None:
    peft_model, _ = trained
    result = response_nll(peft_model, samples[:4], tokenizer.pad_token_id)
    for sample in samples[:4]:
        assert result[sample.sample_id] == pytest.approx(manual_nll(peft_model, sample), abs=1e-5)


# -- general text and perplexity


def test_general_text_samples_are_fixed_length_consecutive_segments(tokenizer) -> None:
    segments = general_text_samples(tokenizer, tokens=32, limit=5)
    assert [s.sample_id for s in segments] == [f"general-{i:03d}" for i in range(5)]
    assert all(len(s.input_ids) == 32 and s.prompt_tokens == 1 and s.response_tokens == 31 for s in segments)
    assert not any(s.truncated for s in segments)
    ids = tokenizer(general_text(), add_special_tokens=False)["input_ids"]
    assert [t for s in segments for t in s.input_ids] == ids[: 5 * 32]
    assert general_text_samples(tokenizer, tokens=32, limit=5) == segments


def test_general_text_is_long_prose() -> None:
    text = general_text()
    assert len(text.split()) > 20_000  # enough for the 32 segments of 256 tokens the evaluation reads
    assert text == general_text()
    assert "argparse" in text.lower()


def test_perplexity_is_exp_of_the_mean_nll() -> None:
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(5.0)) == pytest.approx(5.0)
    assert perplexity(2.5) == pytest.approx(math.exp(2.5))
    assert perplexity(1000.0) == math.inf  # exp would overflow
    assert perplexity(math.inf) == math.inf
    assert perplexity(math.nan) == math.inf


# -- device and precision


def autocast_states(model) -> tuple[list[bool], object]:
    """Record, at every decoder forward of ``model``, whether CPU autocast to bfloat16 is on."""
    seen: list[bool] = []

    def hook(module, args, kwargs) -> None:
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)

    return seen, model.model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.system
def test_bfloat16_training_keeps_float32_adapters_over_a_bfloat16_base_under_autocast(base, tokenizer, samples):
    where = Placement(torch.device("cpu"), "bfloat16")
    model = copy.deepcopy(base)
    seen, hook = autocast_states(model)
    short = LoraSettings(learning_rate=1e-2, epochs=2, batch_size=4, seed=0)
    peft_model, log = train_lora(model, samples, tokenizer.pad_token_id, short, placement=where)
    hook.remove()
    assert log.precision == "bfloat16" and seen and all(seen)
    adapters = {name: p for name, p in peft_model.named_parameters() if "lora_" in name}
    assert adapters and {p.dtype for p in adapters.values()} == {torch.float32}  # the master weights
    assert all(p.requires_grad for p in adapters.values())
    frozen = {p.dtype for name, p in peft_model.named_parameters() if "lora_" not in name}
    assert frozen == {torch.bfloat16}
    _, exact = train_lora(copy.deepcopy(base), samples, tokenizer.pad_token_id, short)
    assert exact.precision == "float32"
    # The same batches in the same order: bfloat16 follows the float32 loss curve closely, not exactly.
    assert len(log.losses) == len(exact.losses) and log.losses != exact.losses
    for fast, slow in zip(log.losses, exact.losses, strict=True):
        assert abs(fast - slow) < 0.05 * slow
    assert epoch_means(log.losses, 2)[1] < epoch_means(log.losses, 2)[0]


def test_float32_training_without_a_placement_is_as_with_the_default_one(base, tokenizer, samples):
    short = LoraSettings(learning_rate=1e-2, epochs=1, batch_size=4, seed=0)
    model = copy.deepcopy(base)
    seen, hook = autocast_states(model)
    _, placed = train_lora(model, samples, tokenizer.pad_token_id, short, placement=Placement())
    hook.remove()
    _, unplaced = train_lora(copy.deepcopy(base), samples, tokenizer.pad_token_id, short)
    assert placed.losses == unplaced.losses and seen and not any(seen)


def test_response_nll_in_bfloat16_runs_under_autocast_with_float32_heads(base, trained, tokenizer, samples):
    exact = response_nll(base, samples, tokenizer.pad_token_id)
    model = place_model(copy.deepcopy(base), Placement(torch.device("cpu"), "bfloat16"))
    seen, hook = autocast_states(model)
    fast = response_nll(model, samples, tokenizer.pad_token_id, device="cpu")
    hook.remove()
    assert seen and all(seen)
    for sample in samples:
        # A random tiny model's NLL is about 6.4; bfloat16 states move it by a few hundredths.
        assert fast[sample.sample_id] == pytest.approx(exact[sample.sample_id], abs=0.05)
        assert fast[sample.sample_id] != exact[sample.sample_id]
    # A float32 adapter over the bfloat16 base: the LoRA branch runs in bfloat16 too, and still counts.
    folder = save_adapter(trained[0], Path(tempfile.mkdtemp()) / "adapter")
    recovered = load_adapter(place_model(copy.deepcopy(base), Placement(torch.device("cpu"), "bfloat16")), folder)
    with_adapter = response_nll(recovered, samples[:4], tokenizer.pad_token_id)
    float32_adapter = response_nll(trained[0], samples[:4], tokenizer.pad_token_id)
    for sample in samples[:4]:
        assert with_adapter[sample.sample_id] == pytest.approx(float32_adapter[sample.sample_id], abs=0.05)
        assert abs(with_adapter[sample.sample_id] - fast[sample.sample_id]) > 0.1


# -- the schedule from transformers.get_scheduler, gradient accumulation and checkpointing as settings


def test_the_learning_rate_per_step_is_transformers_warm_up_and_cosine(trained) -> None:
    """lr_t = lr * t / w for t < w (w = ceil(0.1 * T)), then lr * (1 + cos(pi * (t - w) / (T - w))) / 2."""
    _, record = trained
    total = len(record.steps)
    warmup = math.ceil(SETTINGS.warmup * total)
    expected = [
        SETTINGS.learning_rate * t / warmup
        if t < warmup
        else SETTINGS.learning_rate * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / (total - warmup)))
        for t in range(total)
    ]
    assert record.learning_rates == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_each_schedule_setting_names_a_transformers_schedule() -> None:
    import typing

    from transformers import SchedulerType

    from paser_assets.models.training import SCHEDULES
    from paser_assets.settings import RecoverySettings

    assert tuple(SCHEDULES) == typing.get_args(RecoverySettings.model_fields["lora_schedule"].annotation)
    assert {SchedulerType(name).value for name in SCHEDULES.values()} == {"cosine", "linear", "constant_with_warmup"}
    total = 10  # warm-up of 3 steps
    assert scheduled_factors(total, 0.3, "constant") == pytest.approx([0.0, 1 / 3, 2 / 3] + [1.0] * 7)
    assert scheduled_factors(total, 0.3, "linear") == pytest.approx([0.0, 1 / 3, 2 / 3] + [(10 - t) / 7 for t in
                                                                                          range(3, 10)])  # fmt: skip


def test_micro_batches_split_a_batch_in_order_and_never_empty() -> None:
    from paser_assets.models.training import micro_batches

    assert micro_batches([5, 6, 7, 8], 1) == [[5, 6, 7, 8]]
    assert micro_batches([5, 6, 7, 8, 9], 2) == [[5, 6, 7], [8, 9]]
    assert micro_batches([5, 6], 4) == [[5], [6]]
    with pytest.raises(ValueError, match="at least 1"):
        micro_batches([1], 0)


def test_gradient_accumulation_takes_one_step_per_batch_and_the_same_losses(base, tokenizer, samples) -> None:
    """PASER_LORA_BATCH_SIZE samples per optimizer step whatever the micro-batching: the same steps, learning
    rates, tokens and (up to rounding) losses and adapter as without accumulation."""
    whole = LoraSettings(learning_rate=1e-2, epochs=2, batch_size=4, seed=0)
    model_1, one = train_lora(copy.deepcopy(base), samples, tokenizer.pad_token_id, whole)
    split = dataclasses.replace(whole, grad_accumulation=3)  # micro-batches of 2, 1 and 1 samples
    model_3, three = train_lora(copy.deepcopy(base), samples, tokenizer.pad_token_id, split)
    assert len(three.steps) == len(one.steps) == 2 * math.ceil(len(samples) / 4)
    assert three.learning_rates == one.learning_rates and three.tokens == one.tokens
    assert three.losses == pytest.approx(one.losses, rel=1e-5)
    # Adam divides by the root of the squared gradients, which magnifies rounding where a gradient is near 0:
    # measured 3e-5 at most, on weights of about 0.2; the model's outputs agree to about 1e-6.
    for (name, a), (_, b) in zip(model_1.named_parameters(), model_3.named_parameters(), strict=True):
        if "lora_" in name:
            assert torch.allclose(a, b, rtol=0.0, atol=2e-4), name
    assert torch.allclose(logits(model_1, samples[0]), logits(model_3, samples[0]), rtol=0.0, atol=1e-4)


def test_gradient_checkpointing_as_a_setting_gives_the_same_training(base, tokenizer, samples) -> None:
    short = LoraSettings(learning_rate=1e-2, epochs=1, batch_size=4, seed=0)
    _, plain = train_lora(copy.deepcopy(base), samples, tokenizer.pad_token_id, short)
    model = copy.deepcopy(base)
    _, checkpointed = train_lora(
        model, samples, tokenizer.pad_token_id, dataclasses.replace(short, gradient_checkpointing=True)
    )
    assert checkpointed.losses == pytest.approx(plain.losses, rel=1e-5)
    checkpointing = getattr(model, "is_activation_checkpointing", None)
    assert not (model.is_gradient_checkpointing if checkpointing is None else checkpointing)  # off again


def test_accumulation_and_checkpointing_settings_reach_lora_and_keep_the_recipe() -> None:
    from paser_assets.models.adapters import adapter_recipe
    from paser_assets.settings import PaserConfig, RecoverySettings

    env = {"PASER_LORA_GRAD_ACCUMULATION": "4", "PASER_LORA_GRADIENT_CHECKPOINTING": "1"}
    lora = PaserConfig.from_env(env).recovery.lora(0)
    assert lora.grad_accumulation == 4 and lora.gradient_checkpointing is True
    assert RecoverySettings().lora(0).grad_accumulation == 1 and not RecoverySettings().lora(0).gradient_checkpointing
    plain = RecoverySettings().lora(0)
    assert adapter_recipe(lora, "p", ["s"], 64, "float32") == adapter_recipe(plain, "p", ["s"], 64, "float32")
    fields = RecoverySettings.model_fields
    runtime = ("lora_grad_accumulation", "lora_gradient_checkpointing")
    assert all(fields[name].json_schema_extra["affects"] == "runtime" for name in runtime)
    with pytest.raises(ValueError, match="PASER_LORA_GRAD_ACCUMULATION"):
        PaserConfig.from_env({"PASER_LORA_GRAD_ACCUMULATION": "0"})
