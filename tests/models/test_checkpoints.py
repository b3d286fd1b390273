"""Model references, content hashes, safe loading, tokenizer checks, saving and GGUF conversion
(paser_assets.models.checkpoints and store.load_pair)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from paser_assets.models.checkpoints import (
    CheckpointError,
    LoadOptions,
    ModelReference,
    content_hash,
    convert_gguf,
    gguf_cache_folder,
    load_causal_lm,
    load_tokenizer,
    local_folder,
    packaged_smollm2_path,
    parse_model_reference,
    publish_folder,
    reference_version,
    save_checkpoint,
    staging_folder,
    tokenizer_differences,
)
from paser_assets.models.store import ModelStore, load_pair

MEMO = ".paser-content-hash.json"


def copy_checkpoint(source: Path, target: Path, weights: bool = True) -> Path:
    """A copy of a checkpoint folder, optionally without its safetensors weights."""
    target.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file() and not file.name.startswith(".") and (weights or file.suffix != ".safetensors"):
            shutil.copy2(file, target / file.name)
    return target


def after_the_last_change(folder: Path) -> None:
    """Wait until the file-system clock has moved past the last change of every file in ``folder``, as it has
    for a checkpoint hashed any time ago: a memo written from now on is trusted (one written in the same
    clock tick as a change is not, see checkpoints._memo_value)."""
    last = max(path.stat().st_ctime_ns for path in folder.rglob("*") if path.is_file())
    probe = folder.parent / f".{folder.name}.tick"
    deadline = time.monotonic() + 10
    while True:
        probe.write_text("tick")
        if probe.stat().st_mtime_ns > last:
            break
        assert time.monotonic() < deadline, "the file-system clock did not move"
        time.sleep(0.001)
    probe.unlink()


def all_parameters_equal(a, b) -> bool:
    left, right = dict(a.named_parameters()), dict(b.named_parameters())
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


# --- parse_model_reference -------------------------------------------------------------------------


def test_folder_with_config_is_a_folder_reference(tiny_llama_dir: Path):
    reference = parse_model_reference(str(tiny_llama_dir))
    assert reference == ModelReference("folder", str(tiny_llama_dir.resolve()))
    assert reference.display == f"folder:{tiny_llama_dir.resolve()}"
    # Surrounding whitespace (as from an environment variable) is ignored.
    assert parse_model_reference(f"  {tiny_llama_dir}  ") == reference


def test_folder_without_config_is_refused(tmp_path: Path):
    (tmp_path / "model.safetensors").write_bytes(b"not really")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        parse_model_reference(str(tmp_path))


def test_gguf_path(tmp_path: Path):
    file = tmp_path / "Model.Q4.GGUF"  # the suffix check is case-insensitive
    file.write_bytes(b"GGUF")
    assert parse_model_reference(str(file)) == ModelReference("gguf", str(file.resolve()))
    with pytest.raises(CheckpointError, match="no such GGUF file"):
        parse_model_reference(str(tmp_path / "missing.gguf"))


def test_missing_path_gives_a_clear_error(tmp_path: Path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(CheckpointError, match="no such folder or file") as raised:
        parse_model_reference(str(missing))
    assert str(missing) in str(raised.value)
    # Relative paths that look like paths are not mistaken for hub ids either.
    with pytest.raises(CheckpointError, match="no such folder or file"):
        parse_model_reference("./missing/model")
    with pytest.raises(CheckpointError, match="owner/name"):
        parse_model_reference("too/many/parts")


def test_existing_file_of_another_kind_is_refused(tmp_path: Path):
    file = tmp_path / "weights.safetensors"
    file.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"neither a checkpoint folder nor a \.gguf file"):
        parse_model_reference(str(file))


def test_owner_name_is_a_hub_id():
    assert parse_model_reference("HuggingFaceTB/SmolLM2-135M-Instruct") == ModelReference(
        "hub", "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


@pytest.mark.parametrize("spec", [None, "", "   ", "smollm2-135m-instruct"])
def test_default_is_the_packaged_smollm2_gguf(spec):
    reference = parse_model_reference(spec)
    assert reference.kind == "gguf"
    path = Path(reference.location)
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file() and path.stat().st_size > 50_000_000
    assert path == packaged_smollm2_path()


# --- content_hash -----------------------------------------------------------------------------------


def test_content_hash_is_stable_and_memoised(tiny_llama_dir: Path, tmp_path: Path):
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "model")
    first = content_hash(folder)
    assert len(first) == 24 and int(first, 16) >= 0
    memo = folder / MEMO
    assert memo.is_file()
    saved = json.loads(memo.read_text())
    assert saved["hash"] == first
    assert {entry[0] for entry in saved["stamp"]} >= {"model.safetensors", "config.json", "tokenizer.json"}
    assert content_hash(folder) == first
    assert reference_version(parse_model_reference(str(folder))) == first
    # An identical copy elsewhere has the same hash: it is about content, not location or time.
    assert content_hash(copy_checkpoint(tiny_llama_dir, tmp_path / "again")) == first


def test_content_hash_reads_the_memo_instead_of_the_files(tiny_llama_dir: Path, tmp_path: Path):
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "model")
    real = content_hash(folder)
    memo = folder / MEMO
    saved = json.loads(memo.read_text())
    after_the_last_change(folder)
    # A memo whose stamp still matches is trusted: a planted value comes back, so nothing was re-read.
    memo.write_text(json.dumps({"stamp": saved["stamp"], "hash": "planted"}))
    assert content_hash(folder) == "planted"
    # A corrupt memo is ignored and replaced.
    memo.write_text("{not json")
    assert content_hash(folder) == real
    assert json.loads(memo.read_text())["hash"] == real


def test_content_hash_follows_weight_changes(tiny_llama_dir: Path, tmp_path: Path):
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "model")
    weights = folder / "model.safetensors"
    original_bytes = weights.read_bytes()
    before = content_hash(folder)

    tensors = load_file(weights)
    name = next(iter(sorted(tensors)))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    assert weights.stat().st_size == len(original_bytes)  # same size: only the mtime tells the memo
    # Move the mtime on explicitly so a coarse file-system clock cannot hide the rewrite.
    mtime = weights.stat().st_mtime_ns
    os.utime(weights, ns=(mtime + 2_000_000_000, mtime + 2_000_000_000))
    changed = content_hash(folder)
    assert changed != before

    weights.write_bytes(original_bytes)
    os.utime(weights, ns=(mtime + 4_000_000_000, mtime + 4_000_000_000))
    assert content_hash(folder) == before


def test_a_checkpoint_overwritten_with_cp_p_gets_a_new_version(tiny_llama_dir: Path, tmp_path: Path):
    """A re-pruned checkpoint copied over the old one with ``cp -p`` keeps each file's size and mtime."""
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "model")
    weights = folder / "model.safetensors"
    before = content_hash(folder)
    after_the_last_change(folder)
    memo = folder / MEMO
    memo.write_text(json.dumps({"stamp": json.loads(memo.read_text())["stamp"], "hash": "planted"}))
    assert content_hash(folder) == "planted"  # the memo is trusted until the files change

    repruned = tmp_path / "repruned.safetensors"
    tensors = load_file(weights)
    name = next(iter(sorted(tensors)))
    save_file({**tensors, name: tensors[name] * 0.5}, repruned, metadata={"format": "pt"})
    old = weights.stat()
    os.utime(repruned, ns=(old.st_atime_ns, old.st_mtime_ns))
    shutil.copy2(repruned, weights)  # what `cp -p` does
    new = weights.stat()
    assert (new.st_size, new.st_mtime_ns) == (old.st_size, old.st_mtime_ns)

    version = reference_version(parse_model_reference(str(folder)))
    assert version not in ("planted", before)
    assert version == content_hash(copy_checkpoint(folder, tmp_path / "fresh-copy"))  # the new files' hash


