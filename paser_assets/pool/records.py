"""Turn raw rows into the normalised recovery pool and its rejection list."""

from __future__ import annotations

import builtins
import functools
import reprlib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from paser_assets.core.text import has_undecodable_text, normalize_text, sample_id
from paser_assets.pool.folders import SkippedPath
from paser_assets.pool.rows import (
    EMPTY_INSTRUCTION,
    EMPTY_OUTPUT,
    MALFORMED_ROW,
    MISSING_INSTRUCTION,
    MISSING_OUTPUT,
    TOO_LONG,
    UNDECODABLE_TEXT,
    WRONG_TYPE,
    PoolInputError,
    RawRow,
    Unread,
)

# Field names seen in the wild for each Alpaca field, tried in this order.
DEFAULT_FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "prompt", "question", "query", "task", "problem"),
    "input": ("input", "context", "inputs"),
    "output": ("output", "response", "answer", "completion", "target", "solution"),
    "family": ("family", "category", "capability", "label"),
}

POOL_COLUMNS = {
    "sample_id": "Content hash of the normalised (instruction, input, output)",
    "instruction": "Normalised instruction text",
    "input": "Normalised input text ('' when the record has none)",
    "output": "Normalised reference response",
    "family": "Capability label from the data, when it has one (NULL otherwise)",
    "source": "File (or hub dataset) the row came from",
    "source_row": "Row number in that file, from 1 (the line number for JSONL)",
    "duplicate_count": "How many identical rows the input held; they are kept once",
    "n_chars": "Characters of instruction + input + output",
}

REJECTED_COLUMNS = {
    "source": "File (or hub dataset) the row came from",
    "source_row": "Row number in that file, from 1 (the line number for JSONL)",
    "reason": "One of the rejection reasons (malformed_row, wrong_type, undecodable_text, ...)",
    "detail": "What exactly was wrong",
    "preview": "The first 200 characters of the raw row",
}


@dataclass(frozen=True)
class FieldMapping:
    """Which source field feeds each pool field. Explicit names win over the default aliases."""

    explicit: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.explicit) - set(DEFAULT_FIELD_ALIASES)
        if unknown:
            raise ValueError(
                f"field mapping names unknown pool fields {sorted(unknown)}; "
                f"known fields are {sorted(DEFAULT_FIELD_ALIASES)}"
            )

    def candidates(self, pool_field: str) -> tuple[str, ...]:
        if pool_field in self.explicit:
            return (self.explicit[pool_field],)
        return DEFAULT_FIELD_ALIASES[pool_field]

    def pick(self, record: Mapping[str, Any], pool_field: str) -> tuple[str | None, Any]:
        """The (source field name, value) for ``pool_field``, or (None, None) when absent."""
        for name in self.candidates(pool_field):
            if name in record:
                return name, record[name]
        return None, None


@dataclass
class PoolBuild:
    accepted: pd.DataFrame
    rejected: pd.DataFrame
    rows_read: int
    duplicates_removed: int
    # Files and folders below the dataset folder that were not read, with the reason (empty for a file).
    skipped: list[SkippedPath] = field(default_factory=list)

    @property
    def rejection_counts(self) -> dict[str, int]:
        if self.rejected.empty:
            return {}
        return {str(k): int(v) for k, v in self.rejected["reason"].value_counts().sort_index().items()}


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# A text made only of these is empty to a reader: controls, format characters (zero-width, bidi
# embeddings and isolates, BOM), spaces and line or paragraph separators.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})
# Letters and marks that render as nothing (Hangul fillers, braille blank, ...), used to fake a text.
_BLANK_CHARACTERS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180e\u2800\u3164\uffa0")


def _has_visible(text: str) -> bool:
    if text.isascii():  # normalised ASCII has no controls left and no outer whitespace: visible if not empty
        return bool(text)
    # Stops at the first visible character, so a normal text costs one lookup.
    return any(ch not in _BLANK_CHARACTERS and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES for ch in text)


