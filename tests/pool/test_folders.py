"""What a dataset folder stands for: data files read, everything else named with the reason it was not read.

The case that started it: ``PASER_DB=data/paser.duckdb`` with ``PASER_DATASET=data/`` puts the plugin's
own DuckDB file, model cache and exports inside the dataset folder on the second run.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import os
import socket
import threading
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from paser_assets.pool import PoolInputError, SkippedPath, load_pool, read_dataset
from paser_assets.pool.folders import HIDDEN, NOT_DATA, PLUGIN_OUTPUT, REFUSED, UNREADABLE, list_inputs

GOOD = {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"}
OTHER = {"instruction": "Name a colour.", "output": "Blue."}
THIRD = {"instruction": "Translate to French.", "input": "cat", "output": "chat"}


def jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def touch(path: Path, content: str | bytes = "{}") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def checkpoint(folder: Path, *extra: str) -> Path:
    """A Hugging Face checkpoint as save_pretrained writes it: JSON configs beside the weights."""
    touch(folder / "config.json", json.dumps({"model_type": "llama"}))
    touch(folder / "tokenizer_config.json", json.dumps({"model_max_length": 2048}))
    touch(folder / "tokenizer.json", json.dumps({"version": "1.0", "model": {"vocab": {}}}))
    touch(folder / "model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    for name in extra:
        touch(folder / name, json.dumps({"written_by": "paser"}))
    return folder


def export(folder: Path) -> Path:
    """What selection_export writes for one variant."""
    jsonl(folder / "selection.jsonl", [GOOD])
    touch(folder / "selection.json", json.dumps([GOOD]))
    table = pa.table({"instruction": [GOOD["instruction"]], "output": [GOOD["output"]]})
    pq.write_table(table, folder / "selection.parquet")
    return folder


def states(path: Path) -> Path:
    """A part of the original model's cached hidden states, with the columns scoring writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {"sample_id": ["a1"], "tokens": [3], "width": [4], "dtype": ["float16"], "hidden": [b"\x00" * 24]}
    pq.write_table(pa.table(columns), path)
    return path


def duckdb_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = duckdb.connect(str(path))
    connection.execute("CREATE TABLE recovery_pool AS SELECT 'x' AS instruction")
    connection.close()
    return path


def skipped_map(skipped: list[SkippedPath]) -> dict[str, tuple[str, str]]:
    return {entry.path: (entry.kind, entry.reason) for entry in skipped}


