"""Read instruction records from JSON, JSONL, Parquet, CSV files, folders, or Hugging Face datasets.

Readers yield :class:`RawRow` objects and never raise for a single bad row: the row carries an
``error`` instead, so that the pool can record it in ``recovery_pool_rejected``. A whole file that
cannot be read raises :class:`PoolInputError` naming the file (and the line where known).

Every reader streams: memory grows with the largest row (bounded by :class:`ReadLimits`), not with
the file.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from paser_assets.pool import jsondoc
from paser_assets.pool.folders import (
    DATA_SUFFIXES,
    InputFiles,
    SkippedPath,
    list_inputs,
    missing_path_error,
)
from paser_assets.pool.parquet import read_parquet
from paser_assets.pool.rows import (
    DEFAULT_LIMITS,
    EMPTY_INSTRUCTION,
    EMPTY_OUTPUT,
    MALFORMED_ROW,
    MISSING_INSTRUCTION,
    MISSING_OUTPUT,
    REJECTION_REASONS,
    TOO_LONG,
    UNDECODABLE_TEXT,
    WRONG_TYPE,
    PoolInputError,
    RawRow,
    ReadLimits,
    Unread,
    display_name,
)
from paser_assets.pool.textio import LongLine, bounded_lines, decode_bytes, format_suffix, open_text

SUPPORTED_SUFFIXES = DATA_SUFFIXES

__all__ = [
    "EMPTY_INSTRUCTION",
    "EMPTY_OUTPUT",
    "MALFORMED_ROW",
    "MISSING_INSTRUCTION",
    "MISSING_OUTPUT",
    "REJECTION_REASONS",
    "SUPPORTED_SUFFIXES",
    "TOO_LONG",
    "UNDECODABLE_TEXT",
    "WRONG_TYPE",
    "PoolInputError",
    "RawRow",
    "ReadLimits",
    "Unread",
    "decode_bytes",
    "list_input_files",
    "read_dataset",
]

Reader = Callable[[Path, str, ReadLimits], Iterator[RawRow]]


def _row_from_value(source: str, row: int, value: Any) -> RawRow:
    if isinstance(value, dict):
        return RawRow(source, row, value)
    if isinstance(value, jsondoc.Skipped):
        return RawRow(source, row, None, (value.reason, value.detail))
    type_name = value.type_name if isinstance(value, Unread) else type(value).__name__
    return RawRow(source, row, None, (WRONG_TYPE, f"record is {type_name}, expected an object"))


def _row_from_json_text(source: str, row: int, text: str) -> RawRow:
    try:
        value = jsondoc.loads(text)
    except json.JSONDecodeError as error:
        return RawRow(source, row, None, (MALFORMED_ROW, f"invalid JSON: {error.msg}"))
    except RecursionError:
        return RawRow(source, row, None, (MALFORMED_ROW, "JSON nested too deeply to read"))
    return _row_from_value(source, row, value)


def _too_long_line(source: str, row: int, line: LongLine, limits: ReadLimits) -> RawRow:
    detail = f"a line of {line.size} characters, over the {limits.record_chars} read per row"
    return RawRow(source, row, None, (TOO_LONG, detail))


# --- JSON ------------------------------------------------------------------------------------

_SNIFF_CHARS = 4 << 20


def _sniff_lines(path: Path) -> list[str]:
    """The non-blank lines among the first five of the file, from its first few MiB only."""
    with open_text(path, newline="") as stream:
        head = stream.read(_SNIFF_CHARS)
    lines = head.splitlines()
    if len(head) == _SNIFF_CHARS:
        lines = lines[:-1]  # the last line may be cut off
    return [line for line in lines[:5] if line.strip()]


def _looks_like_jsonl(lines: list[str]) -> bool:
    """Several lines that each open an object, one of them a whole object by itself: JSON lines, not one document."""
    if len(lines) < 2 or not all(line.lstrip().startswith("{") for line in lines):
        return False
    for line in lines:
        try:
            if isinstance(jsondoc.loads(line), dict):
                return True
        except (ValueError, RecursionError):
            continue
    return False


def read_json(path: Path, source: str, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawRow]:
    if _looks_like_jsonl(_sniff_lines(path)):
        yield from read_jsonl(path, source, limits)
        return
    with open_text(path, newline="") as stream:
        for index, item in jsondoc.iter_document(stream, source, limits):
            yield _row_from_value(source, index, item)


# --- JSONL -----------------------------------------------------------------------------------


def read_jsonl(path: Path, source: str, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawRow]:
    any_content = False
    # Only "\n" ends a line, so a stray "\r" inside a line does not shift the line numbers.
    with open_text(path, newline="\n") as stream:
        for line_number, line in enumerate(bounded_lines(stream, limits.record_chars), start=1):
            if isinstance(line, LongLine):
                any_content = True
                yield _too_long_line(source, line_number, line, limits)
                continue
            if not line.strip():
                continue
            any_content = True
            yield _row_from_json_text(source, line_number, line)
    if not any_content:
        raise PoolInputError(f"{source}: the file is empty")


# --- CSV / TSV -------------------------------------------------------------------------------


class _RecordTooLong(Exception):
    """Raised through csv.reader when the record it is reading grows over the limit."""


class _CsvLines:
    """The lines of a CSV stream as csv.reader pulls them, refusing a record that grows over the limit.

    csv.reader asks for exactly the lines of one record before it returns it, so counting what it pulled
    since the last record measures the record without letting it grow.
    """

    def __init__(self, stream: IO[str], limit: int) -> None:
        self._lines = bounded_lines(stream, limit, ("\n", "\r"))
        self._pending: deque[str | LongLine] = deque()
        self._limit = limit
        self.line_number = 0
        self.start_record()

    def start_record(self) -> None:
        self.record_chars = 0
        self._record_quotes = 0

    def only_blank(self) -> bool:
        """True when the stream holds nothing but whitespace; the lines looked at are kept for the reader."""
        for line in self._lines:
            self._pending.append(line)
            if isinstance(line, LongLine) or line.strip():
                return False
        return True

    def _next_line(self) -> str | LongLine:
        line = self._pending.popleft() if self._pending else next(self._lines)
        self.line_number += 1
        if isinstance(line, LongLine):
            self.record_chars += line.size
            self._record_quotes += line.quotes
        else:
            self.record_chars += len(line)
            self._record_quotes += line.count('"')
        return line

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        line = self._next_line()
        if isinstance(line, LongLine) or self.record_chars > self._limit:
            raise _RecordTooLong
        return line

    def skip_record(self) -> int:
        """Drop the rest of a refused record; returns its length.

        csv.reader's own state is lost with the record, so its end is where the quotes it opened close:
        an odd count of double quotes so far means a quoted field is still open.
        """
        while self._record_quotes % 2:
            try:
                self._next_line()
            except StopIteration:
                break
        return self.record_chars


def _allow_long_csv_fields(limit: int) -> None:
    # csv refuses fields over 128 KiB by default; the record limit bounds them here instead. The setting
    # is process-wide, so it is only ever raised.
    if csv.field_size_limit() < limit + 1:
        csv.field_size_limit(limit + 1)


def _csv_header(reader: Any, source: str, limits: ReadLimits) -> list[str]:
    try:
        header = next(reader)
    except _RecordTooLong:
        raise PoolInputError(f"{source}: the CSV header is longer than {limits.record_chars} characters") from None
    except csv.Error as error:
        raise PoolInputError(f"{source}: cannot parse the CSV header: {error}") from None
    header = [name.strip() for name in header]
    if len(set(header)) != len(header):
        raise PoolInputError(f"{source}: the CSV header repeats a column name: {header}")
    return header


def read_csv(path: Path, source: str, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawRow]:
    delimiter = "\t" if format_suffix(path) == ".tsv" else ","
    _allow_long_csv_fields(limits.record_chars)
    with open_text(path, newline="") as stream:
        lines = _CsvLines(stream, limits.record_chars)
        if lines.only_blank():
            raise PoolInputError(f"{source}: the file is empty")
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        header = _csv_header(reader, source, limits)
        yield from _csv_rows(reader, lines, header, source, limits)


def _csv_rows(reader: Any, lines: _CsvLines, header: list[str], source: str, limits: ReadLimits) -> Iterator[RawRow]:
    index = 1
    while True:
        lines.start_record()
        try:
            cells = next(reader)
        except StopIteration:
            return
        except _RecordTooLong:
            size = lines.skip_record()
            detail = f"a CSV record of {size} characters, over the {limits.record_chars} read per row"
            yield RawRow(source, index, None, (TOO_LONG, detail))
            index += 1
            continue
        except csv.Error as error:
            # A broken quote swallows the rest of the file; nothing after it can be trusted.
            raise PoolInputError(
                f"{source}: cannot parse CSV record {index} (line {lines.line_number}): {error}"
            ) from None
        if not any(cell.strip() for cell in cells):
            index += 1
            continue
        if len(cells) != len(header):
            yield RawRow(source, index, None, (MALFORMED_ROW, f"{len(cells)} cells for {len(header)} columns"))
        else:
            yield RawRow(source, index, dict(zip(header, cells, strict=True)))
        index += 1


# --- Files and folders -----------------------------------------------------------------------

_READERS: dict[str, Reader] = {
    ".json": read_json,
    ".jsonl": read_jsonl,
    ".ndjson": read_jsonl,
    ".csv": read_csv,
    ".tsv": read_csv,
    ".parquet": read_parquet,
}


def list_input_files(path: Path, exclude: Sequence[str | Path] = ()) -> list[Path]:
    """The files a dataset path stands for: the file itself, or the data files below a folder."""
    return list_inputs(path, exclude).files


def _read_file(file: Path, source: str, limits: ReadLimits) -> Iterator[RawRow]:
    """The rows of one file; anything that stops the file from being read fails it, naming it."""
    reader = _READERS[format_suffix(file)]
    last = 0
    try:
        for raw in reader(file, source, limits):
            last = raw.row
            yield raw
    except PoolInputError:
        raise
    except Exception as error:  # OSError, a corrupt gzip stream, an encoding error: the file, not a row
        where = f" after row {last}" if last else ""
        raise PoolInputError(f"{source}: cannot be read{where}: {type(error).__name__}: {error}") from None


def read_files(listing: InputFiles, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawRow]:
    for file in listing.files:
        yield from _read_file(file, listing.source(file), limits)


def read_path(
    path: Path,
    limits: ReadLimits = DEFAULT_LIMITS,
    exclude: Sequence[str | Path] = (),
    skipped: list[SkippedPath] | None = None,
) -> Iterator[RawRow]:
    """Yield the rows of a file or of every data file below a folder, in a stable order.

    What a folder holds but is not read is appended to ``skipped`` (and logged).
    """
    listing = list_inputs(path, exclude)
    if skipped is not None:
        skipped.extend(listing.skipped)
    yield from read_files(listing, limits)


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
    source = display_name(f"{name}[{split}]")
    for index, record in enumerate(dataset, start=1):
        yield RawRow(source, index, dict(record))


def looks_like_hub_name(spec: str) -> bool:
    """A hub id is ``name`` or ``owner/name`` with no path separators beyond that one slash."""
    parts = spec.split("/")
    return 1 <= len(parts) <= 2 and all(parts) and not spec.startswith((".", "~")) and "\\" not in spec


def read_dataset(
    spec: str,
    split: str = "train",
    *,
    limits: ReadLimits = DEFAULT_LIMITS,
    exclude: Sequence[str | Path] = (),
    skipped: list[SkippedPath] | None = None,
) -> Iterator[RawRow]:
    """Rows of a local path when it exists, else of a hub dataset when ``spec`` looks like a hub id."""
    path = Path(spec).expanduser()
    if path.exists():
        yield from read_path(path, limits, exclude, skipped)
        return
    if looks_like_hub_name(spec) and not Path(spec).suffix:
        yield from read_hub_dataset(spec, split)
        return
    raise missing_path_error(path, spec)