def _text_field(record: Mapping[str, Any], mapping: FieldMapping, pool_field: str, required: bool) -> str | Unread:
    """The normalised text of ``pool_field``, or the :class:`Unread` stand-in of a text too long to read."""
    name, value = mapping.pick(record, pool_field)
    if name is None or value is None:
        if required:
            missing = MISSING_INSTRUCTION if pool_field == "instruction" else MISSING_OUTPUT
            tried = ", ".join(mapping.candidates(pool_field))
            raise _Rejected(missing, f"no {pool_field} field (looked for: {tried})")
        return ""
    if isinstance(value, Unread):
        if value.type_name == "str":
            return value
        raise _Rejected(WRONG_TYPE, f"field {name!r} is {value.type_name}, expected a string")
    if not isinstance(value, str):
        raise _Rejected(WRONG_TYPE, f"field {name!r} is {type(value).__name__}, expected a string")
    if has_undecodable_text(value):
        raise _Rejected(UNDECODABLE_TEXT, f"field {name!r} holds bytes that are not valid text in the file's encoding")
    return normalize_text(value)


def _require_visible(text: str | Unread, reason: str, what: str) -> None:
    if isinstance(text, Unread):
        return
    if not text:
        raise _Rejected(reason, f"{what} is empty after normalisation")
    if not _has_visible(text):
        raise _Rejected(reason, f"{what} holds only invisible characters (controls, format characters or spaces)")


def _length(text: str | Unread) -> int:
    return text.size if isinstance(text, Unread) else len(text)


def _family(record: Mapping[str, Any], mapping: FieldMapping) -> str | None:
    name, family = mapping.pick(record, "family")
    if family is None or not isinstance(family, (str, int)):
        return None
    if isinstance(family, str) and has_undecodable_text(family):
        raise _Rejected(UNDECODABLE_TEXT, f"field {name!r} holds bytes that are not valid text in the file's encoding")
    return normalize_text(str(family)) or None


def validate_record(record: Mapping[str, Any], mapping: FieldMapping, max_chars: int) -> dict[str, Any]:
    """Normalise one record, or raise ``_Rejected`` with the reason."""
    instruction = _text_field(record, mapping, "instruction", required=True)
    _require_visible(instruction, EMPTY_INSTRUCTION, "the instruction")
    input_text = _text_field(record, mapping, "input", required=False)
    output = _text_field(record, mapping, "output", required=True)
    _require_visible(output, EMPTY_OUTPUT, "the reference output")
    texts = (instruction, input_text, output)
    n_chars = _length(instruction) + _length(input_text) + _length(output)
    if n_chars > max_chars:
        raise _Rejected(TOO_LONG, f"{n_chars} characters, over the limit of {max_chars}")
    unread = next((text for text in texts if isinstance(text, Unread)), None)
    if unread is not None:  # read under a lower limit than this pool's
        raise _Rejected(TOO_LONG, f"a field of {unread.size} characters was too long to read")
    assert isinstance(instruction, str) and isinstance(input_text, str) and isinstance(output, str)
    return {
        "sample_id": sample_id(instruction, input_text, output),
        "instruction": instruction,
        "input": input_text,
        "output": output,
        "family": _family(record, mapping),
        "n_chars": n_chars,
    }


