"""Pruned checkpoints as other tools write them (paser_assets.models.formats): compressed-tensors folders
(llm-compressor) and LLM-Pruner pickles, loaded, scored and recorded through the plugin, offline."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import torch
from safetensors.torch import save_file
from tiny_models import build_tiny_llama, build_tiny_tokenizer

from paser_assets import PaserConfig, PaserDuckDB, build_definitions
from paser_assets.models.checkpoints import (
    CheckpointError,
    LoadOptions,
    ModelReference,
    load_causal_lm,
    parse_model_reference,
    reference_version,
)
from paser_assets.models.formats import checkpoint_facts, compression_config, convert_compressed
from paser_assets.models.pruning import PruneRecipe, measured_sparsity, prune_model
from paser_assets.models.scoring import PairScorer, encode_sample
from paser_assets.models.store import ModelStore, load_pair
from paser_assets.pool.demo import generate_demo_pool
from paser_assets.runner import run_graph

compressed_tensors = pytest.importorskip("compressed_tensors")  # the `compressed` extra, in `dev`

SHARPEN = 25.0  # a random tiny model predicts almost uniformly: a sharper head makes JSD differences visible


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A tiny Llama with a sharpened output head, saved as an ordinary folder."""
    model = build_tiny_llama(len(tokenizer), seed=7)
    with torch.no_grad():
        model.lm_head.weight.mul_(SHARPEN)
    folder = tmp_path_factory.mktemp("original") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pruned(original: Path):
    """The original pruned 2:4 by magnitude, in memory: what the compressed checkpoints are written from."""
    model, _ = load_causal_lm(parse_model_reference(str(original)), original.parent / "cache")
    prune_model(model, PruneRecipe("magnitude", n_m=(2, 4)))
    return model


@pytest.fixture(scope="module")
def samples(tokenizer):
    rows = generate_demo_pool(6, seed=3)
    return [
        encode_sample(tokenizer, f"s{i}", row["instruction"], row["input"], row["output"], max_tokens=96)
        for i, row in enumerate(rows)
    ]


def jsds(original_model, pruned_model, tokenizer, samples) -> list[float]:
    return [score.jsd for score in PairScorer(original_model, pruned_model, tokenizer.pad_token_id).score(samples)]


def _linear_modules(model) -> dict[str, torch.nn.Linear]:
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != "lm_head"
    }


def write_compressed(model, tokenizer, folder: Path, sparse_format: str) -> Path:
    """A compressed-tensors checkpoint with the sparsity section the library's config classes write.

    ``dense`` keeps the weights as they are; ``sparse-bitmask`` and ``sparse-24-bitmask`` store each linear's
    weight as compressed-tensors 0.14 (the last release with these compressors; it needs transformers<5) does:
    ``<module>.bitmask`` (the library's ``pack_bitmasks``), ``.compressed`` (the non-zeros in row order),
    ``.shape`` (and ``.row_offsets`` for sparse-bitmask). The reader was checked byte for byte against
    checkpoints written by compressed-tensors 0.14.0.1's own ModelCompressor (docs/checkpoints.md)."""
    from compressed_tensors.config import SparsityCompressionConfig
    from compressed_tensors.utils import pack_bitmasks

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if sparse_format != "dense":
        state = {key: value.contiguous() for key, value in model.state_dict().items()}
        for name in _linear_modules(model):
            weight = state.pop(f"{name}.weight")
            mask = weight != 0
            state[f"{name}.bitmask"] = pack_bitmasks(mask)
            if sparse_format == "sparse-bitmask":
                counts = mask.sum(dim=-1)
                state[f"{name}.compressed"] = weight[mask]
                state[f"{name}.row_offsets"] = torch.cumsum(counts, 0) - counts
                state[f"{name}.shape"] = torch.tensor(list(weight.shape))
            else:
                state[f"{name}.compressed"] = weight[mask].reshape(weight.shape[0], -1)
                state[f"{name}.shape"] = torch.tensor(list(weight.shape)).reshape(-1, 1)
        for file in folder.glob("*.safetensors"):
            file.unlink()
        save_file(state, str(folder / "model.safetensors"))
    sparsity = SparsityCompressionConfig.load_from_registry(
        sparse_format, global_sparsity=0.5, sparsity_structure="2:4", targets=["Linear"], ignore=["lm_head"]
    )
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors",
        "version": compressed_tensors.__version__,
        "sparsity_config": sparsity.model_dump(),
        "transform_config": {},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


