"""One hostile row costs that row: it is rejected with file, row and reason, and the rest of the pool is kept.

Covers the values that used to escape the quarantine (deep nesting, huge integers, CSV fields over 128 KiB,
invisible-only text) and the rest of their class: non-text values, undecodable text, NUL and control
characters, rows over the limits in every format, and the few failures that must stay whole-file ones.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from paser_assets.core.text import normalize_text, sample_id
from paser_assets.pool import FieldMapping, PoolBuild, PoolInputError, ReadLimits, build_pool, load_pool, read_dataset
from paser_assets.pool import records as records_module
from paser_assets.pool.readers import RawRow, Unread

GOOD = {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"}
OTHER = {"instruction": "Name a colour.", "output": "Blue."}
DEEP = "[" * 100_000 + "]" * 100_000


def jsonl(path: Path, lines: list) -> Path:
    """A str item is written verbatim; anything else as JSON."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def rejected(build: PoolBuild) -> list[tuple]:
    return [tuple(row) for row in build.rejected[["source", "source_row", "reason"]].values.tolist()]


def kept(build: PoolBuild) -> list[tuple]:
    return [tuple(row) for row in build.accepted[["source", "source_row"]].values.tolist()]


def detail(build: PoolBuild, row: int) -> str:
    return str(build.rejected.set_index("source_row").loc[row, "detail"])


def build_with(path: Path, limits: ReadLimits, max_chars: int = 20_000) -> PoolBuild:
    return build_pool(read_dataset(str(path), limits=limits), FieldMapping(), max_chars)


# --- structure a parser cannot take: nesting, huge numbers ----------------------------------


@pytest.mark.parametrize(
    "deep_row",
    ['{"instruction": "x", "output": ' + DEEP + "}", '{"instruction": "x", "output": "y", "meta": ' + DEEP + "}"],
    ids=["in the output", "in a field the pool does not use"],
)
def test_a_jsonl_line_nesting_100000_arrays_is_one_rejected_row(tmp_path, deep_row):
    build = load_pool(str(jsonl(tmp_path / "deep.jsonl", [GOOD, deep_row, OTHER])))
    assert rejected(build) == [("deep.jsonl", 2, "malformed_row")]
    assert "nested too deeply" in detail(build, 2)
    assert kept(build) == [("deep.jsonl", 1), ("deep.jsonl", 3)]


@pytest.mark.parametrize(
    "layout",
    [
        "[{good}, {deep}, {other}]",
        '{{"version": 1, "data": [{good}, {deep}, {other}]}}',
        # deep metadata beside the records is not needed, so it costs nothing
        '{{"meta": {deep_object}, "data": [{good}, {deep}, {other}]}}',
    ],
)
def test_a_deep_item_of_a_json_document_is_one_rejected_row(tmp_path, layout):
    deep_item = '{"instruction": "x", "output": "y", "meta": ' + DEEP + "}"
    deep_object = '{"a": ' * 50_000 + "1" + "}" * 50_000
    text = layout.format(good=json.dumps(GOOD), deep=deep_item, other=json.dumps(OTHER), deep_object=deep_object)
    path = tmp_path / "deep.json"
    path.write_text(text, encoding="utf-8")
    build = load_pool(str(path))
    assert rejected(build) == [("deep.json", 2, "malformed_row")]
    assert "nested too deeply" in detail(build, 2)
    assert kept(build) == [("deep.json", 1), ("deep.json", 3)]


def test_a_deep_flat_document_fails_naming_the_file_not_with_a_traceback(tmp_path):
    path = tmp_path / "only_deep.json"
    path.write_text(DEEP, encoding="utf-8")
    with pytest.raises(PoolInputError, match=r"only_deep\.json: none of the 1 rows is usable .*nested too deeply"):
        load_pool(str(path))


