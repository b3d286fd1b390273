"""Read instruction records from JSON, JSONL, Parquet, CSV files, folders, or Hugging Face datasets.

Readers yield :class:`RawRow` objects and never raise for a single bad row: the row carries an
``error`` instead, so that the pool can record it in ``recovery_pool_rejected``. A whole file that
cannot be parsed raises :class:`PoolInputError` naming the file (and the line where known).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet", ".csv", ".tsv")

# Reasons for a rejected row; they are the values of ``recovery_pool_rejected.reason``.
MALFORMED_ROW = "malformed_row"
WRONG_TYPE = "wrong_type"
UNDECODABLE_TEXT = "undecodable_text"
MISSING_INSTRUCTION = "missing_instruction"
EMPTY_INSTRUCTION = "empty_instruction"
MISSING_OUTPUT = "missing_output"
EMPTY_OUTPUT = "empty_output"
TOO_LONG = "too_long"
REJECTION_REASONS = (
    MALFORMED_ROW,
    WRONG_TYPE,
    UNDECODABLE_TEXT,
    MISSING_INSTRUCTION,
    EMPTY_INSTRUCTION,
    MISSING_OUTPUT,
    EMPTY_OUTPUT,
    TOO_LONG,
)


class PoolInputError(ValueError):
    """The input cannot be read at all (missing path, unparseable file, no usable row)."""


@dataclass(frozen=True)
class RawRow:
    """One record as read, before validation. ``row`` counts from 1 (the line number for JSONL)."""

    source: str
    row: int
    record: dict[str, Any] | None
    error: tuple[str, str] | None = None  # (reason, detail) when the row could not be read


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_bytes(data: bytes) -> str:
    """Decode file content: a BOM picks the encoding, otherwise UTF-8.

    Invalid bytes become lone surrogates (``surrogateescape``) instead of failing the whole file,
    so that only the rows that contain them are rejected as ``undecodable_text``.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding, errors="surrogateescape" if encoding.startswith("utf-8") else "replace")
    return data.decode("utf-8", errors="surrogateescape")


def _records_from_json_value(value: Any, source: str) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
        if all(not isinstance(v, (list, dict)) for v in value.values()):
            return [value]
    raise PoolInputError(
        f"{source}: expected a JSON array of records (or an object holding one array), got {type(value).__name__}"
    )


def _row_from_value(source: str, row: int, value: Any) -> RawRow:
    if isinstance(value, dict):
        return RawRow(source, row, value)
    return RawRow(source, row, None, (WRONG_TYPE, f"record is {type(value).__name__}, expected an object"))


def read_json(path: Path, source: str) -> Iterator[RawRow]:
    text = decode_bytes(path.read_bytes())
    if not text.strip():
        raise PoolInputError(f"{source}: the file is empty")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if _looks_like_jsonl(text):
            yield from _read_jsonl_text(text, source)
            return
        raise PoolInputError(
            f"{source}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    for index, item in enumerate(_records_from_json_value(value, source), start=1):
        yield _row_from_value(source, index, item)


def _looks_like_jsonl(text: str) -> bool:
    lines = [line for line in text.splitlines()[:5] if line.strip()]
    return len(lines) > 1 and all(line.lstrip().startswith("{") for line in lines)


def _read_jsonl_text(text: str, source: str) -> Iterator[RawRow]:
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            yield RawRow(source, line_number, None, (MALFORMED_ROW, f"invalid JSON: {error.msg}"))
            continue
        yield _row_from_value(source, line_number, value)


def read_jsonl(path: Path, source: str) -> Iterator[RawRow]:
    text = decode_bytes(path.read_bytes())
    if not text.strip():
        raise PoolInputError(f"{source}: the file is empty")
    yield from _read_jsonl_text(text, source)


def read_csv(path: Path, source: str) -> Iterator[RawRow]:
    text = decode_bytes(path.read_bytes())
    if not text.strip():
        raise PoolInputError(f"{source}: the file is empty")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader)
    except csv.Error as error:
        raise PoolInputError(f"{source}: cannot parse the CSV header: {error}") from None
    header = [name.strip() for name in header]
    if len(set(header)) != len(header):
        raise PoolInputError(f"{source}: the CSV header repeats a column name: {header}")
    index = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            # A broken quote swallows the rest of the file; nothing after it can be trusted.
            raise PoolInputError(
                f"{source}: cannot parse CSV record {index} (line {reader.line_num}): {error}"
            ) from None
        if not any(cell.strip() for cell in cells):
            index += 1
            continue
        if len(cells) != len(header):
            yield RawRow(
                source,
                index,
                None,
                (MALFORMED_ROW, f"{len(cells)} cells for {len(header)} columns"),
            )
        else:
            yield RawRow(source, index, dict(zip(header, cells, strict=True)))
        index += 1


def read_parquet(path: Path, source: str) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        parquet_file = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises several unrelated types for corrupt files
        raise PoolInputError(f"{source}: not a readable Parquet file: {error}") from None
    index = 1
    batches = parquet_file.iter_batches(batch_size=4096)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as error:  # a corrupt data page surfaces only when it is read
            raise PoolInputError(f"{source}: not a readable Parquet file (near row {index}): {error}") from None
        for record in batch.to_pylist():
            yield RawRow(source, index, record)
            index += 1


_READERS = {
    ".json": read_json,
    ".jsonl": read_jsonl,
    ".ndjson": read_jsonl,
    ".csv": read_csv,
    ".tsv": read_csv,
    ".parquet": read_parquet,
}


def list_input_files(path: Path) -> list[Path]:
    """The files a dataset path stands for: the file itself, or the supported files below a folder."""
    if path.is_file():
        if path.suffix.lower() not in _READERS:
            raise PoolInputError(
                f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}"
            )
        return [path]
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _READERS and not p.name.startswith(".")
        )
        if not files:
            raise PoolInputError(f"{path}: the folder holds no {', '.join(SUPPORTED_SUFFIXES)} files")
        return files
    raise PoolInputError(f"{path}: no such file or folder")


def read_path(path: Path) -> Iterator[RawRow]:
    """Yield the rows of a file or of every supported file below a folder, in a stable order."""
    files = list_input_files(path)
    root = path if path.is_dir() else path.parent
    for file in files:
        source = str(file.relative_to(root)) if path.is_dir() else file.name
        yield from _READERS[file.suffix.lower()](file, source)


def read_hub_dataset(name: str, split: str) -> Iterator[RawRow]:
    """Yield the rows of a Hugging Face dataset; needs the hub (or a local ``datasets`` cache)."""
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets is a dependency
        raise PoolInputError("reading a hub dataset needs the `datasets` package") from error
    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as error:
        raise PoolInputError(
            f"{name!r} is not a local path, and loading it as a Hugging Face dataset failed: {error}"
        ) from None
    for index, record in enumerate(dataset, start=1):
        yield RawRow(f"{name}[{split}]", index, dict(record))


def looks_like_hub_name(spec: str) -> bool:
    """A hub id is ``name`` or ``owner/name`` with no path separators beyond that one slash."""
    parts = spec.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not spec.startswith((".", "~")) and "\\" not in spec


def read_dataset(spec: str, split: str = "train") -> Iterator[RawRow]:
    """Rows of a local path when it exists, else of a hub dataset when ``spec`` looks like a hub id."""
    path = Path(spec).expanduser()
    if path.exists():
        yield from read_path(path)
        return
    if looks_like_hub_name(spec) and not Path(spec).suffix:
        yield from read_hub_dataset(spec, split)
        return
    raise PoolInputError(f"{spec}: no such file or folder")