@pytest.mark.parametrize("sparse_format", ["dense", "sparse-bitmask", "sparse-24-bitmask"])
def test_a_sparse_compressed_tensors_checkpoint_scores_as_the_model_it_came_from(
    sparse_format, original, pruned, tokenizer, samples, tmp_path
):
    folder = write_compressed(copy.deepcopy(pruned), tokenizer, tmp_path / sparse_format, sparse_format)
    reference = parse_model_reference(str(folder))
    assert reference.kind == "folder" and compression_config(folder) is not None
    store = ModelStore(str(original), tmp_path / "cache", LoadOptions())
    original_model, loaded, pair_tokenizer = load_pair(store, reference)  # the tokenizers are compared, as always
    assert type(loaded.model.layers[0].mlp.down_proj) is torch.nn.Linear
    expected, got = pruned.state_dict(), loaded.state_dict()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    reference_scores = jsds(original_model, pruned, pair_tokenizer, samples)
    assert min(reference_scores) > 1e-3  # a real difference, for the tolerance to mean something
    for want, have in zip(reference_scores, jsds(original_model, loaded, pair_tokenizer, samples), strict=True):
        assert abs(want - have) <= 1e-6
    facts = checkpoint_facts(reference, store.cache_dir, store.options)
    assert facts["sparsity"] == pytest.approx(measured_sparsity(pruned)) and facts["sparsity"] == pytest.approx(0.5)
    assert facts["parameters"] == sum(p.numel() for p in pruned.parameters())
    assert reference_version(reference) == reference_version(ModelReference("folder", str(folder)))


def test_transformers_alone_would_load_a_bitmask_checkpoint_with_random_weights(pruned, tokenizer, tmp_path):
    """Why the plugin decodes the legacy formats itself: transformers 5 only warns and initialises them."""
    from transformers import AutoModelForCausalLM

    folder = write_compressed(copy.deepcopy(pruned), tokenizer, tmp_path / "bitmask", "sparse-bitmask")
    naive = AutoModelForCausalLM.from_pretrained(folder)
    weight = naive.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(weight, pruned.model.layers[0].mlp.down_proj.weight)
    decoded, _ = load_causal_lm(parse_model_reference(str(folder)), tmp_path / "cache")
    assert torch.equal(decoded.model.layers[0].mlp.down_proj.weight, pruned.model.layers[0].mlp.down_proj.weight)


def test_a_quantized_checkpoint_from_the_library_compressor_is_dequantized(original, tokenizer, samples, tmp_path):
    """compressed-tensors' own ModelCompressor writes 4-bit pack-quantized weights; the plugin scores the dense
    dequantized model, the same as the fake-quantized model it was written from."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    model, _ = load_causal_lm(parse_model_reference(str(original)), tmp_path / "cache")
    reference = copy.deepcopy(model)
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="channel")
    scheme = QuantizationScheme(targets=["Linear"], weights=weights)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    with torch.no_grad():
        for name, module in _linear_modules(model).items():
            scale, zero = calculate_qparams(
                module.weight.amin(1, keepdim=True), module.weight.amax(1, keepdim=True), weights
            )
            module.weight_scale.copy_(scale.reshape(module.weight_scale.shape))
            module.weight_zero_point.copy_(zero.reshape(module.weight_zero_point.shape))
            quantized = fake_quantize(module.weight, module.weight_scale, module.weight_zero_point, weights)
            reference.get_submodule(name).weight.copy_(quantized)
            module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    folder = tmp_path / "w4"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    compressor.update_config(str(folder))
    assert compression_config(folder)["format"] == "pack-quantized"

    original_model, _ = load_causal_lm(parse_model_reference(str(original)), tmp_path / "cache")
    loaded, _ = load_causal_lm(parse_model_reference(str(folder)), tmp_path / "cache")
    assert not hasattr(loaded.config, "quantization_config")
    expected = jsds(original_model, reference, tokenizer, samples)
    assert min(expected) > 1e-4  # quantization moves the distributions measurably
    for want, have in zip(expected, jsds(original_model, loaded, tokenizer, samples), strict=True):
        assert abs(want - have) <= 1e-6


def test_without_the_package_a_compressed_folder_is_a_one_line_error(pruned, tokenizer, tmp_path, monkeypatch):
    folder = write_compressed(copy.deepcopy(pruned), tokenizer, tmp_path / "bitmask", "sparse-bitmask")
    monkeypatch.setattr("paser_assets.models.formats.compressed_tensors_installed", lambda: False)
    with pytest.raises(CheckpointError) as error:
        convert_compressed(folder, tmp_path / "cache")
    message = str(error.value)
    assert "\n" not in message and "pip install 'paser-assets[compressed]'" in message and str(folder) in message


# --- LLM-Pruner ------------------------------------------------------------------------------------------

MLP_WIDTHS = (48, 40)  # each layer's MLP cut differently from the original 64, as LLM-Pruner's block pruning does


def llm_pruner_file(folder: Path, original_folder: Path) -> Path:
    """The original tiny Llama with each layer's MLP channels cut to MLP_WIDTHS, saved as LLM-Pruner saves."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(original_folder)
    tokenizer = AutoTokenizer.from_pretrained(original_folder)
    with torch.no_grad():
        for layer, width in zip(model.model.layers, MLP_WIDTHS, strict=True):
            mlp = layer.mlp
            for name in ("gate_proj", "up_proj"):
                old = getattr(mlp, name)
                new = torch.nn.Linear(old.in_features, width, bias=False)
                new.weight.copy_(old.weight[:width])
                setattr(mlp, name, new)
            new = torch.nn.Linear(width, mlp.down_proj.out_features, bias=False)
            new.weight.copy_(mlp.down_proj.weight[:, :width])
            mlp.down_proj = new
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pytorch_model.bin"
    torch.save({"model": model, "tokenizer": tokenizer}, path)
    return path