def test_a_memo_written_in_the_clock_tick_of_a_change_is_not_trusted(tiny_llama_dir: Path, tmp_path: Path):
    """A file changed twice within one tick of the file-system clock keeps its ctime, so a memo from that tick
    cannot tell the second change from the first: it is not trusted, whatever its stamp."""
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "model")
    real = content_hash(folder)
    memo = folder / MEMO
    saved = json.loads(memo.read_text())
    memo.write_text(json.dumps({"stamp": saved["stamp"], "hash": "planted"}))
    last_change = max(entry[3] for entry in saved["stamp"])
    os.utime(memo, ns=(last_change, last_change))
    assert content_hash(folder) == real


def test_content_hash_ignores_hidden_and_unrelated_files(tiny_llama_dir: Path, tmp_path: Path):
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "model")
    before = content_hash(folder)
    (folder / "README.md").write_text("notes")
    (folder / ".hidden.json").write_text("{}")
    assert content_hash(folder) == before
    (folder / "extra_config.json").write_text("{}")
    assert content_hash(folder) != before


def test_content_hash_of_a_single_file_writes_no_memo(tiny_llama_dir: Path, tmp_path: Path):
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "model")
    value = content_hash(folder / "model.safetensors")
    assert value == content_hash(folder / "model.safetensors")
    assert not (folder / MEMO).exists()
    assert value != content_hash(folder)


