"""Bad input through Dagster: each bad file gives rejected rows with reasons, or one clear failure naming the file.

Every case materializes only the ``recovery_pool`` asset (tables ``recovery_pool`` + ``recovery_pool_rejected``)
into a real DuckDB file and reads the tables back. The readers' own edge cases are in ``tests/pool``; here we check
what a user sees: the rows in DuckDB, or a ``dg.Failure`` whose message names the file (and row), never a bare
traceback, and never a half-written table.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
import resource
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
from paser_cli import run_paser

from paser_assets import PaserConfig, PaserDuckDB, build_definitions, storage

GOOD = [
    {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
]


def jsonl(path: Path, lines: list, encoding: str = "utf-8") -> Path:
    """Write ``lines`` as JSONL; a str item is written verbatim (a malformed line)."""
    text = "".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n" for line in lines)
    path.write_bytes(text.encode(encoding))
    return path


def materialize_pool(dataset: Path | str, db: Path, **settings) -> dg.ExecuteInProcessResult:
    defs = build_definitions(PaserConfig(dataset=str(dataset), **settings), PaserDuckDB(database=str(db)))
    return dg.materialize(
        [defs.get_assets_def("recovery_pool")],
        resources=defs.resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def rows(db: Path, table: str, columns: str = "*") -> list[tuple]:
    database = PaserDuckDB(database=str(db))
    with database.get_connection(read_only=True) as conn:
        return conn.execute(f"SELECT {columns} FROM {storage.validate_identifier(table)} ORDER BY ALL").fetchall()


def rejected(db: Path) -> list[tuple]:
    """(source, source_row, reason) of every rejected row."""
    return rows(db, "recovery_pool_rejected", "source, source_row, reason")


def kept(db: Path) -> list[tuple]:
    """(source, source_row, instruction, output) of every pool row."""
    return rows(db, "recovery_pool", "source, source_row, instruction, output")


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The one step failure's message; asserts it is a ``dg.Failure`` our code raised, not a bare exception."""
    assert not result.success
    failures = [event for event in result.all_events if event.is_step_failure]
    assert len(failures) == 1
    data = failures[0].step_failure_data
    assert failures[0].step_key == "recovery_pool"
    assert data.error is not None and data.error.cls_name == "Failure", data.error
    assert data.user_failure_data is not None
    message = data.user_failure_data.description
    assert message and "Traceback" not in message and "\n" not in message.strip()
    return message


def assert_success(result: dg.ExecuteInProcessResult) -> None:
    assert result.success, [e.step_failure_data for e in result.all_events if e.is_step_failure]
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == {"recovery_pool"}


@pytest.fixture
def good_db(tmp_path: Path) -> tuple[Path, list[tuple], list[tuple]]:
    """A DuckDB file already holding a good pool (with one rejected row), and a full copy of both tables."""
    db = tmp_path / "paser.duckdb"
    source = jsonl(tmp_path / "good_pool.jsonl", [*GOOD, "{not json"])
    assert_success(materialize_pool(source, db))
    pool, rejects = rows(db, "recovery_pool"), rows(db, "recovery_pool_rejected")
    assert len(pool) == 3 and len(rejects) == 1
    return db, pool, rejects


def fail_after_good(good_db, dataset: Path | str) -> str:
    """Run a bad input into the DB of ``good_db``: it fails, and both tables still hold the good run's rows."""
    db, pool, rejects = good_db
    message = failure_message(materialize_pool(dataset, db))
    assert rows(db, "recovery_pool") == pool
    assert rows(db, "recovery_pool_rejected") == rejects
    return message


# --- failures that name the file -------------------------------------------------------------