@pytest.fixture(scope="module")
def llm_pruner(tmp_path_factory: pytest.TempPathFactory, original: Path) -> Path:
    return llm_pruner_file(tmp_path_factory.mktemp("llm-pruner"), original)


def test_an_llm_pruner_file_is_refused_without_allow_pickle(llm_pruner, tmp_path):
    reference = parse_model_reference(str(llm_pruner))
    assert reference.kind == "pickle"
    with pytest.raises(CheckpointError) as error:
        load_causal_lm(reference, tmp_path)
    message = str(error.value)
    assert "\n" not in message and str(llm_pruner) in message and "PASER_ALLOW_PICKLE=1" in message


def test_an_llm_pruner_file_loads_placed_with_allow_pickle(llm_pruner, original, tmp_path):
    from paser_assets.models.device import Placement

    options = LoadOptions(allow_pickle=True)
    where = Placement(torch.device("cpu"), "bfloat16")
    model, tokenizer = load_causal_lm(parse_model_reference(str(llm_pruner)), tmp_path, options, where)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert [layer.mlp.up_proj.out_features for layer in model.model.layers] == list(MLP_WIDTHS)
    assert tokenizer.pad_token_id is not None
    facts = checkpoint_facts(parse_model_reference(str(llm_pruner)), tmp_path, options)
    assert [layer["mlp"] for layer in facts["layer_widths"]] == list(MLP_WIDTHS)
    assert [layer["heads"] for layer in facts["layer_widths"]] == [4, 4]
    full = sum(p.numel() for p in load_causal_lm(parse_model_reference(str(original)), tmp_path)[0].parameters())
    assert facts["parameters"] == full - 3 * 32 * sum(64 - width for width in MLP_WIDTHS)


def test_a_pickle_that_is_not_an_llm_pruner_dict_is_a_one_line_error(original, tmp_path):
    from transformers import AutoModelForCausalLM

    path = tmp_path / "state.pt"
    torch.save(AutoModelForCausalLM.from_pretrained(original).state_dict(), path)
    with pytest.raises(CheckpointError) as error:
        load_causal_lm(parse_model_reference(str(path)), tmp_path, LoadOptions(allow_pickle=True))
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "not an LLM-Pruner checkpoint" in message


def test_an_llm_pruner_file_scores_end_to_end(llm_pruner, original, tmp_path):
    database = PaserDuckDB(database=str(tmp_path / "paser.duckdb"))
    settings = {"demo_size": 24, "model_cache_dir": str(tmp_path / "models"), "original_model": str(original)}
    selection = '+key:"external/degradation_scores"'  # the pruned_model variant's scores and what they need
    refused = PaserConfig(pruned_model=str(llm_pruner), **settings)
    run = run_graph(build_definitions(refused, database), dg.DagsterInstance.ephemeral(), selection=selection)
    assert not run.success
    failures = [
        event.step_failure_data.user_failure_data.description
        for result in run.results
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data.user_failure_data is not None
    ]
    assert len(failures) == 1 and "\n" not in failures[0]
    assert str(llm_pruner) in failures[0] and "PASER_ALLOW_PICKLE=1" in failures[0]

    allowed = PaserConfig(pruned_model=str(llm_pruner), allow_pickle=True, **settings)
    run = run_graph(build_definitions(allowed, database), dg.DagsterInstance.ephemeral(), selection=selection)
    assert run.success
    with duckdb.connect(database.database, read_only=True) as conn:
        conn.execute("USE paser.paser")
        path, parameters, widths, sparsity = conn.execute(
            "SELECT path, parameters, layer_widths, sparsity FROM pruned_model WHERE variant = 'external'"
        ).fetchone()
        scores = conn.execute("SELECT count(*), min(jsd), max(jsd) FROM degradation_scores").fetchone()
    assert path == str(llm_pruner) and parameters > 0 and sparsity is not None
    assert [layer["mlp"] for layer in json.loads(widths)] == list(MLP_WIDTHS)
    count, low, high = scores
    assert count > 0 and 0.0 <= low <= high and high > 0.0
