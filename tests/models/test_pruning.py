"""Magnitude and Wanda pruning, unstructured and N:M, on the tiny Llama (paser_assets.models.pruning)."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import SHORT_CONTEXT

from paser_assets.models.checkpoints import ContextLimitWarning, load_causal_lm, parse_model_reference
from paser_assets.models.pruning import (
    PruneRecipe,
    calibration_batch,
    decoder_layers,
    measured_sparsity,
    parse_n_m,
    prune_mask,
    prune_model,
)
from paser_assets.pool.demo import generate_demo_pool

LINEARS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


def calibration_texts(seed: int) -> list[str]:
    return [f"{r['instruction']}\n{r['input']}\n{r['output']}" for r in generate_demo_pool(48, seed=seed)]


@pytest.fixture(scope="module")
def calibration(tokenizer) -> torch.Tensor:
    return calibration_batch(tokenizer, calibration_texts(seed=11), samples=8, tokens=32)


@pytest.fixture
def model(tiny_pair):
    """A fresh copy of the tiny Llama for each test to prune in place."""
    return copy.deepcopy(tiny_pair[0])


def pruned_copy(tiny_pair, recipe: PruneRecipe, calibration: torch.Tensor | None = None):
    model = copy.deepcopy(tiny_pair[0])
    prune_model(model, recipe, calibration)
    return model


def decoder_linears(model) -> dict[str, torch.nn.Linear]:
    return {
        f"{index}.{name}": module
        for index, layer in enumerate(decoder_layers(model))
        for name, module in layer.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def zero_masks(model) -> dict[str, torch.Tensor]:
    return {name: linear.weight == 0 for name, linear in decoder_linears(model).items()}


def assert_same_weights(a, b) -> None:
    left, right = a.state_dict(), b.state_dict()
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


# --- recipe and parsing -------------------------------------------------------------------------------


def test_recipe_names_and_effective_sparsity():
    assert PruneRecipe().name == "wanda-50"
    assert PruneRecipe("magnitude", 0.25).name == "magnitude-25"
    assert PruneRecipe("wanda", n_m=(2, 4)).name == "wanda-2of4"
    assert PruneRecipe("magnitude", 0.7).effective_sparsity == 0.7
    assert PruneRecipe("wanda", n_m=(2, 4)).effective_sparsity == 0.5
    assert PruneRecipe("wanda", n_m=(1, 4)).effective_sparsity == 0.75


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "sparsegpt"}, "unknown pruning method"),
        ({"sparsity": 1.0}, r"sparsity must lie in \[0, 1\)"),
        ({"sparsity": -0.1}, r"sparsity must lie in \[0, 1\)"),
        ({"n_m": (2, 2)}, "0 < N < M"),
        ({"n_m": (0, 4)}, "0 < N < M"),
        ({"n_m": (4, 2)}, "0 < N < M"),
    ],
)
def test_recipe_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruneRecipe(**kwargs)


def test_parse_n_m():
    assert parse_n_m("2:4") == (2, 4)
    assert parse_n_m(" 4 : 8 ") == (4, 8)
    assert parse_n_m(None) is None
    assert parse_n_m("") is None
    for bad in ("2-4", "2:", ":4", "a:b", "-1:4", "2:4:8"):
        with pytest.raises(ValueError, match="looks like '2:4'"):
            parse_n_m(bad)


# --- prune_mask on hand-made scores ---------------------------------------------------------------------


SCORES = torch.tensor([[1.0, 9.0, 2.0, 8.0, 7.0, 3.0, 6.0, 4.0], [16.0, 15.0, 14.0, 13.0, 12.0, 11.0, 10.0, 0.5]])


def as_mask(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[c == "x" for c in row] for row in rows])


def test_prune_mask_per_output_removes_the_lowest_of_each_row():
    mask = prune_mask(SCORES, PruneRecipe("wanda", 0.5), per_output=True)
    assert torch.equal(mask, as_mask(["x.x..x.x", "....xxxx"]))
    mask = prune_mask(SCORES, PruneRecipe("wanda", 0.25), per_output=True)
    assert torch.equal(mask, as_mask(["x.x.....", "......xx"]))


def test_prune_mask_global_removes_the_lowest_of_the_matrix():
    mask = prune_mask(SCORES, PruneRecipe("magnitude", 0.5), per_output=False)
    # The eight lowest scores: 0.5, 1, 2, 3, 4, 6, 7, 8; the second row keeps all but its 0.5.
    assert torch.equal(mask, as_mask(["x.xxxxxx", ".......x"]))
    assert int(prune_mask(SCORES, PruneRecipe("magnitude", 0.3), per_output=False).sum()) == int(16 * 0.3)


def test_prune_mask_n_m_works_within_groups():
    mask = prune_mask(SCORES, PruneRecipe("magnitude", n_m=(2, 4)), per_output=False)
    assert torch.equal(mask, as_mask(["x.x..x.x", "..xx..xx"]))
    # The per_output flag does not matter for N:M patterns.
    assert torch.equal(prune_mask(SCORES, PruneRecipe("wanda", n_m=(2, 4)), per_output=True), mask)
    mask = prune_mask(SCORES, PruneRecipe("magnitude", n_m=(1, 4)), per_output=False)
    assert torch.equal(mask, as_mask(["x.xx.xxx", ".xxx.xxx"]))
    mask = prune_mask(SCORES, PruneRecipe("magnitude", n_m=(3, 4)), per_output=False)
    assert torch.equal(mask, as_mask(["x....x..", "...x...x"]))


def test_prune_mask_edge_cases():
    for per_output in (True, False):
        assert not prune_mask(SCORES, PruneRecipe("magnitude", 0.0), per_output=per_output).any()
    # Fewer than one weight per row to remove rounds down to none.
    assert not prune_mask(SCORES, PruneRecipe("wanda", 0.1), per_output=True).any()
    with pytest.raises(ValueError, match="not a multiple of M=3"):
        prune_mask(SCORES, PruneRecipe("magnitude", n_m=(1, 3)), per_output=False)


# --- calibration batch --------------------------------------------------------------------------------


def test_calibration_batch_shape_and_content(tokenizer):
    texts = calibration_texts(seed=11)
    batch = calibration_batch(tokenizer, texts, samples=4, tokens=16)
    assert batch.shape == (4, 16) and batch.dtype == torch.long
    assert not (batch == tokenizer.pad_token_id).any()
    stream: list[int] = []
    for text in texts:
        stream.extend([*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id])
    assert batch.flatten().tolist() == stream[:64]
    assert (batch == tokenizer.eos_token_id).any()  # documents are separated by EOS


def test_calibration_batch_returns_what_the_text_allows(tokenizer):
    texts = calibration_texts(seed=11)[:2]
    total = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
    batch = calibration_batch(tokenizer, texts, samples=1000, tokens=8)
    assert batch.shape == (total // 8, 8)
    with pytest.raises(ValueError, match="shorter than one segment"):
        calibration_batch(tokenizer, ["hi"], samples=2, tokens=total * 10)


def test_calibration_segments_fit_the_models_context(short_context_dir, tmp_path):
    _, short = load_causal_lm(parse_model_reference(str(short_context_dir)), tmp_path / "cache")
    expected = rf"PASER_CALIBRATION_TOKENS=128 is more than the model's context of {SHORT_CONTEXT} tokens"
    with pytest.warns(ContextLimitWarning, match=expected):
        batch = calibration_batch(short, calibration_texts(seed=11), samples=4, tokens=128)
    assert batch.shape == (4, SHORT_CONTEXT)


# --- pruning the tiny Llama ------------------------------------------------------------------------------


def test_magnitude_half_sparsity(model):
    achieved = prune_model(model, PruneRecipe("magnitude", 0.5))
    assert measured_sparsity(model) == pytest.approx(0.5, abs=0.01)
    assert set(achieved) == {"0", "1"}
    assert all(value == pytest.approx(0.5, abs=0.01) for value in achieved.values())


def test_magnitude_removes_the_smallest_weights_of_each_matrix(tiny_pair, model):
    prune_model(model, PruneRecipe("magnitude", 0.5))
    original = decoder_linears(tiny_pair[0])
    for name, linear in decoder_linears(model).items():
        before = original[name].weight.abs()
        removed = linear.weight == 0
        assert int(removed.sum()) == before.numel() // 2, name
        # Every removed weight is no larger than every kept one.
        assert before[removed].max() <= before[~removed].min(), name
        assert torch.equal(linear.weight[~removed], original[name].weight[~removed]), name


def test_wanda_half_sparsity_is_per_output(model, calibration):
    achieved = prune_model(model, PruneRecipe("wanda", 0.5), calibration)
    assert measured_sparsity(model) == pytest.approx(0.5, abs=0.01)
    assert all(value == pytest.approx(0.5, abs=0.01) for value in achieved.values())
    linears = decoder_linears(model)
    assert len(linears) == 2 * len(LINEARS)
    for name, linear in linears.items():
        rows, columns = linear.weight.shape
        zeros_per_row = (linear.weight == 0).sum(dim=1)
        assert torch.equal(zeros_per_row, torch.full((rows,), int(columns * 0.5))), name


def reference_input_norms(model, calibration: torch.Tensor, layer_index: int) -> dict[str, torch.Tensor]:
    """||X_j||_2 of each linear's input in one decoder layer, from a plain forward pass of ``model``."""
    squares: dict[str, torch.Tensor] = {}
    handles = []
    layer = decoder_layers(model)[layer_index]
    for name in LINEARS:

        def record(module, inputs, *, key=name):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            squares[key] = squares.get(key, 0) + (x * x).sum(dim=0)

        handles.append(layer.get_submodule(name).register_forward_pre_hook(record))
    try:
        with torch.inference_mode():
            model(input_ids=calibration, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: total.sqrt().float() for name, total in squares.items()}