def test_content_hash_of_an_empty_folder_is_an_error(tmp_path: Path):
    (tmp_path / "notes.md").write_text("no weights here")
    with pytest.raises(CheckpointError, match="no checkpoint files"):
        content_hash(tmp_path)


def test_content_hash_on_a_read_only_folder(tiny_llama_dir: Path, tmp_path: Path):
    expected = content_hash(copy_checkpoint(tiny_llama_dir, tmp_path / "writable"))
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "readonly")
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    try:
        assert content_hash(folder) == expected
        assert content_hash(folder) == expected
        if os.geteuid() != 0:  # root ignores the permission bits; the next test covers that case
            assert not (folder / MEMO).exists()
    finally:
        folder.chmod(0o755)


def test_content_hash_when_the_memo_cannot_be_written(tiny_llama_dir: Path, tmp_path: Path):
    """A folder where writing (and reading) the memo fails even for root: its path is a directory."""
    expected = content_hash(copy_checkpoint(tiny_llama_dir, tmp_path / "writable"))
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "blocked")
    (folder / MEMO).mkdir()
    assert content_hash(folder) == expected
    assert content_hash(folder) == expected
    assert (folder / MEMO).is_dir()


# --- safe loading -------------------------------------------------------------------------------------


class _WritesMarker:
    """Unpickling this object writes a file: a stand-in for arbitrary code in a pickled checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "unpickled"))


def write_malicious_weights(file: Path, state_dict: dict, marker: Path) -> None:
    torch.save({**state_dict, "payload": _WritesMarker(marker)}, file)


@pytest.fixture
def tiny_state_dict(tiny_pair) -> dict:
    return {k: v.clone() for k, v in tiny_pair[0].state_dict().items()}


def test_malicious_payload_really_runs_when_unpickled(tmp_path: Path, tiny_state_dict: dict):
    """Control for the safety tests below: the crafted file does write its marker when unpickled."""
    marker = tmp_path / "marker"
    write_malicious_weights(tmp_path / "pytorch_model.bin", tiny_state_dict, marker)
    torch.load(tmp_path / "pytorch_model.bin", weights_only=False)
    assert marker.read_text() == "unpickled"


def test_pickled_only_checkpoint_is_refused_by_default(tiny_llama_dir: Path, tmp_path: Path, tiny_state_dict: dict):
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "pickled", weights=False)
    marker = tmp_path / "marker"
    write_malicious_weights(folder / "pytorch_model.bin", tiny_state_dict, marker)
    assert not any(folder.glob("*.safetensors"))
    with pytest.raises(CheckpointError, match="PASER_ALLOW_PICKLE") as raised:
        load_causal_lm(parse_model_reference(str(folder)), tmp_path / "cache")
    assert "pickled" in str(raised.value)
    assert not marker.exists()


def test_allow_pickle_lets_the_loader_try_but_torch_weights_only_still_blocks_code(
    tiny_llama_dir: Path, tmp_path: Path, tiny_state_dict: dict
):
    """Observed behaviour: with allow_pickle=True the checkpoint reaches transformers, which unpickles
    with torch's ``weights_only`` loader; that refuses the foreign callable, so no code runs and the
    load fails with a CheckpointError carrying torch's explanation."""
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "pickled", weights=False)
    marker = tmp_path / "marker"
    write_malicious_weights(folder / "pytorch_model.bin", tiny_state_dict, marker)
    with pytest.raises(CheckpointError, match=r"(?i)weights.only") as raised:
        load_causal_lm(parse_model_reference(str(folder)), tmp_path / "cache", LoadOptions(allow_pickle=True))
    assert "PASER_ALLOW_PICKLE" not in str(raised.value)  # got past our own guard
    assert not marker.exists()


def test_allow_pickle_loads_a_plain_pickled_checkpoint(tiny_llama_dir: Path, tmp_path: Path, tiny_pair):
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "pickled", weights=False)
    torch.save(tiny_pair[0].state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="PASER_ALLOW_PICKLE"):
        load_causal_lm(parse_model_reference(str(folder)), tmp_path / "cache")
    model, _ = load_causal_lm(parse_model_reference(str(folder)), tmp_path / "cache", LoadOptions(allow_pickle=True))
    assert all_parameters_equal(model, tiny_pair[0])