@pytest.mark.parametrize("digits", ["7" * 5000, "-" + "7" * 5000, "1" * 100_000])
def test_integers_past_pythons_digit_limit_are_not_converted(tmp_path, digits):
    lines = [
        GOOD,
        '{"instruction": "Count.", "output": ' + digits + "}",  # in a text field: wrong type
        '{"instruction": "Keep me.", "output": "Kept.", "id": ' + digits + "}",  # elsewhere: harmless
        digits,  # the whole line
    ]
    build = load_pool(str(jsonl(tmp_path / "ints.jsonl", lines)))
    assert rejected(build) == [("ints.jsonl", 2, "wrong_type"), ("ints.jsonl", 4, "wrong_type")]
    assert detail(build, 2) == "field 'output' is int, expected a string"
    assert detail(build, 4) == "record is int, expected an object"
    assert "not read" in build.rejected.set_index("source_row").loc[2, "preview"]
    assert kept(build) == [("ints.jsonl", 1), ("ints.jsonl", 3)]


def test_a_huge_integer_in_a_json_array_and_as_the_whole_document(tmp_path):
    path = tmp_path / "ints.json"
    path.write_text(f'[{json.dumps(GOOD)}, {{"instruction": "x", "output": {"9" * 6000}}}]', encoding="utf-8")
    build = load_pool(str(path))
    assert rejected(build) == [("ints.json", 2, "wrong_type")]
    path.write_text("9" * 6000, encoding="utf-8")
    with pytest.raises(PoolInputError, match=r"ints\.json: expected a JSON array of records .*got int"):
        load_pool(str(path))


# --- values that are not text where text is expected ----------------------------------------


@pytest.mark.parametrize(
    ("literal", "type_name"),
    [("NaN", "float"), ("Infinity", "float"), ("-Infinity", "float"), ("1e999", "float"), ("true", "bool"),
     ("0", "int"), ("2.5", "float"), ('["a", "b"]', "list"), ('{"text": "a"}', "dict")],
)  # fmt: skip
@pytest.mark.parametrize("field", ["instruction", "input", "output"])
def test_non_text_json_values_in_text_fields_are_wrong_type(tmp_path, literal, type_name, field):
    record = {"instruction": "Do it.", "input": "", "output": "Done."}
    line = json.dumps(record).replace(f'"{field}": {json.dumps(record[field])}', f'"{field}": {literal}')
    build = load_pool(str(jsonl(tmp_path / "types.jsonl", [GOOD, line])))
    assert rejected(build) == [("types.jsonl", 2, "wrong_type")]
    assert detail(build, 2) == f"field {field!r} is {type_name}, expected a string"


@pytest.mark.parametrize(
    ("column", "type_name"),
    [
        (pa.array([float("nan")], pa.float64()), "float"),
        (pa.array([b"raw bytes"], pa.binary()), "bytes"),
        (pa.array([["a", "b"]], pa.list_(pa.string())), "list"),
        (pa.array([{"text": "a"}], pa.struct([("text", pa.string())])), "dict"),
        (pa.array([7], pa.int64()), "int"),
    ],
    ids=["float", "binary", "list", "struct", "int"],
)
def test_non_text_parquet_values_in_a_text_field_are_wrong_type(tmp_path, column, type_name):
    path = tmp_path / "types.parquet"
    pq.write_table(pa.table({"instruction": ["Add."], "output": column}), path)
    build = build_pool(read_dataset(str(path)), FieldMapping(), 1000)
    assert rejected(build) == [("types.parquet", 1, "wrong_type")]
    assert detail(build, 1) == f"field 'output' is {type_name}, expected a string"


# --- text that is not text: bytes, surrogates, NUL, invisible characters --------------------


def test_invalid_utf8_in_a_parquet_string_column_rejects_only_its_row(tmp_path):
    # Arrow does not check UTF-8 when it writes or reads, so such files exist.
    offsets = pa.py_buffer(bytes([0, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 12, 0, 0, 0]))
    values = pa.py_buffer(b"okcaf\xe9 third")
    bad = pa.Array.from_buffers(pa.string(), 3, [None, offsets, values])
    path = tmp_path / "bytes.parquet"
    pq.write_table(pa.table({"instruction": bad, "output": ["a", "b", "c"]}), path)
    build = load_pool(str(path))
    assert rejected(build) == [("bytes.parquet", 2, "undecodable_text")]
    assert build.accepted["instruction"].tolist() == ["ok", "third"]