def test_wanda_scores_weight_times_input_norm(tiny_pair, calibration):
    """Layer 0 is calibrated on the original activations; layer 1's inputs come from the already
    pruned layer 0, which a forward pass of the finished model reproduces."""
    recipe = PruneRecipe("wanda", 0.5)
    pruned = pruned_copy(tiny_pair, recipe, calibration)
    original_linears, pruned_linears = decoder_linears(tiny_pair[0]), decoder_linears(pruned)
    first = reference_input_norms(tiny_pair[0], calibration, 0)
    second = reference_input_norms(pruned, calibration, 1)
    checks = [(f"0.{name}", first[name]) for name in LINEARS]
    # In layer 1, only q/k/v read the (normalised) layer input alone; the others' inputs depend on
    # layer 1's own weights, which were still unpruned when its norms were measured.
    checks += [(f"1.{name}", second[name]) for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")]
    for key, norms in checks:
        scores = original_linears[key].weight.abs() * norms.reshape(1, -1)
        expected = prune_mask(scores, recipe, per_output=True)
        assert torch.equal(pruned_linears[key].weight == 0, expected), key
    # Calibrating layer 1 on the unpruned model's activations would have chosen other weights.
    unpruned = reference_input_norms(tiny_pair[0], calibration, 1)
    mismatches = 0
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        scores = original_linears[f"1.{name}"].weight.abs() * unpruned[name].reshape(1, -1)
        mismatches += int(
            (prune_mask(scores, recipe, per_output=True) != (pruned_linears[f"1.{name}"].weight == 0)).sum()
        )
    assert mismatches > 0


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_two_of_four(tiny_pair, calibration, method):
    model = pruned_copy(tiny_pair, PruneRecipe(method, n_m=(2, 4)), calibration)
    assert measured_sparsity(model) == pytest.approx(0.5, abs=0.01)
    for name, linear in decoder_linears(model).items():
        rows, columns = linear.weight.shape
        groups = (linear.weight == 0).reshape(rows, columns // 4, 4).sum(dim=-1)
        assert torch.equal(groups, torch.full_like(groups, 2)), name


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_zero_sparsity_changes_nothing(tiny_pair, calibration, method):
    model = pruned_copy(tiny_pair, PruneRecipe(method, 0.0), calibration)
    assert_same_weights(model, tiny_pair[0])
    assert measured_sparsity(model) == 0.0


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_only_decoder_linears_are_pruned(tiny_pair, calibration, method):
    model = pruned_copy(tiny_pair, PruneRecipe(method, 0.5), calibration)
    linear_weights = {f"model.layers.{name}.weight" for name in decoder_linears(model)}
    original = tiny_pair[0].state_dict()
    pruned = model.state_dict()
    untouched = [key for key in original if key not in linear_weights]
    assert (
        "model.embed_tokens.weight" in untouched and "lm_head.weight" in untouched and "model.norm.weight" in untouched
    )
    for key in untouched:
        assert torch.equal(pruned[key], original[key]), key
    assert all(not torch.equal(pruned[key], original[key]) for key in linear_weights)


def test_wanda_differs_from_magnitude_and_depends_on_calibration(tiny_pair, tokenizer, calibration):
    magnitude = zero_masks(pruned_copy(tiny_pair, PruneRecipe("magnitude", 0.5)))
    wanda = zero_masks(pruned_copy(tiny_pair, PruneRecipe("wanda", 0.5), calibration))
    other_calibration = calibration_batch(tokenizer, ["zq " * 200, "{[<>]} " * 200], samples=8, tokens=32)
    assert not torch.equal(other_calibration, calibration)
    wanda_other = zero_masks(pruned_copy(tiny_pair, PruneRecipe("wanda", 0.5), other_calibration))
    assert all(not torch.equal(magnitude[name], wanda[name]) for name in wanda)
    differing = [name for name in wanda if not torch.equal(wanda[name], wanda_other[name])]
    assert len(differing) >= len(wanda) // 2, differing


@pytest.mark.parametrize(
    "recipe", [PruneRecipe("wanda", 0.5), PruneRecipe("magnitude", 0.5), PruneRecipe("wanda", n_m=(2, 4))]
)
def test_pruning_is_deterministic(tiny_pair, calibration, recipe):
    first = pruned_copy(tiny_pair, recipe, calibration)
    second = pruned_copy(tiny_pair, recipe, calibration.clone())
    assert_same_weights(first, second)


def test_wanda_needs_calibration(model):
    with pytest.raises(ValueError, match="calibration"):
        prune_model(model, PruneRecipe("wanda", 0.5))
    assert measured_sparsity(model) == 0.0


def test_prune_model_reports_progress(model):
    messages: list[str] = []
    prune_model(model, PruneRecipe("magnitude", 0.5), log=messages.append)
    assert messages == ["pruned 1/2 layers (magnitude-50)", "pruned 2/2 layers (magnitude-50)"]