@pytest.fixture
def second_run(tmp_path: Path) -> Path:
    """``data/`` after a first run with PASER_DB=data/paser.duckdb and the default output folders."""
    data = tmp_path / "data"
    jsonl(data / "pool.jsonl", [GOOD])
    (data / "more").mkdir()
    with gzip.open(data / "more" / "extra.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(OTHER) + "\n")
    duckdb_file(data / "paser.duckdb")
    touch(data / "paser.duckdb.wal", b"\x00" * 64)
    checkpoint(data / "paser_models" / "pruned" / "sparsegpt-1a2b", "paser_pruning.json")
    export(data / "paser_export" / "v1")
    jsonl(data / ".ipynb_checkpoints" / "pool-checkpoint.jsonl", [THIRD])
    jsonl(data / ".draft.jsonl", [THIRD])
    touch(data / "notes.txt", "not data")
    return data


def test_the_second_run_reads_only_the_data(second_run: Path):
    skipped: list[SkippedPath] = []
    rows = list(read_dataset(str(second_run), skipped=skipped))
    assert [(r.source, r.row) for r in rows] == [(str(Path("more") / "extra.jsonl.gz"), 1), ("pool.jsonl", 1)]
    assert {path: kind for path, (kind, _) in skipped_map(skipped).items()} == {
        ".draft.jsonl": HIDDEN,
        ".ipynb_checkpoints/": HIDDEN,
        "notes.txt": NOT_DATA,
        "paser.duckdb": PLUGIN_OUTPUT,
        "paser.duckdb.wal": PLUGIN_OUTPUT,
        "paser_export/": PLUGIN_OUTPUT,
        "paser_models/": PLUGIN_OUTPUT,
    }


def test_the_second_run_through_load_pool_returns_and_logs_what_it_skipped(second_run: Path, caplog):
    with caplog.at_level(logging.INFO, logger="paser_assets.pool"):
        build = load_pool(str(second_run))
    assert build.accepted["instruction"].tolist() == [OTHER["instruction"], GOOD["instruction"]]
    reasons = skipped_map(build.skipped)
    assert reasons["paser.duckdb"][1] == "a DuckDB database (the plugin's storage)"
    assert reasons["paser.duckdb.wal"][1] == "the write-ahead log of the DuckDB database paser.duckdb"
    assert reasons["notes.txt"][1] == "not a data file (extension '.txt')"
    logged = [record.getMessage() for record in caplog.records if record.name == "paser_assets.pool"]
    assert len(logged) == len(build.skipped)
    for entry in build.skipped:
        assert any(entry.path in message and entry.reason in message for message in logged)


def test_renamed_outputs_are_recognised_by_what_they_hold(tmp_path: Path):
    data = tmp_path / "data"
    jsonl(data / "pool.jsonl", [GOOD])
    checkpoint(data / "cache" / "pruned" / "wanda-9f", "paser_pruning.json")
    checkpoint(data / "cache" / "gguf" / "3c4d")  # a converted GGUF: no run record, just a checkpoint
    adapter = data / "cache" / "adapters" / "v1" / "paser-77"
    touch(adapter / "adapter_config.json", json.dumps({"r": 8}))
    touch(adapter / "adapter_model.safetensors", b"\x00" * 16)
    touch(adapter / "paser_training.json", json.dumps({"steps": 3}))
    export(data / "selections" / "v1")
    duckdb_file(data / "warehouse.db")
    states(data / "cache" / "original_states" / "5e6f" / "part-000000-4242.parquet")
    states(data / "stray_states.parquet")  # one part moved out of the cache
    listing = list_inputs(data)
    assert [path.name for path in listing.files] == ["pool.jsonl"]
    reasons = {path: reason for path, (_, reason) in skipped_map(listing.skipped).items()}
    assert reasons == {
        "cache/adapters/v1/paser-77/": "an adapter trained by the plugin (it holds paser_training.json)",
        "cache/gguf/3c4d/": "a model checkpoint (config.json with weights)",
        "cache/original_states/5e6f/": "hidden states of the original model cached by the plugin (part-*.parquet)",
        "cache/pruned/wanda-9f/": "a pruned model written by the plugin (it holds paser_pruning.json)",
        "stray_states.parquet": "hidden states of the original model cached by the plugin",
        "selections/v1/": "an export of a selection (selection.json, .jsonl and .parquet)",
        "warehouse.db": "a DuckDB database (the plugin's storage)",
    }


def test_the_caller_can_exclude_output_locations_whatever_they_are_called(tmp_path: Path):
    data = tmp_path / "data"
    jsonl(data / "pool.jsonl", [GOOD])
    jsonl(data / "exports" / "v1" / "only.jsonl", [OTHER])  # not recognisable by content alone
    jsonl(data / "models" / "notes.jsonl", [THIRD])
    touch(data / "db.duckdb.wal", b"\x00")  # the log of a database that lives elsewhere
    exclude = [data / "exports", data / "models", data / "db.duckdb"]
    build = load_pool(str(data), exclude=exclude)
    assert build.accepted["source"].tolist() == ["pool.jsonl"]
    assert {entry.path for entry in build.skipped} == {"db.duckdb.wal", "exports/", "models/"}
    assert all(entry.kind == PLUGIN_OUTPUT and "excluded" in entry.reason for entry in build.skipped)


def test_an_excluded_or_output_path_given_as_the_dataset_fails_clearly(tmp_path: Path):
    database = duckdb_file(tmp_path / "paser.duckdb")
    with pytest.raises(PoolInputError, match=r"paser\.duckdb: a DuckDB database .*not read as data"):
        load_pool(str(database))
    folder = checkpoint(tmp_path / "model", "paser_pruning.json")
    with pytest.raises(PoolInputError, match=r"model: the folder is a pruned model written by the plugin"):
        load_pool(str(folder))
    data = jsonl(tmp_path / "exports" / "v1" / "selection.jsonl", [GOOD])
    with pytest.raises(PoolInputError, match=r"excluded as one of the plugin's outputs"):
        load_pool(str(data), exclude=[tmp_path / "exports"])


@pytest.mark.parametrize(
    ("name", "kind", "reason_part"),
    [
        ("rows.parquet.gz", REFUSED, "Parquet compresses inside the file"),
        ("rows.zip", REFUSED, "an archive is not read"),
        ("rows.tar.gz", REFUSED, "an archive is not read"),
        ("rows.jsonl.zst", REFUSED, ".zst compression is not read"),
        ("rows.txt.gz", NOT_DATA, "a compressed .txt is not a data format"),
        ("README", NOT_DATA, "no extension"),
    ],
)
def test_files_that_are_not_read_say_why(tmp_path: Path, name: str, kind: str, reason_part: str):
    jsonl(tmp_path / "pool.jsonl", [GOOD])
    touch(tmp_path / name, b"\x1f\x8b not really")
    listing = list_inputs(tmp_path)
    assert [path.name for path in listing.files] == ["pool.jsonl"]
    (entry,) = listing.skipped
    assert (entry.path, entry.kind) == (name, kind)
    assert reason_part in entry.reason


@pytest.mark.parametrize("name", ["rows.jsonl.gz", "rows.csv.bz2", "rows.tsv.xz", "rows.json.gz", "ROWS.NDJSON.GZ"])
def test_compressed_text_files_are_read_as_given(tmp_path: Path, name: str):
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}[Path(name).suffix.lower()]
    inner = Path(name).with_suffix("").suffix.lower()
    text = {
        ".jsonl": json.dumps(GOOD) + "\n",
        ".ndjson": json.dumps(GOOD) + "\n",
        ".json": json.dumps([GOOD]),
        ".csv": 'instruction,input,output\nAdd the numbers.,"2, 3",5\n',
        ".tsv": "instruction\tinput\toutput\nAdd the numbers.\t2, 3\t5\n",
    }[inner]
    with opener(tmp_path / name, "wt", encoding="utf-8") as handle:
        handle.write(text)
    for spec in (tmp_path / name, tmp_path):
        build = load_pool(str(spec))
        assert build.accepted[["source", "instruction", "input", "output"]].values.tolist() == [
            [name, GOOD["instruction"], GOOD["input"], GOOD["output"]]
        ]


