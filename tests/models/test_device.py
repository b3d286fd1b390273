"""Where models run and in which precision (paser_assets.models.device), and how the two settings reach
the sentence model and the code versions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from paser_assets.models import device as device_module
from paser_assets.models.device import (
    DeviceError,
    Placement,
    autocast,
    model_precision,
    parse_device,
    place_model,
    precision_key,
    resolve_device,
    resolve_precision,
)


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch):
    """Pretend torch sees ``count`` GPUs, ``bfloat16`` telling whether they have it; call with the count."""

    def pretend(count: int, bfloat16: bool = True) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(device_module, "_gpu_has_bfloat16", lambda device: bfloat16)

    return pretend


@pytest.fixture
def cpu_bfloat16(monkeypatch: pytest.MonkeyPatch):
    """Pretend the CPU has (True) or lacks (False) fast bfloat16 products."""

    def pretend(fast: bool) -> None:
        monkeypatch.setattr(device_module, "cpu_has_fast_bfloat16", lambda: fast)

    return pretend


@pytest.mark.parametrize(
    ("text", "parsed"), [("auto", "auto"), (" CPU ", "cpu"), ("cuda", "cuda"), ("Cuda:3", "cuda:3")]
)
def test_device_settings_are_normalised(text: str, parsed: str) -> None:
    assert parse_device(text) == parsed


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "mps", "cpu:0", ""])
def test_other_device_settings_are_refused_with_the_allowed_values(text: str) -> None:
    with pytest.raises(DeviceError, match="'auto', 'cpu', 'cuda' or 'cuda:N'"):
        parse_device(text)


def test_auto_takes_the_cpu_without_a_gpu_and_cuda_then_fails(gpus) -> None:
    gpus(0)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="sees no GPU"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="sees no GPU"):
        resolve_device("cuda:0")


def test_auto_and_cuda_take_the_workers_gpu(gpus) -> None:
    gpus(4)
    assert resolve_device("auto", environ={}) == torch.device("cuda", 0)
    assert resolve_device("cuda", environ={}) == torch.device("cuda", 0)
    assert resolve_device("cuda", environ={"LOCAL_RANK": "2"}) == torch.device("cuda", 2)
    assert resolve_device("auto", environ={"LOCAL_RANK": "5"}) == torch.device("cuda", 1)  # 5 mod 4
    assert resolve_device("cuda:3", environ={"LOCAL_RANK": "1"}) == torch.device("cuda", 3)  # named: as named
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="only 4 GPU"):
        resolve_device("cuda:4")


def test_auto_precision_on_a_cpu_follows_its_bfloat16_support(cpu_bfloat16) -> None:
    cpu_bfloat16(True)
    assert resolve_precision("auto", "cpu") == "bfloat16"
    assert resolve_precision("float32", "cpu") == "float32"
    cpu_bfloat16(False)
    assert resolve_precision("auto", "cpu") == "float32"
    assert resolve_precision("bfloat16", "cpu") == "bfloat16"  # asked for: slower there, but as asked
    with pytest.raises(ValueError, match="'float16'"):
        resolve_precision("float16", "cpu")


def test_auto_precision_on_a_gpu_is_bfloat16_or_float16(gpus, cpu_bfloat16) -> None:
    cpu_bfloat16(False)
    gpus(1, bfloat16=True)
    assert resolve_precision("auto", "cuda:0") == "bfloat16"
    gpus(1, bfloat16=False)
    assert resolve_precision("auto", "cuda:0") == "float16"
    assert resolve_precision("float32", "cuda:0") == "float32"


def test_the_precision_key_names_what_auto_resolves_to_here(gpus, cpu_bfloat16) -> None:
    gpus(0)
    cpu_bfloat16(True)
    assert precision_key("auto") == "auto:bfloat16"
    cpu_bfloat16(False)
    assert precision_key("auto") == "auto:float32"
    assert precision_key("bfloat16") == "bfloat16" and precision_key("float32", "cuda") == "float32"
    assert precision_key("auto", "cuda") == "auto:cuda-unavailable"  # the run fails on the device itself
    gpus(2, bfloat16=False)
    assert precision_key("auto") == "auto:float16"
    assert precision_key("auto", "cpu") == "auto:float32"  # the CPU's rule, although a GPU is there


def test_the_cpu_probe_asks_torch_then_cpuinfo_and_never_raises(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    probe = device_module.cpu_has_fast_bfloat16
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    probe.cache_clear()
    assert probe() is True

    def broken() -> bool:
        raise RuntimeError("no cpuinfo")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(device_module, "CPUINFO", cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx_vnni\n")
    probe.cache_clear()
    assert probe() is True
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    probe.cache_clear()
    assert probe() is False
    cpuinfo.unlink()
    probe.cache_clear()
    assert probe() is False
    monkeypatch.undo()
    probe.cache_clear()  # the real answer again for the tests that follow


def test_placing_a_model_casts_its_weights_and_autocast_is_off_for_float32(tiny_pair) -> None:
    import copy

    model = copy.deepcopy(tiny_pair[0])
    assert model_precision(model) == "float32"
    placed = place_model(model, Placement(torch.device("cpu"), "bfloat16"))
    assert placed is model and model_precision(model) == "bfloat16"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with autocast("cpu", "bfloat16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast("cpu", "float32"):
        assert not torch.is_autocast_enabled("cpu")


def test_the_sentence_model_is_given_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import sentence_transformers

    from paser_assets.models.sentence import embed_texts

    seen: list[str] = []
    real = sentence_transformers.SentenceTransformer

    def recording(*args, device: str | None = None, **kwargs):
        seen.append(device)
        return real(*args, device=device, **kwargs)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", recording)
    vectors = embed_texts("sentence-transformers/all-MiniLM-L6-v2", ["Sort a list.", "Add two numbers."], device="cpu")
    assert seen == ["cpu"] and vectors.shape == (2, 384)


def test_the_precision_is_in_the_score_code_version_and_keys(gpus, cpu_bfloat16, tmp_path: Path) -> None:
    from paser_assets import build_definitions
    from paser_assets.assets.scores import _scoring_key, _states_key
    from paser_assets.resources import PaserConfig, PaserDuckDB

    def version(config: PaserConfig) -> str:
        graph = build_definitions(config, PaserDuckDB(database=":memory:")).resolve_asset_graph()
        return graph.get(
            next(k for k in graph.materializable_asset_keys if k.path[1:] == ["degradation_scores"])  # <variant>/
        ).code_version

    gpus(0)
    config = PaserConfig()
    cpu_bfloat16(True)
    with_bfloat16 = version(config), _scoring_key("o", "p", config), _states_key("o", config)
    assert "|precision=bfloat16" in with_bfloat16[1] and "|head=auto:bfloat16" in with_bfloat16[1]
    cpu_bfloat16(False)
    without = version(config), _scoring_key("o", "p", config), _states_key("o", config)
    assert "|precision=float32" in without[1]
    assert all(a != b for a, b in zip(with_bfloat16, without, strict=True))
    # Asking for float32 explicitly computes what auto does on this CPU: same caches, another code version.
    explicit = PaserConfig(precision="float32")
    assert (_scoring_key("o", "p", explicit), _states_key("o", explicit)) == without[1:]
    assert version(explicit) != without[0]
