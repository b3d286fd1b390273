"""Readers of the recovery pool: every input format, and a clear error for a file that cannot be parsed."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from paser_assets.core.text import has_undecodable_text
from paser_assets.pool import PoolInputError, RawRow, read_dataset
from paser_assets.pool.readers import MALFORMED_ROW, WRONG_TYPE, decode_bytes, list_input_files

RECORDS = [
    {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"},
    {"instruction": "Name a colour.", "input": "", "output": "Blue."},
    {"instruction": "Translate to French.", "input": "cat", "output": "chat"},
]


def read(path: Path) -> list[RawRow]:
    return list(read_dataset(str(path)))


def write_jsonl(path: Path, records: list, encoding: str = "utf-8") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding=encoding)
    return path


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ",", encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


def as_table(records: list[dict[str, str]]) -> list[list[str]]:
    header = list(records[0])
    return [header] + [[r[k] for k in header] for r in records]


# --- JSON ------------------------------------------------------------------------------------


def test_json_array(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(RECORDS, indent=2), encoding="utf-8")
    rows = read(path)
    assert [r.record for r in rows] == RECORDS
    assert [r.row for r in rows] == [1, 2, 3]
    assert {r.source for r in rows} == {"data.json"}
    assert all(r.error is None for r in rows)


def test_json_object_holding_one_array(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"version": 2, "name": "pool", "data": RECORDS}), encoding="utf-8")
    rows = read(path)
    assert [r.record for r in rows] == RECORDS
    assert [r.row for r in rows] == [1, 2, 3]


def test_json_single_flat_object_is_one_record(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(RECORDS[0]), encoding="utf-8")
    rows = read(path)
    assert len(rows) == 1
    assert rows[0].record == RECORDS[0]


def test_json_object_with_two_arrays_is_rejected_as_a_whole(tmp_path):
    path = tmp_path / "ambiguous.json"
    path.write_text(json.dumps({"train": RECORDS, "test": RECORDS}), encoding="utf-8")
    with pytest.raises(PoolInputError, match=r"ambiguous\.json: expected a JSON array of records"):
        read(path)


def test_json_scalar_document_is_rejected_as_a_whole(tmp_path):
    path = tmp_path / "scalar.json"
    path.write_text("42", encoding="utf-8")
    with pytest.raises(PoolInputError, match=r"scalar\.json: .*got int"):
        read(path)


def test_json_array_item_that_is_not_an_object_is_a_wrong_type_row(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([RECORDS[0], ["a", "list"], "text", RECORDS[1]]), encoding="utf-8")
    rows = read(path)
    assert [r.row for r in rows] == [1, 2, 3, 4]
    assert rows[0].record == RECORDS[0] and rows[3].record == RECORDS[1]
    assert rows[1].record is None and rows[1].error == (WRONG_TYPE, "record is list, expected an object")
    assert rows[2].record is None and rows[2].error[0] == WRONG_TYPE and "str" in rows[2].error[1]


def test_json_extension_holding_json_lines_is_read_as_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "actually_lines.json", RECORDS)
    rows = read(path)
    assert [r.record for r in rows] == RECORDS
    assert [r.row for r in rows] == [1, 2, 3]


def test_malformed_json_file_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c" "output": "d"}\n]\n')
    with pytest.raises(PoolInputError, match=r"broken\.json: not valid JSON at line 3, column \d+"):
        read(path)


def test_truncated_json_file_is_a_clear_error(tmp_path):
    path = tmp_path / "truncated.json"
    path.write_text(json.dumps(RECORDS, indent=2)[:-20], encoding="utf-8")
    with pytest.raises(PoolInputError, match=r"truncated\.json: not valid JSON at line \d+"):
        read(path)


# --- JSONL -----------------------------------------------------------------------------------


def test_jsonl_skips_blank_lines_and_numbers_rows_by_line(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(RECORDS[0]), "", "   ", json.dumps(RECORDS[1]), "", json.dumps(RECORDS[2])]
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    rows = read(path)
    assert [r.record for r in rows] == RECORDS
    assert [r.row for r in rows] == [1, 4, 6]
    assert {r.source for r in rows} == {"data.jsonl"}


def test_jsonl_malformed_line_is_a_rejected_row_with_its_line_number(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(RECORDS[0]), '{"instruction": "oops", "output": ', json.dumps(RECORDS[1])]
    path.write_text("\n".join(lines), encoding="utf-8")
    rows = read(path)
    assert [r.row for r in rows] == [1, 2, 3]
    assert rows[0].record == RECORDS[0] and rows[2].record == RECORDS[1]
    bad = rows[1]
    assert bad.record is None
    assert bad.error[0] == MALFORMED_ROW
    assert bad.error[1].startswith("invalid JSON")
    assert bad.source == "data.jsonl"


def test_jsonl_line_that_is_not_an_object_is_a_wrong_type_row(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n[1, 2]\n", encoding="utf-8")
    rows = read(path)
    assert rows[1].row == 2
    assert rows[1].error == (WRONG_TYPE, "record is list, expected an object")


def test_jsonl_with_crlf_line_ends(tmp_path):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(("\r\n".join(json.dumps(r) for r in RECORDS) + "\r\n").encode("utf-8"))
    rows = read(path)
    assert [r.record for r in rows] == RECORDS
    assert [r.row for r in rows] == [1, 2, 3]


def test_ndjson_extension_is_read_as_jsonl(tmp_path):
    rows = read(write_jsonl(tmp_path / "data.ndjson", RECORDS))
    assert [r.record for r in rows] == RECORDS


def test_jsonl_line_with_invalid_utf8_still_parses_and_keeps_the_other_rows(tmp_path):
    path = tmp_path / "bytes.jsonl"
    good = json.dumps(RECORDS[0]).encode("utf-8")
    bad = b'{"instruction": "caf\xe9 au lait", "output": "ok"}'
    path.write_bytes(good + b"\n" + bad + b"\n" + good.replace(b"Add", b"Sum") + b"\n")
    rows = read(path)
    assert len(rows) == 3
    assert all(r.error is None for r in rows)
    assert has_undecodable_text(rows[1].record["instruction"])
    assert not has_undecodable_text(rows[0].record["instruction"])
    assert rows[2].record["instruction"] == "Sum the numbers."


# --- Parquet ---------------------------------------------------------------------------------


def test_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    table = pa.table(
        {
            "instruction": [r["instruction"] for r in RECORDS],
            "input": [r["input"] for r in RECORDS],
            "output": [r["output"] for r in RECORDS[:2]] + [None],
            "score": [1, 2, 3],
        }
    )
    pq.write_table(table, path)
    rows = read(path)
    assert [r.row for r in rows] == [1, 2, 3]
    assert rows[0].record == {**RECORDS[0], "score": 1}
    assert rows[2].record["output"] is None
    assert {r.source for r in rows} == {"data.parquet"}


def test_parquet_row_numbers_continue_across_batches_and_row_groups(tmp_path):
    path = tmp_path / "big.parquet"
    n = 5000
    table = pa.table({"instruction": [f"task {i}" for i in range(n)], "output": [f"answer {i}" for i in range(n)]})
    pq.write_table(table, path, row_group_size=1500)
    rows = read(path)
    assert [r.row for r in rows] == list(range(1, n + 1))
    assert rows[-1].record == {"instruction": f"task {n - 1}", "output": f"answer {n - 1}"}


def test_parquet_that_is_not_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"this is not a parquet file, just some bytes")
    with pytest.raises(PoolInputError, match=r"garbage\.parquet: not a readable Parquet file"):
        read(path)


def test_truncated_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "truncated.parquet"
    pq.write_table(pa.table({"instruction": ["a"] * 100, "output": ["b"] * 100}), path)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(PoolInputError, match=r"truncated\.parquet: not a readable Parquet file"):
        read(path)


def test_parquet_with_corrupt_data_pages_is_a_clear_error(tmp_path):
    # The footer is intact, so the file opens; the damage only shows when the pages are decoded.
    path = tmp_path / "corrupt.parquet"
    n = 200
    table = pa.table(
        {"instruction": [f"instr {i} " * 20 for i in range(n)], "output": [f"out {i} " * 20 for i in range(n)]}
    )
    pq.write_table(table, path, compression="snappy")
    data = bytearray(path.read_bytes())
    for i in range(100, len(data) // 2):
        data[i] = (data[i] * 7 + 13) % 256
    path.write_bytes(bytes(data))
    with pytest.raises(PoolInputError, match=r"corrupt\.parquet: not a readable Parquet file"):
        read(path)


# --- CSV / TSV -------------------------------------------------------------------------------


def test_csv_with_embedded_newlines_quotes_and_delimiters(tmp_path):
    tricky = [
        {"instruction": 'Say "hello", then stop.', "input": "", "output": 'He said "hello",\nthen stopped.'},
        {"instruction": "Write code.", "input": "a,b", "output": "def f():\n    return 'x, \"y\"'\n"},
        {"instruction": "Plain.", "input": "", "output": "Plain answer."},
    ]
    path = write_csv(tmp_path / "data.csv", as_table(tricky))
    rows = read(path)
    assert [r.record for r in rows] == tricky
    # Rows count records, not physical lines.
    assert [r.row for r in rows] == [1, 2, 3]
    assert {r.source for r in rows} == {"data.csv"}


def test_csv_header_names_are_stripped_and_blank_lines_skipped(tmp_path):
    path = tmp_path / "spaced.csv"
    path.write_text(" instruction , output\nfirst,one\n\nsecond,two\n", encoding="utf-8")
    rows = read(path)
    assert [r.record for r in rows] == [
        {"instruction": "first", "output": "one"},
        {"instruction": "second", "output": "two"},
    ]


def test_csv_row_with_the_wrong_number_of_cells_is_malformed(tmp_path):
    path = tmp_path / "ragged.csv"
    path.write_text("instruction,output\na,b\nc,d,e\nf\ng,h\n", encoding="utf-8")
    rows = read(path)
    assert [r.row for r in rows] == [1, 2, 3, 4]
    assert rows[0].record == {"instruction": "a", "output": "b"}
    assert rows[1].error == (MALFORMED_ROW, "3 cells for 2 columns")
    assert rows[2].error == (MALFORMED_ROW, "1 cells for 2 columns")
    assert rows[3].record == {"instruction": "g", "output": "h"}


def test_csv_cell_with_invalid_utf8_only_taints_that_row(tmp_path):
    path = tmp_path / "bytes.csv"
    path.write_bytes(b"instruction,output\nfirst,one\nsecond,bad \xff\xfe byte\nthird,three\n")
    rows = read(path)
    assert [r.row for r in rows] == [1, 2, 3]
    assert has_undecodable_text(rows[1].record["output"])
    assert rows[2].record == {"instruction": "third", "output": "three"}


def test_csv_with_an_unclosed_quote_names_the_file_record_and_line(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text('instruction,output\nok,fine\n"never closed,x\nmore,rows\n', encoding="utf-8")
    with pytest.raises(PoolInputError, match=r"broken\.csv: cannot parse CSV record 2 \(line \d+\)"):
        read(path)


def test_csv_with_text_after_a_closing_quote_is_a_clear_error(tmp_path):
    path = tmp_path / "stray.csv"
    path.write_text('instruction,output\n"quoted"tail,x\n', encoding="utf-8")
    with pytest.raises(PoolInputError, match=r"stray\.csv: cannot parse CSV record 1"):
        read(path)


def test_csv_with_a_repeated_column_is_a_clear_error(tmp_path):
    path = write_csv(tmp_path / "dup.csv", [["instruction", "output", "output"], ["a", "b", "c"]])
    with pytest.raises(PoolInputError, match=r"dup\.csv: the CSV header repeats a column name"):
        read(path)


def test_tsv(tmp_path):
    records = [
        {"instruction": "Split, but on tabs.", "output": "a, b, c"},
        {"instruction": "Quoted\ttab inside", "output": "multi\nline"},
    ]
    path = write_csv(tmp_path / "data.tsv", as_table(records), delimiter="\t")
    rows = read(path)
    assert [r.record for r in rows] == records
    assert {r.source for r in rows} == {"data.tsv"}


def test_uppercase_extension_is_recognised(tmp_path):
    path = write_csv(tmp_path / "DATA.CSV", as_table(RECORDS))
    assert [r.record for r in read(path)] == RECORDS


# --- Encodings -------------------------------------------------------------------------------


def test_utf8_bom_json(tmp_path):
    path = tmp_path / "bom.json"
    path.write_text(json.dumps(RECORDS, ensure_ascii=False), encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert [r.record for r in read(path)] == RECORDS


def test_utf8_bom_csv_keeps_the_first_column_name_clean(tmp_path):
    path = write_csv(tmp_path / "bom.csv", as_table(RECORDS), encoding="utf-8-sig")
    rows = read(path)
    assert list(rows[0].record) == ["instruction", "input", "output"]
    assert [r.record for r in rows] == RECORDS


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_utf16_with_bom_jsonl(tmp_path, encoding):
    records = [{"instruction": "Übersetze ins Japanische.", "input": "Katze", "output": "猫 🐈"}, RECORDS[0]]
    path = tmp_path / "wide.jsonl"
    payload = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if encoding == "utf-16":
        path.write_bytes(payload.encode("utf-16"))  # Python writes the BOM for plain utf-16
    else:
        bom = b"\xff\xfe" if encoding.endswith("le") else b"\xfe\xff"
        path.write_bytes(bom + payload.encode(encoding))
    rows = read(path)
    assert [r.record for r in rows] == records


def test_utf16_with_bom_csv(tmp_path):
    path = write_csv(tmp_path / "wide.csv", as_table(RECORDS), encoding="utf-16")
    assert path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")
    assert [r.record for r in read(path)] == RECORDS


def test_decode_bytes_picks_the_encoding_from_the_bom():
    text = "naïve café"
    assert decode_bytes(text.encode("utf-8")) == text
    assert decode_bytes(b"\xef\xbb\xbf" + text.encode("utf-8")) == text
    assert decode_bytes(text.encode("utf-16")) == text
    assert decode_bytes(text.encode("utf-32")) == text
    assert has_undecodable_text(decode_bytes(b"bad \xff byte"))


# --- Folders ---------------------------------------------------------------------------------


def test_folder_of_files_in_sorted_order_with_relative_sources(tmp_path):
    root = tmp_path / "pool"
    (root / "sub").mkdir(parents=True)
    write_jsonl(root / "b.jsonl", [RECORDS[1]])
    (root / "a.json").write_text(json.dumps([RECORDS[0]]), encoding="utf-8")
    write_csv(root / "sub" / "c.csv", as_table([RECORDS[2]]))
    pq.write_table(pa.table({"instruction": ["From parquet."], "output": ["Yes."]}), root / "sub" / "d.parquet")
    write_csv(root / "e.tsv", [["instruction", "output"], ["From tsv.", "Yes."]], delimiter="\t")
    (root / "notes.txt").write_text("not data", encoding="utf-8")
    (root / "README.md").write_text("# not data", encoding="utf-8")
    (root / ".hidden.jsonl").write_text("{not even json\n", encoding="utf-8")

    rows = read(root)
    sources = [r.source for r in rows]
    assert sources == ["a.json", "b.jsonl", "e.tsv", str(Path("sub") / "c.csv"), str(Path("sub") / "d.parquet")]
    assert [r.record["instruction"] for r in rows] == [
        RECORDS[0]["instruction"],
        RECORDS[1]["instruction"],
        "From tsv.",
        RECORDS[2]["instruction"],
        "From parquet.",
    ]
    assert all(r.row == 1 and r.error is None for r in rows)


def test_folder_listing_is_sorted_and_ignores_unsupported_files(tmp_path):
    for name in ["z.jsonl", "m.csv", "a.parquet", "skip.txt", "skip.xlsx"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_input_files(tmp_path)] == ["a.parquet", "m.csv", "z.jsonl"]


def test_bad_file_inside_a_folder_is_named_by_its_relative_path(tmp_path):
    write_jsonl(tmp_path / "good.jsonl", RECORDS)
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "bad.json").write_text("[{]", encoding="utf-8")
    with pytest.raises(PoolInputError, match=r"nested/bad\.json: not valid JSON at line 1"):
        read(tmp_path)


def test_folder_without_supported_files_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "data.xlsx").write_bytes(b"PK")
    with pytest.raises(PoolInputError, match=r"the folder holds no .*json.*parquet.*csv"):
        read(tmp_path)


# --- Whole-input errors ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["empty.json", "empty.jsonl", "empty.ndjson", "empty.csv", "empty.tsv"])
@pytest.mark.parametrize("content", [b"", b"  \n\n\t\n"])
def test_empty_text_file_is_a_clear_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PoolInputError, match=re.escape(f"{name}: the file is empty")):
        read(path)


def test_empty_file_with_only_a_bom_is_a_clear_error(tmp_path):
    path = tmp_path / "bom_only.jsonl"
    path.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(PoolInputError, match=r"bom_only\.jsonl: the file is empty"):
        read(path)


def test_empty_parquet_file_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.parquet"
    path.write_bytes(b"")
    with pytest.raises(PoolInputError, match=r"empty\.parquet: not a readable Parquet file"):
        read(path)


def test_missing_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "data.jsonl"
    with pytest.raises(PoolInputError, match="no such file or folder") as error:
        read(missing)
    assert str(missing) in str(error.value)


def test_a_broken_link_is_not_called_missing(tmp_path):
    """The link exists though what it points at does not: read_dataset sees no path, and says what it is."""
    link = tmp_path / "data.jsonl"
    os.symlink(tmp_path / "moved" / "data.jsonl", link)
    with pytest.raises(PoolInputError) as error:
        list(read_dataset(str(link)))
    assert str(error.value) == (
        f"{link} is a broken link (to {tmp_path / 'moved' / 'data.jsonl'}), not a file or folder of instruction data"
    )


def test_dev_null_as_the_dataset_is_named_a_character_device():
    with pytest.raises(PoolInputError) as error:
        list(read_dataset("/dev/null"))
    assert str(error.value) == "/dev/null is a character device, not a file or folder of instruction data"


def test_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(PoolInputError, match="no such file or folder"):
        list_input_files(missing)


@pytest.mark.parametrize("name", ["data.txt", "data.xlsx", "data"])
def test_unsupported_extension_is_a_clear_error(tmp_path, name):
    path = tmp_path / name
    path.write_text('{"instruction": "a", "output": "b"}\n', encoding="utf-8")
    with pytest.raises(PoolInputError, match="unsupported file type") as error:
        read(path)
    message = str(error.value)
    assert name in message
    assert ".jsonl" in message and ".parquet" in message