def test_an_unsupported_single_file_names_the_formats_and_compressions(tmp_path: Path):
    path = touch(tmp_path / "rows.parquet.gz", b"\x1f\x8b")
    with pytest.raises(PoolInputError, match=r"rows\.parquet\.gz: unsupported file type '\.gz'") as error:
        load_pool(str(path))
    assert "Parquet compresses inside the file" in str(error.value)
    assert ".jsonl" in str(error.value) and ".gz" in str(error.value)


def test_hidden_folders_links_to_folders_and_broken_links_are_not_followed(tmp_path: Path):
    data = tmp_path / "data"
    jsonl(data / "pool.jsonl", [GOOD])
    jsonl(data / ".cache" / "deep" / "rows.jsonl", [OTHER])
    jsonl(data / "_private" / "rows.jsonl", [THIRD])  # a leading underscore is not hidden
    elsewhere = jsonl(tmp_path / "elsewhere" / "rows.jsonl", [OTHER])
    os.symlink(elsewhere.parent, data / "linked")
    os.symlink(elsewhere, data / "linked_file.jsonl")  # a link to a file is read
    os.symlink(tmp_path / "missing.jsonl", data / "broken.jsonl")
    listing = list_inputs(data)
    assert [str(path.relative_to(data)) for path in listing.files] == [
        str(Path("_private") / "rows.jsonl"),
        "linked_file.jsonl",
        "pool.jsonl",
    ]
    assert {path: kind for path, (kind, _) in skipped_map(listing.skipped).items()} == {
        ".cache/": HIDDEN,
        "broken.jsonl": UNREADABLE,
        "linked/": NOT_DATA,
    }