def test_safetensors_win_over_a_pickled_file_beside_them(tiny_llama_dir: Path, tmp_path: Path, tiny_state_dict: dict):
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "mixed")
    marker = tmp_path / "marker"
    write_malicious_weights(folder / "pytorch_model.bin", tiny_state_dict, marker)
    model, _ = load_causal_lm(parse_model_reference(str(folder)), tmp_path / "cache")
    assert not model.training
    assert not marker.exists()


def test_load_options_are_safe_by_default():
    options = LoadOptions()
    assert options.allow_pickle is False
    assert options.trust_remote_code is False


REMOTE_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")
from transformers import LlamaConfig, LlamaForCausalLM


class CustomConfig(LlamaConfig):
    model_type = "llama"


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
"""


def make_remote_code_checkpoint(source: Path, folder: Path, marker: Path) -> Path:
    copy_checkpoint(source, folder)
    (folder / "custom_model.py").write_text(REMOTE_CODE.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "custom_model.CustomConfig",
        "AutoModelForCausalLM": "custom_model.CustomForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_remote_code_is_not_run_by_default(tiny_llama_dir: Path, tmp_path: Path):
    """Observed behaviour: the checkpoint still loads, with the built-in Llama class, and the custom
    module is never imported."""
    marker = tmp_path / "marker"
    folder = make_remote_code_checkpoint(tiny_llama_dir, tmp_path / "remote", marker)
    model, _ = load_causal_lm(parse_model_reference(str(folder)), tmp_path / "cache")
    assert type(model).__module__.startswith("transformers.models.llama")
    assert not marker.exists()


def test_remote_code_runs_when_trusted(tiny_llama_dir: Path, tmp_path: Path):
    """Control for the test above: the same checkpoint with trust_remote_code=True imports the module.
    Run in a child process so transformers' module cache goes to a temporary folder."""
    marker = tmp_path / "marker"
    folder = make_remote_code_checkpoint(tiny_llama_dir, tmp_path / "remote", marker)
    script = textwrap.dedent(
        f"""
        from paser_assets.models.checkpoints import LoadOptions, load_causal_lm, parse_model_reference
        model, _ = load_causal_lm(
            parse_model_reference({str(folder)!r}), {str(tmp_path / "cache")!r}, LoadOptions(trust_remote_code=True)
        )
        print(type(model).__name__)
        """
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "CustomForCausalLM" in result.stdout
    assert marker.read_text() == "imported"


TOKENIZER_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")
"""


def make_remote_tokenizer_checkpoint(source: Path, folder: Path, marker: Path) -> Path:
    """A checkpoint whose tokenizer is a class of its own, which only its code (auto_map) defines."""
    copy_checkpoint(source, folder)
    (folder / "tokenization_custom.py").write_text(TOKENIZER_CODE.format(marker=str(marker)))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "CustomTokenizer"
    config["auto_map"] = {"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("load", [load_tokenizer, load_causal_lm])
def test_a_tokenizer_that_needs_its_own_code_is_refused_in_the_plugins_words(
    tiny_llama_dir: Path, tmp_path: Path, load
):
    """Not transformers' text (`trust_remote_code=True` and a link to https://hf.co//tmp/...): the setting to
    turn on, and the code the checkpoint declares. The code is never imported."""
    marker = tmp_path / "marker"
    folder = make_remote_tokenizer_checkpoint(tiny_llama_dir, tmp_path / "remote", marker)
    reference = parse_model_reference(str(folder))
    with pytest.raises(CheckpointError) as raised:
        load(reference, tmp_path / "cache")
    assert str(raised.value) == (
        f"{reference.display}: its tokenizer needs the checkpoint's own Python code (auto_map in "
        "tokenizer_config.json: tokenization_custom.CustomTokenizer), and running a checkpoint's code is off by "
        "default: use a checkpoint that transformers loads with its built-in classes, or set "
        "PASER_TRUST_REMOTE_CODE=1 only if you trust that code"
    )
    assert not marker.exists()


@pytest.mark.parametrize(("load", "part"), [(load_tokenizer, "model config"), (load_causal_lm, "model")])
def test_a_model_config_that_needs_its_own_code_is_refused_in_the_plugins_words(
    tiny_llama_dir: Path, tmp_path: Path, load, part: str
):
    """A model type that transformers does not know, defined only by the checkpoint's code: no built-in class to
    fall back on (compare test_remote_code_is_not_run_by_default), so the load is refused, naming the setting."""
    marker = tmp_path / "marker"
    folder = make_remote_code_checkpoint(tiny_llama_dir, tmp_path / "remote", marker)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "custom_llama"
    (folder / "config.json").write_text(json.dumps(config))
    reference = parse_model_reference(str(folder))
    with pytest.raises(CheckpointError) as raised, warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        load(reference, tmp_path / "cache")
    assert not [w for w in warned if "loaded with the built-in transformers class" in str(w.message)]
    message = str(raised.value)
    assert message.startswith(
        f"{reference.display}: its {part} needs the checkpoint's own Python code (auto_map in config.json: "
        "custom_model.CustomConfig, custom_model.CustomForCausalLM)"
    )
    assert "set PASER_TRUST_REMOTE_CODE=1 only if you trust that code" in message
    assert "trust_remote_code=True" not in message and "hf.co" not in message
    assert not marker.exists()


# --- tokenizer checks -------------------------------------------------------------------------------


def test_identical_tokenizers_have_no_differences(tiny_llama_dir: Path):
    assert (
        tokenizer_differences(
            AutoTokenizer.from_pretrained(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)
        )
        == []
    )


def test_vocabulary_difference_is_named(tiny_llama_dir: Path):
    original = AutoTokenizer.from_pretrained(tiny_llama_dir)
    pruned = AutoTokenizer.from_pretrained(tiny_llama_dir)
    pruned.add_tokens(["<extra_token>"])
    differences = tokenizer_differences(original, pruned)
    assert len(differences) == 1
    assert "vocabularies differ" in differences[0]
    assert f"{len(original)} vs {len(original) + 1} tokens" in differences[0]
    assert "only in pruned: ['<extra_token>']" in differences[0]


def test_eos_difference_is_named(tiny_llama_dir: Path):
    original = AutoTokenizer.from_pretrained(tiny_llama_dir)
    pruned = AutoTokenizer.from_pretrained(tiny_llama_dir)
    pruned.eos_token = "<pad>"
    assert tokenizer_differences(original, pruned) == [
        f"eos_token_id: {original.eos_token_id} vs {pruned.eos_token_id}"
    ]
    assert original.eos_token_id != pruned.eos_token_id


def test_chat_template_difference_is_named(tiny_llama_dir: Path, tiny_alpaca_dir: Path):
    original = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert tokenizer_differences(original, AutoTokenizer.from_pretrained(tiny_alpaca_dir)) == ["chat templates differ"]
    other = AutoTokenizer.from_pretrained(tiny_llama_dir)
    other.chat_template = original.chat_template.replace("<|", "[").replace("|>", "]")
    assert tokenizer_differences(original, other) == ["chat templates differ"]


def settings_for(original: Path, pruned: Path, cache: Path) -> tuple[ModelStore, ModelReference]:
    return ModelStore(str(original), cache, LoadOptions()), parse_model_reference(str(pruned))


def test_load_pair_refuses_different_tokenizers(tiny_llama_dir: Path, tiny_alpaca_dir: Path, tmp_path: Path):
    settings, pruned = settings_for(tiny_llama_dir, tiny_alpaca_dir, tmp_path / "cache")
    with pytest.raises(CheckpointError, match="disagree") as raised:
        load_pair(settings, pruned)
    assert "chat templates differ" in str(raised.value)
    assert str(tiny_alpaca_dir.resolve()) in str(raised.value)


def test_load_pair_names_a_vocabulary_difference(tiny_llama_dir: Path, tmp_path: Path):
    folder = copy_checkpoint(tiny_llama_dir, tmp_path / "extended")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens(["<tool_call>"])
    tokenizer.save_pretrained(folder)
    settings, pruned = settings_for(tiny_llama_dir, folder, tmp_path / "cache")
    with pytest.raises(CheckpointError, match="vocabularies differ") as raised:
        load_pair(settings, pruned)
    assert "<tool_call>" in str(raised.value)


def test_load_pair_with_matching_tokenizers(tiny_llama_dir: Path, tmp_path: Path):
    copy = copy_checkpoint(tiny_llama_dir, tmp_path / "copy")
    settings, pruned = settings_for(tiny_llama_dir, copy, tmp_path / "cache")
    original, pruned, tokenizer = load_pair(settings, pruned)
    assert original is not pruned
    assert all_parameters_equal(original, pruned)
    assert tokenizer.eos_token == "</s>"


def test_a_hub_id_is_not_accepted_as_a_pruned_checkpoint():
    from paser_assets.assets.models import checkpoint_version
    from paser_assets.variants import Variant

    with pytest.raises(CheckpointError, match="local checkpoint"):
        checkpoint_version(Variant("remote", checkpoint="owner/pruned"))


# --- saving -------------------------------------------------------------------------------------------


def test_save_checkpoint_writes_safetensors_and_extra_files(tiny_pair, tmp_path: Path):
    model, tokenizer = tiny_pair
    target = tmp_path / "out" / "pruned"
    assert save_checkpoint(model, tokenizer, target, extra_files={"recipe.json": '{"method": "wanda"}'}) == target
    names = {p.name for p in target.iterdir()}
    assert {"config.json", "tokenizer.json", "recipe.json"} <= names
    assert any(name.endswith(".safetensors") for name in names)
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)
    assert (target / "recipe.json").read_text() == '{"method": "wanda"}'
    assert [p.name for p in target.parent.iterdir()] == ["pruned"]  # no staging folder left behind
    loaded, loaded_tokenizer = load_causal_lm(parse_model_reference(str(target)), tmp_path / "cache")
    assert all_parameters_equal(loaded, model)
    assert tokenizer_differences(tokenizer, loaded_tokenizer) == []


def test_save_checkpoint_replaces_an_existing_target(tiny_pair, tiny_builders: ModuleType, tmp_path: Path):
    model, tokenizer = tiny_pair
    target = tmp_path / "pruned"
    save_checkpoint(model, tokenizer, target, extra_files={"old.txt": "old"})
    (target / "stale.json").write_text("{}")
    other = tiny_builders.build_tiny_llama(len(tokenizer), seed=5)
    save_checkpoint(other, tokenizer, target, extra_files={"new.txt": "new"})
    names = {p.name for p in target.iterdir()}
    assert "stale.json" not in names and "old.txt" not in names
    assert (target / "new.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]  # neither staging nor retired folders remain
    loaded, _ = load_causal_lm(parse_model_reference(str(target)), tmp_path / "cache")
    assert all_parameters_equal(loaded, other)
    assert not all_parameters_equal(loaded, model)


def test_staging_and_publish(tmp_path: Path):
    target = tmp_path / "deep" / "target"
    staging = staging_folder(target)
    assert staging.parent == target.parent and staging.is_dir() and staging.name.startswith(".target.")
    (staging / "a.txt").write_text("first")
    publish_folder(staging, target)
    assert (target / "a.txt").read_text() == "first" and not staging.exists()
    # A target that already exists wins (another run published first); the staging copy is dropped.
    second = staging_folder(target)
    (second / "a.txt").write_text("second")
    publish_folder(second, target)
    assert (target / "a.txt").read_text() == "first" and not second.exists()


# --- GGUF ---------------------------------------------------------------------------------------------


@pytest.mark.system
def test_gguf_conversion_creates_a_safetensors_folder(smollm2_conversion):
    folder = smollm2_conversion.folder
    assert folder == gguf_cache_folder(smollm2_conversion.gguf, smollm2_conversion.cache_dir)
    assert folder.parent == smollm2_conversion.cache_dir / "gguf"
    names = {p.name for p in folder.iterdir()}
    assert "config.json" in names and "tokenizer.json" in names
    assert any(name.endswith(".safetensors") for name in names)
    assert not any(name.endswith((".bin", ".gguf")) for name in names)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == "llama"
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folder left behind


@pytest.mark.system
def test_gguf_conversion_is_reused(smollm2_conversion):
    folder = smollm2_conversion.folder
    before = {p.name: p.stat().st_mtime_ns for p in [folder, *folder.iterdir()]}
    start = time.perf_counter()
    again = convert_gguf(smollm2_conversion.gguf, smollm2_conversion.cache_dir)
    elapsed = time.perf_counter() - start
    assert again == folder
    assert elapsed < 2.0, f"second conversion call took {elapsed:.1f}s (first: {smollm2_conversion.seconds:.1f}s)"
    assert {p.name: p.stat().st_mtime_ns for p in [folder, *folder.iterdir()]} == before
    reference = parse_model_reference(None)
    assert local_folder(reference, smollm2_conversion.cache_dir) == str(folder)
