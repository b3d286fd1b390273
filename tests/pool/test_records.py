"""Validation, normalisation, field mapping and de-duplication of the recovery pool."""

from __future__ import annotations

import json
import random
import unicodedata
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from paser_assets.core.text import sample_id
from paser_assets.pool import (
    FieldMapping,
    PoolBuild,
    PoolInputError,
    build_pool,
    load_pool,
    read_dataset,
    require_usable,
)
from paser_assets.pool.readers import REJECTION_REASONS, RawRow
from paser_assets.pool.records import POOL_COLUMNS, REJECTED_COLUMNS

GOOD = {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def build_file(path: Path, mapping: FieldMapping | None = None, max_chars: int = 20_000) -> PoolBuild:
    return build_pool(read_dataset(str(path)), mapping or FieldMapping(), max_chars)


def build_records(records: list, mapping: FieldMapping | None = None, max_chars: int = 20_000) -> PoolBuild:
    rows = [RawRow("mem", i, r) for i, r in enumerate(records, start=1)]
    return build_pool(rows, mapping or FieldMapping(), max_chars)


# --- Field mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instruction_key", "input_key", "output_key"),
    [
        ("instruction", "input", "output"),
        ("prompt", "context", "response"),
        ("question", "inputs", "answer"),
        ("query", "input", "completion"),
        ("task", "context", "target"),
        ("problem", "input", "solution"),
    ],
)
def test_default_aliases_are_recognised(tmp_path, instruction_key, input_key, output_key):
    record = {instruction_key: "Sort the list.", input_key: "3, 1, 2", output_key: "1, 2, 3"}
    build = build_file(write_jsonl(tmp_path / "aliases.jsonl", [record]))
    assert build.rejected.empty
    row = build.accepted.iloc[0]
    assert (row["instruction"], row["input"], row["output"]) == ("Sort the list.", "3, 1, 2", "1, 2, 3")


@pytest.mark.parametrize("family_key", ["family", "category", "capability", "label"])
def test_family_aliases_are_recognised(family_key):
    build = build_records([{**GOOD, family_key: " arithmetic "}])
    assert build.accepted.iloc[0]["family"] == "arithmetic"


def test_family_is_none_when_absent_or_not_a_label():
    build = build_records(
        [GOOD, {**GOOD, "output": "five", "family": {"nested": 1}}, {**GOOD, "output": "V", "label": 3}]
    )
    families = build.accepted["family"].tolist()
    assert pd.isna(families[0]) and pd.isna(families[1])  # pandas may hold NULL as None or NaN
    assert families[2] == "3"


def test_aliases_are_tried_in_order():
    record = {"prompt": "second choice", "instruction": "first choice", "answer": "later", "response": "earlier"}
    row = build_records([record]).accepted.iloc[0]
    assert row["instruction"] == "first choice"
    assert row["output"] == "earlier"


def test_input_is_optional():
    row = build_records([{"instruction": "Say hi.", "output": "Hi."}]).accepted.iloc[0]
    assert row["input"] == ""


def test_explicit_mapping_wins_over_aliases(tmp_path):
    record = {"instruction": "Q?", "output": "alias answer", "my_answer": "mapped answer", "ctx": "given"}
    path = write_jsonl(tmp_path / "mapped.jsonl", [record])
    build = build_file(path, FieldMapping({"output": "my_answer", "input": "ctx"}))
    row = build.accepted.iloc[0]
    assert row["output"] == "mapped answer"
    assert row["input"] == "given"
    assert row["instruction"] == "Q?"


def test_explicit_mapping_replaces_the_aliases_for_that_field():
    build = build_records([{**GOOD}], FieldMapping({"output": "my_answer"}))
    assert build.accepted.empty
    rejected = build.rejected.iloc[0]
    assert rejected["reason"] == "missing_output"
    assert "my_answer" in rejected["detail"]


def test_explicit_mapping_through_load_pool_on_a_csv(tmp_path):
    path = tmp_path / "custom.csv"
    path.write_text("task_text,gold\nDouble 4.,8\nHalve 8.,4\n", encoding="utf-8")
    build = load_pool(str(path), field_map={"instruction": "task_text", "output": "gold"})
    assert build.accepted[["instruction", "output"]].values.tolist() == [["Double 4.", "8"], ["Halve 8.", "4"]]


def test_unknown_pool_field_in_the_mapping_raises():
    with pytest.raises(ValueError, match=r"unknown pool fields \['answer_text'\]") as error:
        FieldMapping({"answer_text": "output"})
    assert "instruction" in str(error.value)  # the message lists the known fields