def test_lone_surrogate_escapes_in_json_are_undecodable(tmp_path):
    lines = [GOOD, '{"instruction": "half \\ud800 pair", "output": "x"}', '{"instruction": "ok", "output": "\\udfff"}']
    build = load_pool(str(jsonl(tmp_path / "surrogates.jsonl", lines)))
    assert rejected(build) == [("surrogates.jsonl", 2, "undecodable_text"), ("surrogates.jsonl", 3, "undecodable_text")]


def test_an_undecodable_family_label_rejects_the_row_instead_of_breaking_the_table(tmp_path):
    path = tmp_path / "family.csv"
    path.write_bytes(b"instruction,output,family\nAdd.,5,math\nName.,Blue,bad \xff label\n")
    build = load_pool(str(path))
    assert rejected(build) == [("family.csv", 2, "undecodable_text")]
    assert "'family'" in detail(build, 2)
    assert build.accepted["family"].tolist() == ["math"]


def test_a_file_name_that_is_not_utf8_is_stored_escaped(tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.jsonl")
    jsonl(folder / name, [GOOD])
    build = load_pool(str(folder))
    assert build.accepted["source"].tolist() == ["caf\\xe9.jsonl"]


def test_nul_bytes_are_removed_and_an_all_nul_instruction_is_empty(tmp_path):
    path = tmp_path / "nul.csv"
    path.write_bytes(b"instruction,output\nAd\x00d.,5\n\x00\x00\x00,x\nName.,Bl\x00ue\n")
    build = load_pool(str(path))
    assert rejected(build) == [("nul.csv", 2, "empty_instruction")]
    assert build.accepted[["instruction", "output"]].values.tolist() == [["Add.", "5"], ["Name.", "Blue"]]


INVISIBLE = {
    "zero width space": "\u200b",
    "zero width joiners": "\u200c\u200d",
    "LRM and RLM": "\u200e\u200f",
    "bidi embeddings and overrides": "\u202a\u202b\u202c\u202d\u202e",
    "bidi isolates": "\u2066\u2067\u2068\u2069",
    "BOM": "\ufeff",
    "word joiner and soft hyphen": "\u2060\u00ad",
    "arabic letter mark": "\u061c",
    "no-break and ideographic spaces": "\u00a0 \u3000\u2007",
    "line and paragraph separators": "\u2028\u2029",
    "controls": "\x01\x1b\x7f\x85",
    "hangul fillers and braille blank": "\u3164\u115f\u2800",
    "a mix": " \u202e\u00a0\u200b\u2066\t\u2069 ",
}


@pytest.mark.parametrize("text", INVISIBLE.values(), ids=INVISIBLE.keys())
@pytest.mark.parametrize(("field", "reason"), [("instruction", "empty_instruction"), ("output", "empty_output")])
def test_text_made_only_of_invisible_characters_is_empty(tmp_path, text, field, reason):
    record = {**OTHER, field: text}
    build = load_pool(str(jsonl(tmp_path / "invisible.jsonl", [GOOD, record])))
    assert rejected(build) == [("invisible.jsonl", 2, reason)]
    assert "instruction" in detail(build, 2) or "output" in detail(build, 2)


def test_visible_text_with_bidi_controls_is_kept_and_hashed_as_before(tmp_path):
    instruction = "\u202bשלום\u202c, translate."
    build = load_pool(str(jsonl(tmp_path / "rtl.jsonl", [{"instruction": instruction, "output": "Hello."}])))
    assert build.rejected.empty
    row = build.accepted.iloc[0]
    assert row["instruction"] == normalize_text(instruction)
    assert row["sample_id"] == sample_id(normalize_text(instruction), "", "Hello.")


# --- rows over the limits, in every format ---------------------------------------------------


COLUMNS = ("instruction", "input", "output")
OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _as_text(rows: list[dict], fmt: str) -> str:
    if ".csv" in fmt or ".tsv" in fmt:
        handle = io.StringIO()
        writer = csv.writer(handle, delimiter="\t" if ".tsv" in fmt else ",")
        writer.writerows([COLUMNS, *[[row.get(k, "") for k in COLUMNS] for row in rows]])
        return handle.getvalue()
    if fmt.startswith(".json") and not fmt.startswith(".jsonl"):
        return json.dumps(rows)
    return "".join(json.dumps(row) + "\n" for row in rows)


def _write_long(path: Path, long_text: str) -> Path:
    """GOOD, a row holding ``long_text``, OTHER, in the format (and compression) the name says."""
    rows = [GOOD, {"instruction": "Long.", "output": long_text}, OTHER]
    fmt = "".join(path.suffixes).lower()
    if fmt.startswith(".parquet"):
        table = pa.table({k: [row.get(k, "") for row in rows] for k in COLUMNS})
        pq.write_table(table, path, use_dictionary=False)
        return path
    text = _as_text(rows, fmt)
    opener = OPENERS.get(path.suffix.lower())
    if opener is None:
        path.write_text(text, encoding="utf-8", newline="")
    else:
        with opener(path, "wt", encoding="utf-8", newline="") as handle:
            handle.write(text)
    return path


@pytest.mark.parametrize(
    "name",
    ["rows.json", "rows.jsonl", "rows.ndjson", "rows.csv", "rows.tsv", "rows.parquet", "rows.jsonl.gz",
     "rows.csv.gz", "rows.json.bz2", "rows.tsv.xz"],
)  # fmt: skip
@pytest.mark.parametrize("size", [51, 200_000])  # just over max_chars; over csv's 128 KiB field limit
def test_a_row_over_max_chars_is_too_long_in_every_format(tmp_path, name, size):
    path = _write_long(tmp_path / name, "y" * (size - 5))  # "Long." counts 5
    build = load_pool(str(path), max_chars=50)
    assert rejected(build) == [(name, 2, "too_long")]
    assert detail(build, 2) == f"{size} characters, over the limit of 50"
    assert kept(build) == [(name, 1), (name, 3)]


def test_a_parquet_value_over_twice_the_limit_is_never_converted(tmp_path, monkeypatch):
    path = _write_long(tmp_path / "long.parquet", "z" * 100_000)
    seen: list = []
    original = records_module.validate_record

    def spy(record, mapping, max_chars):
        seen.append(record["output"])
        return original(record, mapping, max_chars)

    monkeypatch.setattr(records_module, "validate_record", spy)
    build = load_pool(str(path), max_chars=1000)
    assert seen[1] == Unread("str", 100_000)
    assert detail(build, 2) == "100005 characters, over the limit of 1000"


def test_an_unread_value_in_a_column_the_pool_does_not_use_is_harmless(tmp_path):
    path = tmp_path / "extra.parquet"
    pq.write_table(pa.table({"instruction": ["Add."], "output": ["5"], "notes": ["n" * 500_000]}), path)
    build = load_pool(str(path), max_chars=100)
    assert build.rejected.empty and len(build.accepted) == 1


SMALL = ReadLimits(value_chars=2_000, record_chars=10_000)


def test_a_jsonl_line_over_the_read_limit_is_skipped_unparsed(tmp_path):
    lines = [GOOD, '{"instruction": "big", "output": "' + "q" * 50_000 + '"}', OTHER]
    build = build_with(jsonl(tmp_path / "lines.jsonl", lines), SMALL)
    assert rejected(build) == [("lines.jsonl", 2, "too_long")]
    assert detail(build, 2) == f"a line of {len(lines[1]) + 1} characters, over the 10000 read per row"
    assert kept(build) == [("lines.jsonl", 1), ("lines.jsonl", 3)]


@pytest.mark.parametrize("quoted", [True, False])
def test_a_csv_record_over_the_read_limit_is_skipped_and_the_rows_after_it_stay_in_step(tmp_path, quoted):
    long_cell = ('"' + 'many "" quotes, commas\nand lines ' * 2_000 + '"') if quoted else "w" * 30_000
    text = f'instruction,output\nAdd.,5\nBig.,{long_cell}\nName.,Blue\n"Multi\nline",ok\n'
    path = tmp_path / "big.csv"
    path.write_text(text, encoding="utf-8")
    build = build_with(path, SMALL)
    assert rejected(build) == [("big.csv", 2, "too_long")]
    rows = build.accepted[["source_row", "instruction"]].values.tolist()
    assert rows == [[1, "Add."], [3, "Name."], [4, "Multi\nline"]]


def test_a_json_item_over_the_read_limit_is_skipped_and_the_next_items_kept(tmp_path):
    items = [GOOD, {"instruction": "big", "output": "b" * 50_000, "nested": [{"a": "]}"}]}, OTHER, GOOD]
    path = tmp_path / "items.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    build = build_with(path, SMALL)
    assert rejected(build) == [("items.json", 2, "too_long")]
    assert kept(build) == [("items.json", 1), ("items.json", 3)]
    assert build.accepted["duplicate_count"].tolist() == [2, 1]


def test_rows_read_under_a_lower_limit_than_the_pool_are_still_rejected():
    rows = [RawRow("mem", 1, GOOD), RawRow("mem", 2, {"instruction": "x", "output": Unread("str", 5_000)})]
    build = build_pool(rows, FieldMapping(), max_chars=1_000_000)
    assert rejected(build) == [("mem", 2, "too_long")]


# --- previews and the last-resort net --------------------------------------------------------


def test_previews_of_deep_wide_or_huge_records_stay_short():
    deep: list = []
    for _ in range(300):
        deep = [deep]
    rows = [
        RawRow("mem", 1, {"instruction": deep, "output": "x"}),
        RawRow("mem", 2, {"instruction": 10**5000, "output": "x"}),
        RawRow("mem", 3, {"instruction": "x", "output": b"\x00" * 1_000_000}),
        RawRow("mem", 4, {f"k{i}": i for i in range(10_000)}),
    ]
    build = build_pool(rows, FieldMapping(), 100)
    assert len(build.rejected) == 4
    assert all(0 < len(preview) <= 200 for preview in build.rejected["preview"])


def test_an_unforeseen_error_while_validating_costs_only_its_row(monkeypatch):
    def fragile(text: str) -> str:
        if "boom" in text:
            raise ValueError("unexpected")
        return normalize_text(text)

    monkeypatch.setattr(records_module, "normalize_text", fragile)
    rows = [RawRow("mem", 1, GOOD), RawRow("mem", 2, {"instruction": "boom", "output": "x"})]
    build = build_pool(rows, FieldMapping(), 1000)
    assert rejected(build) == [("mem", 2, "malformed_row")]
    assert detail(build, 2) == "cannot be validated: ValueError: unexpected"


# --- what still fails the whole file, naming it ----------------------------------------------


def test_a_truncated_gzip_file_fails_naming_it(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("".join(json.dumps({**GOOD, "input": str(i)}) + "\n" for i in range(5000)))
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(PoolInputError, match=r"^cut\.jsonl\.gz: cannot be read after row \d+: EOFError"):
        load_pool(str(path))


def test_a_file_that_is_not_gzip_fails_naming_it(tmp_path):
    path = tmp_path / "fake.csv.gz"
    path.write_text("instruction,output\na,b\n", encoding="utf-8")
    with pytest.raises(PoolInputError, match=r"^fake\.csv\.gz: cannot be read: BadGzipFile"):
        load_pool(str(path))


def test_a_syntax_error_deep_into_a_large_json_file_names_its_line_and_column(tmp_path):
    # Past the reader's 1 MiB window, so the position must be carried across windows.
    items = [json.dumps({"instruction": f"task {i}", "output": "x" * 200}) for i in range(20_000)]
    items[15_000] = '{"instruction": "bad" "output": "x"}'
    path = tmp_path / "large.json"
    path.write_text("[\n" + ",\n".join(items) + "\n]\n", encoding="utf-8")
    with pytest.raises(PoolInputError) as error:
        load_pool(str(path))
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(path.read_text(encoding="utf-8"))
    assert str(error.value) == (
        f"large.json: not valid JSON at line {expected.value.lineno}, column {expected.value.colno}: "
        f"{expected.value.msg}"
    )
    assert expected.value.lineno == 15_002