def test_a_folder_that_holds_only_skipped_files_says_what_it_skipped(tmp_path: Path):
    duckdb_file(tmp_path / "paser.duckdb")
    touch(tmp_path / "notes.txt", "x")
    with pytest.raises(PoolInputError, match=r"the folder holds no .*json.* files; skipped 2, e.g. notes\.txt: not a"):
        load_pool(str(tmp_path))


def test_a_data_file_named_like_a_model_file_outside_a_checkpoint_is_still_read(tmp_path: Path):
    # config.json alone (no weights) is not a checkpoint; only the pair is.
    touch(tmp_path / "config.json", json.dumps([GOOD]))
    build = load_pool(str(tmp_path))
    assert build.accepted["source"].tolist() == ["config.json"]
    assert build.skipped == []


# --- Paths that exist but are neither files nor folders ---------------------------------------------


def finishes(call, fifo: Path, seconds: float = 5.0):
    """``call()``'s result, failing the test if it blocks (as opening ``fifo`` for reading does with no writer).
    A blocked call is released by a writer that comes and goes, so that no thread stays stuck."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    blocked = thread.is_alive()
    if blocked:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(seconds)
    assert not blocked, f"blocked on the FIFO {fifo}"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]


def special_path(kind: str, folder: Path) -> Path:
    if kind == "device":
        return Path("/dev/null")
    if kind == "fifo":
        os.mkfifo(folder / "rows.jsonl")
        return folder / "rows.jsonl"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind("rows.sock")  # relative to the test's folder: AF_UNIX paths are short
    server.close()  # the socket file stays
    return folder / "rows.sock"


@pytest.mark.parametrize(
    ("kind", "what"), [("device", "a character device"), ("fifo", "a FIFO (named pipe)"), ("socket", "a socket")]
)
def test_a_dataset_that_is_a_device_fifo_or_socket_is_named_for_what_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, what: str
):
    """Not "no such file or folder": the path exists. Judged from its stat, so a FIFO is never opened (that would
    block until a writer comes)."""
    monkeypatch.chdir(tmp_path)
    path = special_path(kind, tmp_path)
    expected = f"{path} is {what}, not a file or folder of instruction data"
    with pytest.raises(PoolInputError) as error:
        finishes(lambda: list_inputs(path), path)
    assert str(error.value) == expected
    with pytest.raises(PoolInputError) as error:
        finishes(lambda: load_pool(str(path)), path)
    assert str(error.value) == expected


def test_a_dataset_that_is_a_broken_link_says_so(tmp_path: Path):
    link = tmp_path / "rows.jsonl"
    os.symlink(tmp_path / "gone.jsonl", link)
    with pytest.raises(PoolInputError) as error:
        list_inputs(link)
    assert str(error.value) == (
        f"{link} is a broken link (to {tmp_path / 'gone.jsonl'}), not a file or folder of instruction data"
    )


def test_a_fifo_in_a_folder_is_skipped_without_being_opened(tmp_path: Path):
    """Beside a FIFO, names that make the walk look for a DuckDB file (``x.wal`` beside ``x``, a folder ``x.tmp``)
    must not open it: the walk would wait for a writer forever."""
    data = tmp_path / "data"
    jsonl(data / "pool.jsonl", [GOOD])
    fifo = data / "pipe"
    os.mkfifo(fifo)
    touch(data / "pipe.wal", "x")
    (data / "pipe.tmp").mkdir()
    jsonl(data / "pipe.tmp" / "rows.jsonl", [OTHER])
    listing = finishes(lambda: list_inputs(data), fifo)
    assert [str(path.relative_to(data)) for path in listing.files] == [
        str(Path("pipe.tmp") / "rows.jsonl"),
        "pool.jsonl",
    ]
    skipped = skipped_map(listing.skipped)
    assert skipped["pipe"] == (UNREADABLE, "a FIFO (named pipe), not a regular file")
    assert skipped["pipe.wal"][0] == NOT_DATA