def test_unknown_pool_field_through_load_pool_raises(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD])
    with pytest.raises(ValueError, match="unknown pool fields"):
        load_pool(str(path), field_map={"reply": "output"})


# --- Rejection reasons -----------------------------------------------------------------------

# (raw JSONL line, expected reason, text the detail must contain)
REJECTION_CASES = {
    "malformed_row": ('{"instruction": "unterminated', "malformed_row", "invalid JSON"),
    "wrong_type_output": (json.dumps({"instruction": "Add.", "output": 5}), "wrong_type", "'output' is int"),
    "wrong_type_instruction": (
        json.dumps({"instruction": ["a"], "output": "b"}),
        "wrong_type",
        "'instruction' is list",
    ),
    "wrong_type_input": (json.dumps({"instruction": "a", "input": {"k": 1}, "output": "b"}), "wrong_type", "'input'"),
    "wrong_type_alias": (json.dumps({"question": "a", "answer": 1.5}), "wrong_type", "'answer' is float"),
    "wrong_type_record": ("[1, 2, 3]", "wrong_type", "record is list"),
    "wrong_type_scalar": ('"just a string"', "wrong_type", "record is str"),
    "undecodable_instruction": ('{"instruction": "caf\xe9", "output": "ok"}', "undecodable_text", "'instruction'"),
    "undecodable_output": ('{"instruction": "ok", "response": "\xff\xfe"}', "undecodable_text", "'response'"),
    "missing_instruction": (json.dumps({"output": "b"}), "missing_instruction", "no instruction field"),
    "null_instruction": (json.dumps({"instruction": None, "output": "b"}), "missing_instruction", "instruction"),
    "empty_instruction": (json.dumps({"instruction": "  \n\t ", "output": "b"}), "empty_instruction", "instruction"),
    "invisible_instruction": (
        json.dumps({"instruction": "\u200b\x00", "output": "b"}),
        "empty_instruction",
        "instruction",
    ),
    "missing_output": (json.dumps({"instruction": "a", "input": "x"}), "missing_output", "no output field"),
    "null_output": (json.dumps({"instruction": "a", "output": None}), "missing_output", "output"),
    "empty_output": (json.dumps({"instruction": "a", "output": ""}), "empty_output", "output"),
    "blank_output": (json.dumps({"instruction": "a", "output": " \r\n "}), "empty_output", "output"),
    "too_long": (json.dumps({"instruction": "a" * 40, "input": "b" * 40, "output": "c" * 40}), "too_long", "120"),
}


def _write_case(path: Path, bad_line: str) -> Path:
    # Latin-1 turns the \xe9 / \xff placeholders into the raw invalid UTF-8 bytes they stand for.
    good_line = json.dumps(GOOD)
    path.write_bytes(b"\n".join(line.encode("latin-1") for line in [good_line, bad_line, good_line]) + b"\n")
    return path


@pytest.mark.parametrize("case", sorted(REJECTION_CASES))
def test_each_rejection_reason(tmp_path, case):
    bad_line, reason, detail_part = REJECTION_CASES[case]
    build = build_file(_write_case(tmp_path / "rows.jsonl", bad_line), max_chars=100)
    assert build.rows_read == 3
    assert len(build.rejected) == 1
    rejected = build.rejected.iloc[0]
    assert rejected["reason"] == reason
    assert rejected["source"] == "rows.jsonl"
    assert rejected["source_row"] == 2  # the line number
    assert detail_part in rejected["detail"]
    # The surrounding good rows survive (and are the same record, so kept once).
    assert len(build.accepted) == 1
    assert build.accepted.iloc[0]["duplicate_count"] == 2
    assert build.rejection_counts == {reason: 1}


def test_every_rejection_reason_is_covered():
    assert {reason for _, reason, _ in REJECTION_CASES.values()} == set(REJECTION_REASONS)


def test_missing_field_detail_lists_the_names_looked_for():
    build = build_records([{"text": "no usable fields"}])
    detail = build.rejected.iloc[0]["detail"]
    assert detail == "no instruction field (looked for: instruction, prompt, question, query, task, problem)"


def test_validation_rejection_keeps_a_preview_of_the_raw_row():
    build = build_records([{"instruction": "x" * 500, "output": 3}])
    preview = build.rejected.iloc[0]["preview"]
    assert preview.startswith("{'instruction': 'xxx")
    assert len(preview) == 200


def test_too_long_counts_all_three_fields_and_the_limit_is_inclusive():
    at_limit = {"instruction": "a" * 4, "input": "b" * 3, "output": "c" * 3}
    over = {"instruction": "a" * 4, "input": "b" * 3, "output": "c" * 4}
    build = build_records([at_limit, over], max_chars=10)
    assert build.accepted["n_chars"].tolist() == [10]
    assert build.rejected.iloc[0]["reason"] == "too_long"
    assert build.rejected.iloc[0]["detail"] == "11 characters, over the limit of 10"