class _PreviewRepr(reprlib.Repr):
    """``repr`` that never builds more than it shows: long texts are cut before they are quoted, deep
    nesting stops at a few levels, and huge integers are not converted to digits."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.maxlevel = 4
        self.maxdict = self.maxlist = self.maxtuple = self.maxset = self.maxfrozenset = self.maxdeque = 32
        self.maxstring = self.maxother = width

    def repr_str(self, value: str, level: int) -> str:
        return builtins.repr(value[: self.maxstring])

    def repr_bytes(self, value: bytes, level: int) -> str:
        return builtins.repr(value[: self.maxstring])

    def repr_int(self, value: int, level: int) -> str:
        if value.bit_length() > 256:
            return f"<int of {value.bit_length()} bits>"
        return builtins.repr(value)


_PREVIEW_WIDTH = 200
_PREVIEW = _PreviewRepr(_PREVIEW_WIDTH)


def _preview(value: Any) -> str:
    text = _PREVIEW.repr(value)[:_PREVIEW_WIDTH]
    return text.encode("utf-8", "replace").decode("utf-8")


# Rows gathered in Python lists before they move into Arrow; bounds the Python objects alive at once.
_RUN_ROWS = 16_384


@functools.cache
def _chunk_pool() -> pa.MemoryPool:
    """Where the columns' chunks live as long as the pool does: jemalloc packs many such mid-sized buffers
    tightest (measured per million short rows: ~15 MB less than the system allocator, which takes ~25 MB less
    than Arrow's default mimalloc); the system allocator where pyarrow is built without jemalloc."""
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # pragma: no cover - pyarrow's Linux wheels have jemalloc
        return pa.system_memory_pool()


class _Columns:
    """Rows of strings and integers, stored column by column in Arrow.

    A Python string costs ~50 bytes beyond its text and a dict per row far more, so rows stay in Python
    only in short runs of tuples; each run then moves into Arrow, where a value costs its bytes and an offset.
    """

    def __init__(self, types: dict[str, pa.DataType]) -> None:
        self.types = types
        self._rows: list[tuple[Any, ...]] = []
        # A run with no value in a column (a pool without families, say) stands there as its length alone.
        self._chunks: dict[str, list[pa.Array | int]] = {name: [] for name in types}

    def append(self, row: tuple[Any, ...]) -> None:
        self._rows.append(row)
        if len(self._rows) >= _RUN_ROWS:
            self._flush()

    def extend(self, rows: list[tuple[Any, ...]]) -> None:
        """Move a run of rows into Arrow at once."""
        self._flush()
        self._rows = rows
        self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        for (name, data_type), values in zip(self.types.items(), zip(*self._rows, strict=True), strict=True):
            if values.count(None) == len(values):
                self._chunks[name].append(len(values))
            else:
                self._chunks[name].append(pa.array(values, type=data_type, memory_pool=_chunk_pool()))
        self._rows = []

    def column(self, name: str) -> pd.Series | np.ndarray:
        """A column as pandas makes it from a list of the same values (``str``, or object when all None)."""
        self._flush()
        chunks, data_type = self._chunks.pop(name), self.types[name]
        if chunks and all(isinstance(chunk, int) for chunk in chunks):
            return _nones(sum(chunks))  # type: ignore[arg-type]
        return _pandas_column(
            pa.chunked_array(
                [pa.nulls(chunk, data_type) if isinstance(chunk, int) else chunk for chunk in chunks], type=data_type
            )
        )


def _pandas_column(chunks: pa.ChunkedArray) -> pd.Series | np.ndarray:
    """A column as pandas makes it from a list of the same values (``str``, or object when all None); strings
    stay in their Arrow buffers."""
    if pa.types.is_integer(chunks.type):
        return chunks.to_numpy()
    if chunks.null_count == len(chunks):
        return _nones(len(chunks))
    return chunks.to_pandas()


def _nones(length: int) -> pd.Series:
    return pd.Series(np.full(length, None, dtype=object), dtype=object, copy=False)


_TEXT, _INT = pa.large_string(), pa.int64()
_ACCEPTED_TEXTS = {"instruction": _TEXT, "input": _TEXT, "output": _TEXT, "family": _TEXT, "source": _TEXT}
_REJECTED_TYPES = {"source": _TEXT, "source_row": _INT, "reason": _TEXT, "detail": _TEXT, "preview": _TEXT}


class _Ints:
    """A growing int64 column in one NumPy array, grown and finally cut to length in place (``realloc``: the
    allocator moves pages, it does not copy them), so it ends as exactly the column the frame holds."""

    def __init__(self) -> None:
        self.values = np.zeros(_RUN_ROWS, dtype=np.int64)
        self.length = 0

    def extend(self, values: np.ndarray) -> None:
        end = self.length + len(values)
        if end > len(self.values):
            self.values.resize(max(end, len(self.values) + len(self.values) // 2), refcheck=False)
        self.values[self.length : end] = values
        self.length = end

    def array(self) -> np.ndarray:
        """The column, ``length`` long; this object is spent."""
        values, self.values = self.values, np.zeros(0, dtype=np.int64)
        values.resize(self.length, refcheck=False)
        return values


class _SeenKeys:
    """The sample ids kept so far, as the unsigned integers their 16 hex digits spell, each with its row in the
    pool: sorted NumPy runs whose sizes shrink from the oldest to the newest (a new run merges into the last
    while it is as long), so a lookup is one binary search per run and an insert costs O(log n) amortised copies.

    12 bytes per kept row, where a dict of Python ints costs about 90.
    """

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted uint64 keys, uint32 rows)

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """The pool row of each key, -1 where it was not seen."""
        rows = np.full(len(keys), -1, dtype=np.int64)
        for run_keys, run_rows in self._runs:
            at = np.minimum(np.searchsorted(run_keys, keys), len(run_keys) - 1)
            found = run_keys[at] == keys
            rows[found] = run_rows[at[found]]
        return rows

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Keys not seen before (each once) and their rows."""
        if not len(keys):
            return
        order = np.argsort(keys)
        run = (keys[order], rows[order].astype(np.uint32))
        while self._runs and len(self._runs[-1][0]) <= len(run[0]):
            run = _merge(self._runs.pop(), run)
        self._runs.append(run)

    def hex_ids(self, count: int) -> pa.Array:
        """The sample ids of rows 0..count-1 as 16 hex digits each, in row order, built in Arrow without a Python
        string; the runs are given up."""
        digits = np.empty((count, 16), dtype=np.uint8)
        while self._runs:
            run_keys, run_rows = self._runs.pop()
            for start in range(0, len(run_keys), _RUN_ROWS):  # a slice at a time: small temporaries
                digits[run_rows[start : start + _RUN_ROWS]] = _hex_digits(run_keys[start : start + _RUN_ROWS])
        offsets = np.arange(0, 16 * (count + 1), 16, dtype=np.int64)
        return pa.LargeStringArray.from_buffers(count, pa.py_buffer(offsets), pa.py_buffer(digits))


def _merge(older: tuple[np.ndarray, np.ndarray], newer: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs with no key in common, as one sorted run, in linear time."""
    at_new = np.searchsorted(older[0], newer[0]) + np.arange(len(newer[0]))
    is_new = np.zeros(len(older[0]) + len(newer[0]), dtype=bool)
    is_new[at_new] = True
    keys = np.empty(len(is_new), dtype=np.uint64)
    rows = np.empty(len(is_new), dtype=np.uint32)
    keys[at_new], rows[at_new] = newer
    keys[~is_new], rows[~is_new] = older
    return keys, rows


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _hex_digits(keys: np.ndarray) -> np.ndarray:
    """``f"{key:016x}"`` of each key, as a row of 16 ASCII bytes."""
    octets = keys.astype(">u8").view(np.uint8).reshape(-1, 8)
    digits = np.empty((len(keys), 16), dtype=np.uint8)
    digits[:, 0::2] = _HEX[octets >> 4]
    digits[:, 1::2] = _HEX[octets & 15]
    return digits


class _Accepted:
    """The accepted rows, first occurrences only: texts in Arrow columns, numbers in NumPy, and how often each
    sample_id was seen.

    Rows wait in a short run of Python tuples with their sample ids as integers (the 16 hex digits); each run
    is de-duplicated at once with NumPy against :class:`_SeenKeys`, and its new rows move out of Python in the
    order they were read, so the pool's row order is that of the first occurrences. No Python object is kept
    per row.
    """

    def __init__(self) -> None:
        self.texts = _Columns(dict(_ACCEPTED_TEXTS))
        self.rows_kept = 0  # accepted rows read, duplicates included
        self._kept = 0  # rows in the pool: distinct sample ids
        self._seen = _SeenKeys()
        self._source_rows, self._n_chars, self._counts = _Ints(), _Ints(), _Ints()
        self._keys: list[int] = []
        self._pending: list[tuple[Any, ...]] = []

    def add(self, clean: dict[str, Any], raw: RawRow) -> None:
        self.rows_kept += 1
        self._keys.append(int(clean["sample_id"], 16))
        texts = (clean["instruction"], clean["input"], clean["output"], clean["family"], raw.source)
        self._pending.append((texts, raw.row, clean["n_chars"]))
        if len(self._pending) >= _RUN_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        unique, first, occurrences = np.unique(
            np.array(self._keys, dtype=np.uint64), return_index=True, return_counts=True
        )
        rows = self._seen.rows_of(unique)
        seen = rows >= 0
        np.add.at(self._counts.values, rows[seen], occurrences[seen])
        order = np.argsort(first[~seen])  # the new rows in the order they were read
        new_first = first[~seen][order].tolist()
        self._seen.add(unique[~seen][order], np.arange(self._kept, self._kept + len(new_first)))
        self._counts.extend(occurrences[~seen][order])
        new = [self._pending[i] for i in new_first]
        self._source_rows.extend(np.fromiter((row[1] for row in new), dtype=np.int64, count=len(new)))
        self._n_chars.extend(np.fromiter((row[2] for row in new), dtype=np.int64, count=len(new)))
        self.texts.extend([row[0] for row in new])
        self._kept += len(new)
        self._keys, self._pending = [], []

    def frame(self) -> pd.DataFrame:
        self._flush()
        sample_ids = self._seen.hex_ids(self._kept)
        columns = {"sample_id": _pandas_column(pa.chunked_array([sample_ids], type=_TEXT))}
        columns.update({name: self.texts.column(name) for name in _ACCEPTED_TEXTS})
        columns["source_row"] = self._source_rows.array()
        columns["n_chars"] = self._n_chars.array()
        columns["duplicate_count"] = self._counts.array()
        return pd.DataFrame(columns, columns=list(POOL_COLUMNS), copy=False)


class _RejectedRows:
    def __init__(self) -> None:
        self.rows = _Columns(_REJECTED_TYPES)

    def add(self, raw: RawRow, reason: str, detail: str, preview: str) -> None:
        self.rows.append((raw.source, raw.row, reason, detail, preview))

    def frame(self) -> pd.DataFrame:
        columns = {name: self.rows.column(name) for name in _REJECTED_TYPES}
        return pd.DataFrame(columns, columns=list(REJECTED_COLUMNS), copy=False)


def _validate(raw: RawRow, mapping: FieldMapping, max_chars: int) -> dict[str, Any]:
    assert raw.record is not None
    try:
        return validate_record(raw.record, mapping, max_chars)
    except _Rejected:
        raise
    except (RecursionError, ValueError, TypeError, UnicodeError, OverflowError) as error:
        # A value no check foresaw must cost its row, not the pool.
        raise _Rejected(MALFORMED_ROW, f"cannot be validated: {type(error).__name__}: {str(error)[:200]}") from None


def build_pool(rows: Iterable[RawRow], mapping: FieldMapping, max_chars: int) -> PoolBuild:
    """Validate, normalise and de-duplicate rows; the first occurrence of a duplicate is kept."""
    accepted = _Accepted()
    rejected = _RejectedRows()
    rows_read = 0
    for raw in rows:
        rows_read += 1
        if raw.error is not None:
            rejected.add(raw, *raw.error, "")
            continue
        try:
            clean = _validate(raw, mapping, max_chars)
        except _Rejected as rejection:
            rejected.add(raw, rejection.reason, rejection.detail, _preview(raw.record))
            continue
        accepted.add(clean, raw)
    total = accepted.rows_kept
    accepted_frame = accepted.frame()
    return PoolBuild(accepted_frame, rejected.frame(), rows_read, total - len(accepted_frame))


def require_usable(build: PoolBuild, spec: str) -> None:
    """Fail with a clear message when no usable row is left."""
    if len(build.accepted):
        return
    if build.rows_read == 0:
        raise PoolInputError(f"{spec}: the input holds no rows")
    counts = ", ".join(f"{reason}: {count}" for reason, count in build.rejection_counts.items())
    first = build.rejected.iloc[0]
    raise PoolInputError(
        f"{spec}: none of the {build.rows_read} rows is usable ({counts}); "
        f"first rejection: {first['source']} row {first['source_row']}: {first['detail']}"
    )