def test_truncated_json_fails_naming_file_and_line(tmp_path: Path, good_db) -> None:
    path = tmp_path / "truncated.json"
    path.write_text(json.dumps(GOOD, indent=1)[:-40], encoding="utf-8")  # cut inside the last record
    message = fail_after_good(good_db, path)
    assert re.search(r"truncated\.json: not valid JSON at line \d+, column \d+", message), message


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv"])
def test_empty_file_fails_naming_the_file(tmp_path: Path, good_db, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    assert fail_after_good(good_db, path) == f"{name}: the file is empty"


def test_missing_path_fails_naming_the_path(tmp_path: Path, good_db) -> None:
    missing = tmp_path / "no-such-folder" / "pool.jsonl"
    assert fail_after_good(good_db, missing) == f"{missing}: no such file or folder"


def test_relative_missing_name_fails_naming_it(tmp_path: Path, good_db, monkeypatch) -> None:
    # "data/pool" could be a hub id, so it is tried there (offline in the tests) and the error still names it.
    monkeypatch.chdir(tmp_path)
    message = fail_after_good(good_db, "data/pool")
    assert message.startswith("'data/pool' is not a local path"), message


def test_file_where_every_row_is_bad_fails_naming_file_and_row(tmp_path: Path, good_db) -> None:
    path = jsonl(tmp_path / "all_bad.jsonl", [{"instruction": "x", "output": 1}, "[oops", "just text"])
    message = fail_after_good(good_db, path)
    assert "none of the 3 rows is usable" in message
    assert "first rejection: all_bad.jsonl row 1: field 'output' is int" in message


def test_folder_with_an_unparseable_json_fails_naming_that_file(tmp_path: Path, good_db) -> None:
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    jsonl(folder / "good.jsonl", GOOD[:2])
    jsonl(
        folder / "sub" / "partial.jsonl", [GOOD[2], '{"instruction": "half', {"instruction": "Hi.", "output": "Hello."}]
    )
    (folder / "notes.txt").write_text('{"instruction": "ignored", "output": "ignored"}\n', encoding="utf-8")
    (folder / "broken.json").write_text('[{"instruction": "a", "output": "b"}, {"instruction": ]', encoding="utf-8")
    # The whole input fails (a file that cannot be parsed at all is not skipped), and the message names it.
    message = fail_after_good(good_db, folder)
    assert message.startswith("broken.json: not valid JSON at line 1, column "), message

    # Without the broken file, the bad line is rejected with its file and line, the .txt file is ignored.
    (folder / "broken.json").unlink()
    db = tmp_path / "mixed.duckdb"
    assert_success(materialize_pool(folder, db))
    assert rejected(db) == [("sub/partial.jsonl", 2, "malformed_row")]
    assert kept(db) == sorted(
        [
            ("good.jsonl", 1, GOOD[0]["instruction"], GOOD[0]["output"]),
            ("good.jsonl", 2, GOOD[1]["instruction"], GOOD[1]["output"]),
            ("sub/partial.jsonl", 1, GOOD[2]["instruction"], GOOD[2]["output"]),
            ("sub/partial.jsonl", 3, "Hi.", "Hello."),
        ]
    )


# --- rows rejected with reasons, the rest kept ----------------------------------------------


def test_jsonl_malformed_lines_are_rejected_with_their_line_numbers(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "pool.jsonl",
        [GOOD[0], '{"instruction": "cut", "output": ', GOOD[1], "", "not json at all", GOOD[2], "{'single': 'quotes'}"],
    )
    db = tmp_path / "paser.duckdb"
    assert_success(materialize_pool(path, db))
    assert rejected(db) == [
        ("pool.jsonl", 2, "malformed_row"),
        ("pool.jsonl", 5, "malformed_row"),
        ("pool.jsonl", 7, "malformed_row"),
    ]
    details = rows(db, "recovery_pool_rejected", "detail")
    assert all(detail.startswith("invalid JSON: ") for (detail,) in details)
    assert kept(db) == sorted(
        [
            ("pool.jsonl", 1, GOOD[0]["instruction"], GOOD[0]["output"]),
            ("pool.jsonl", 3, GOOD[1]["instruction"], GOOD[1]["output"]),
            ("pool.jsonl", 6, GOOD[2]["instruction"], GOOD[2]["output"]),
        ]
    )


def test_mixed_encodings_reject_only_the_undecodable_rows(tmp_path: Path) -> None:
    folder = tmp_path / "encodings"
    folder.mkdir()
    jsonl(folder / "a_utf8.jsonl", [{"instruction": "Spell naïve.", "output": "naïve"}])
    utf16 = jsonl(
        folder / "b_utf16.jsonl", [{"instruction": "Say 日本語.", "output": "日本語 — ok"}], encoding="utf-16"
    )
    assert utf16.read_bytes().startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    latin1 = jsonl(
        folder / "c_latin1.jsonl",
        [
            {"instruction": "Order a café.", "output": "Un café, s'il vous plaît."},
            {"instruction": "Plain.", "output": "ascii"},
        ],
        encoding="latin-1",
    )
    assert b"caf\xe9" in latin1.read_bytes()  # not valid UTF-8
    db = tmp_path / "paser.duckdb"
    assert_success(materialize_pool(folder, db))
    assert rejected(db) == [("c_latin1.jsonl", 1, "undecodable_text")]
    (detail,) = rows(db, "recovery_pool_rejected", "detail")[0]
    assert "'instruction'" in detail
    assert kept(db) == [
        ("a_utf8.jsonl", 1, "Spell naïve.", "naïve"),
        ("b_utf16.jsonl", 1, "Say 日本語.", "日本語 — ok"),
        ("c_latin1.jsonl", 2, "Plain.", "ascii"),
    ]


def test_a_10_mb_row_is_rejected_as_too_long_quickly(tmp_path: Path) -> None:
    huge = {"instruction": "Repeat x.", "input": "", "output": "x" * 10_000_000}
    path = jsonl(tmp_path / "huge.jsonl", [GOOD[0], huge, GOOD[1]])
    db = tmp_path / "paser.duckdb"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.monotonic()
    result = materialize_pool(path, db)
    elapsed = time.monotonic() - start
    assert_success(result)
    assert elapsed < 30, f"{elapsed:.1f} s"
    # The peak grows by a few copies of the 10 MB line at most, not by a blow-up.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 1_000_000
    assert rejected(db) == [("huge.jsonl", 2, "too_long")]
    (detail, preview) = rows(db, "recovery_pool_rejected", "detail, preview")[0]
    assert detail == "10000009 characters, over the limit of 20000"
    assert len(preview) <= 200  # the 10 MB text is not copied into DuckDB
    assert [r[:2] for r in kept(db)] == [("huge.jsonl", 1), ("huge.jsonl", 3)]


def test_wrong_field_types_are_rejected_with_the_field_named(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path / "types.jsonl",
        [
            GOOD[0],
            {"instruction": "Count.", "output": 42},
            {"instruction": ["Two", "parts"], "output": "joined"},
            json.dumps("just a string"),
            "null",
            {"instruction": "Look up.", "input": {"key": 1}, "output": "1"},
            {"instruction": "Empty.", "output": "   "},
            {"output": "no instruction"},
        ],
    )
    db = tmp_path / "paser.duckdb"
    assert_success(materialize_pool(path, db))
    assert rows(db, "recovery_pool_rejected", "source_row, reason, detail") == [
        (2, "wrong_type", "field 'output' is int, expected a string"),
        (3, "wrong_type", "field 'instruction' is list, expected a string"),
        (4, "wrong_type", "record is str, expected an object"),
        (5, "wrong_type", "record is NoneType, expected an object"),
        (6, "wrong_type", "field 'input' is dict, expected a string"),
        (7, "empty_output", "the reference output is empty after normalisation"),
        (
            8,
            "missing_instruction",
            "no instruction field (looked for: instruction, prompt, question, query, task, problem)",
        ),
    ]
    assert kept(db) == [("types.jsonl", 1, GOOD[0]["instruction"], GOOD[0]["output"])]


def test_csv_with_embedded_newlines_and_quotes_is_parsed(tmp_path: Path) -> None:
    multiline = 'Line one\nLine "two", with a comma\n\n    indented line four'
    path = tmp_path / "pool.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["instruction", "input", "output"])
        writer.writerow(['Say "hi", politely.', "", "Hi!"])
        writer.writerow(["Write four lines.", "a, b\nc", multiline])
        writer.writerow(["Quote only.", "", '"'])
    raw = path.read_text(encoding="utf-8")
    assert '"Line one\nLine ""two"", with a comma' in raw  # really quoted, really multi-line
    db = tmp_path / "paser.duckdb"
    assert_success(materialize_pool(path, db))
    assert rejected(db) == []
    assert rows(db, "recovery_pool", "source_row, instruction, input, output") == [
        (1, 'Say "hi", politely.', "", "Hi!"),
        (2, "Write four lines.", "a, b\nc", multiline),
        (3, "Quote only.", "", '"'),
    ]


def test_field_map_with_an_odd_source_name_works_through_dagster(tmp_path: Path) -> None:
    # Sanity check that the asset honours the mapping (the security angle is in test_security_names.py).
    path = jsonl(tmp_path / "mapped.jsonl", [{"q": "Why?", "a": "Because."}])
    db = tmp_path / "paser.duckdb"
    assert_success(materialize_pool(path, db, field_map={"instruction": "q", "output": "a"}))
    assert kept(db) == [("mapped.jsonl", 1, "Why?", "Because.")]


# --- the CLI as a user runs it ---------------------------------------------------------------


def run_cli(tmp_path: Path, dataset: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PASER_DATASET": str(dataset),
        "PASER_DB": str(tmp_path / "cli.duckdb"),
        "DAGSTER_HOME": "",
    }
    return run_paser(["materialize", "--select", "key:recovery_pool"], env, tmp_path, timeout=300)


@pytest.mark.system
def test_cli_reports_a_missing_dataset_once_without_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "pool.jsonl"
    result = run_cli(tmp_path, missing)
    assert result.returncode == 2, result.stderr[-3000:]  # the user's to fix (see GraphRun.exit_code)
    assert "Traceback" not in result.stderr and "Stack Trace" not in result.stderr, result.stderr[-3000:]
    assert f"FAILED recovery_pool: {missing}: no such file or folder" in result.stderr
    assert result.stderr.count(str(missing)) == 1  # reported once, not again in Dagster's log lines
    assert "materialized 0 assets" in result.stdout


@pytest.mark.system
def test_cli_shows_progress_and_rejections_on_success(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "pool.jsonl", [*GOOD, "{broken"])
    result = run_cli(tmp_path, path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "read 4 rows: 3 kept, 1 rejected, 0 duplicates merged" in result.stderr  # Dagster's INFO log
    assert "materialized 1 assets" in result.stdout and "recovery_pool" in result.stdout
    assert rejected(tmp_path / "cli.duckdb") == [("pool.jsonl", 4, "malformed_row")]


def test_the_plugins_own_outputs_inside_the_dataset_folder_are_never_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    jsonl(data / "pool.jsonl", GOOD)
    db = data / "paser.duckdb"
    first = materialize_pool(data, db)
    assert_success(first)
    # What later runs leave beside the database: a model cache, an export, the CLI's run history.
    record = data / "paser_models" / "pruned" / "wanda-50-abc" / "paser_pruning.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"recipe": {"method": "wanda"}, "instruction": "x", "output": "y"}))
    (data / "paser_export" / "v").mkdir(parents=True)
    jsonl(data / "paser_export" / "v" / "selection.jsonl", GOOD[:1])
    (data / ".dagster_home").mkdir()
    second = materialize_pool(data, db)
    assert_success(second)
    assert len(rows(db, "recovery_pool", "sample_id")) == len(GOOD)
    assert rejected(db) == []
    skipped = second.asset_materializations_for_node("recovery_pool")[0].metadata["files_skipped"].value
    assert any("paser_models" in line for line in skipped) and any("paser_export" in line for line in skipped)