def test_too_long_is_measured_after_normalisation():
    build = build_records([{"instruction": "   short   ", "output": "\n\n ok \n\n"}], max_chars=7)
    assert build.accepted["n_chars"].tolist() == [7]


def test_undecodable_csv_cell_rejects_only_its_row(tmp_path):
    path = tmp_path / "cells.csv"
    path.write_bytes(b"question,answer\nOne?,1\nTwo?,bad \xc3\x28 byte\nThree?,3\n")
    build = build_file(path)
    assert build.accepted["instruction"].tolist() == ["One?", "Three?"]
    assert build.accepted["source_row"].tolist() == [1, 3]
    rejected = build.rejected.iloc[0]
    assert (rejected["reason"], rejected["source"], rejected["source_row"]) == ("undecodable_text", "cells.csv", 2)
    assert "'answer'" in rejected["detail"]


def test_malformed_csv_row_is_recorded_with_its_source(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("instruction,output\na,b\nc,d,e\n", encoding="utf-8")
    build = build_file(path)
    rejected = build.rejected.iloc[0]
    assert (rejected["reason"], rejected["source"], rejected["source_row"]) == ("malformed_row", "ragged.csv", 2)
    assert rejected["detail"] == "3 cells for 2 columns"


def test_rejections_from_a_folder_name_the_relative_file(tmp_path):
    (tmp_path / "part").mkdir()
    write_jsonl(tmp_path / "a.jsonl", [GOOD])
    write_jsonl(tmp_path / "part" / "b.jsonl", [{"instruction": "x"}, {"instruction": "y", "output": 2}])
    build = build_file(tmp_path)
    assert build.rejected[["source", "source_row", "reason"]].values.tolist() == [
        [str(Path("part") / "b.jsonl"), 1, "missing_output"],
        [str(Path("part") / "b.jsonl"), 2, "wrong_type"],
    ]


# --- Normalisation, hashing, de-duplication --------------------------------------------------


def test_accepted_rows_are_normalised():
    record = {
        "instruction": "  Explain cafe\u0301 \x00culture.\r\n ",
        "input": "\ufeffline one\r\nline two\x07",
        "output": "\n\ndef f():\r\n    return 'é'\r\n\n",
    }
    row = build_records([record]).accepted.iloc[0]
    assert row["instruction"] == "Explain café culture."
    assert unicodedata.is_normalized("NFC", row["instruction"])
    assert row["input"] == "line one\nline two"
    assert row["output"] == "def f():\n    return 'é'"
    assert row["n_chars"] == len(row["instruction"]) + len(row["input"]) + len(row["output"])
    assert row["sample_id"] == sample_id(row["instruction"], row["input"], row["output"])


def test_sample_id_is_stable_across_builds(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, {"instruction": "Name a colour.", "output": "Blue."}])
    first = build_file(path).accepted["sample_id"].tolist()
    second = build_file(path).accepted["sample_id"].tolist()
    assert first == second
    assert len(set(first)) == 2


def test_sample_id_differs_for_different_field_splits():
    build = build_records(
        [
            {"instruction": "ab", "input": "c", "output": "out"},
            {"instruction": "a", "input": "bc", "output": "out"},
        ]
    )
    assert len(build.accepted) == 2
    assert build.accepted["sample_id"].nunique() == 2
    assert build.duplicates_removed == 0


def test_duplicates_are_kept_once_with_their_count_and_first_occurrence():
    records = [
        {"instruction": "Other.", "output": "x"},
        {"instruction": "Café?", "output": "Yes."},
        {"instruction": "Cafe\u0301?  ", "output": "Yes.\r\n"},  # identical after normalisation
        {"prompt": "Café?", "response": "Yes.", "family": "ignored for identity"},
        {"instruction": "Café?", "input": "", "output": "Yes."},
    ]
    build = build_records(records)
    assert build.rows_read == 5
    assert len(build.accepted) == 2
    assert build.duplicates_removed == 3
    dup = build.accepted.set_index("instruction").loc["Café?"]
    assert dup["duplicate_count"] == 4
    assert dup["source_row"] == 2
    assert build.accepted["duplicate_count"].sum() == 5


def test_duplicates_across_files_keep_the_first_file(tmp_path):
    write_jsonl(tmp_path / "1_first.jsonl", [GOOD])
    write_jsonl(tmp_path / "2_second.jsonl", [{"instruction": "Other.", "output": "x"}, GOOD])
    build = build_file(tmp_path)
    first = build.accepted[build.accepted["instruction"] == GOOD["instruction"]].iloc[0]
    assert (first["source"], first["source_row"], first["duplicate_count"]) == ("1_first.jsonl", 1, 2)


def test_duplicates_many_rows_apart_keep_the_first_occurrence_in_read_order():
    """Rows are de-duplicated a run of thousands at a time; a duplicate of a row read several runs earlier, or
    later in the same run, still counts towards the first occurrence, and the pool keeps the read order. Here
    20,000 rows with duplicates among them, then 30,000 duplicates only (more than a run), then 10,000 more."""
    chooser = random.Random(7)
    contents: list[int] = []
    for index in range(60_000):
        repeat = contents and (20_000 <= index < 50_000 or chooser.random() < 0.3)
        contents.append(chooser.choice(contents) if repeat else index)
    records = [
        {"instruction": f"Task {k}.", "input": "" if k % 4 else f"ctx {k}", "output": f"Done {k}."}
        | ({"family": f"f{k % 3}"} if k % 5 == 0 else {})
        for k in contents
    ]
    build = build_records(records)
    first: dict[int, int] = {}
    for row, k in enumerate(contents, start=1):
        first.setdefault(k, row)
    counts = Counter(contents)
    expected = pd.DataFrame(
        {
            "sample_id": [sample_id(f"Task {k}.", "" if k % 4 else f"ctx {k}", f"Done {k}.") for k in first],
            "family": [f"f{k % 3}" if k % 5 == 0 else None for k in first],
            "source_row": list(first.values()),
            "duplicate_count": [counts[k] for k in first],
        }
    )
    accepted = build.accepted[["sample_id", "family", "source_row", "duplicate_count"]]
    pd.testing.assert_frame_equal(accepted, expected, check_dtype=False)
    assert build.duplicates_removed == len(contents) - len(first)


def test_frames_have_the_documented_columns_and_integer_types():
    for build in (build_records([GOOD, {"instruction": "x"}]), build_records([])):
        assert list(build.accepted.columns) == list(POOL_COLUMNS)
        assert list(build.rejected.columns) == list(REJECTED_COLUMNS)
        for column in ("source_row", "duplicate_count", "n_chars"):
            assert build.accepted[column].dtype == "int64"
        assert build.rejected["source_row"].dtype == "int64"


def test_rejection_counts_are_per_reason():
    build = build_records([{"instruction": "x"}, {"output": "y"}, {"instruction": "z"}, GOOD])
    assert build.rejection_counts == {"missing_instruction": 1, "missing_output": 2}
    assert build_records([GOOD]).rejection_counts == {}


# --- No usable row ---------------------------------------------------------------------------


def test_require_usable_passes_when_a_row_is_accepted():
    build = build_records([GOOD, {"instruction": "x"}])
    assert require_usable(build, "spec") is None


def test_require_usable_names_counts_and_first_rejection(tmp_path):
    path = tmp_path / "all_bad.jsonl"
    path.write_text(
        "\n".join([json.dumps({"instruction": "a"}), json.dumps({"output": "b"}), json.dumps({"instruction": "c"})]),
        encoding="utf-8",
    )
    build = build_file(path)
    with pytest.raises(PoolInputError) as error:
        require_usable(build, str(path))
    message = str(error.value)
    assert message.startswith(f"{path}: none of the 3 rows is usable")
    assert "missing_instruction: 1" in message and "missing_output: 2" in message
    assert "first rejection: all_bad.jsonl row 1: no output field" in message


def test_load_pool_with_no_usable_row_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("instruction,output\n   ,x\nq,\n", encoding="utf-8")
    with pytest.raises(PoolInputError) as error:
        load_pool(str(path))
    message = str(error.value)
    assert str(path) in message
    assert "none of the 2 rows is usable (empty_instruction: 1, empty_output: 1)" in message
    assert "first rejection: bad.csv row 1: the instruction is empty" in message


def test_load_pool_with_no_rows_at_all_is_a_clear_error(tmp_path):
    path = tmp_path / "empty_array.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(PoolInputError, match=r"empty_array\.json: the input holds no rows"):
        load_pool(str(path))


def test_load_pool_propagates_a_file_error(tmp_path):
    with pytest.raises(PoolInputError, match="no such file or folder"):
        load_pool(str(tmp_path / "missing.jsonl"))


def test_load_pool_reads_a_file_and_applies_max_chars(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD, {"instruction": "long", "output": "y" * 50}])
    build = load_pool(str(path), max_chars=30)
    assert build.accepted["instruction"].tolist() == [GOOD["instruction"]]
    assert build.rejection_counts == {"too_long": 1}
    assert build.rows_read == 2
