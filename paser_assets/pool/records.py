"""Turn raw rows into the normalised recovery pool and its rejection list."""

from __future__ import annotations

import builtins
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


class _Columns:
    """Rows of strings and integers, stored column by column in Arrow.

    A Python string costs ~50 bytes beyond its text and a dict per row far more, so rows stay in Python
    only in short runs of tuples; each run then moves into Arrow, where a value costs its bytes and an offset.
    """

    def __init__(self, types: dict[str, pa.DataType]) -> None:
        self.types = types
        self._rows: list[tuple[Any, ...]] = []
        self._chunks: dict[str, list[pa.Array]] = {name: [] for name in types}

    def append(self, row: tuple[Any, ...]) -> None:
        self._rows.append(row)
        if len(self._rows) >= _RUN_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        for (name, data_type), values in zip(self.types.items(), zip(*self._rows, strict=True), strict=True):
            # The chunks live as long as the pool does; the system allocator packs many such mid-sized
            # buffers tighter than Arrow's default mimalloc (measured: ~25 MB less per million rows).
            chunk = pa.array(values, type=data_type, memory_pool=pa.system_memory_pool())
            self._chunks[name].append(chunk)
        self._rows = []

    def column(self, name: str) -> pd.Series | np.ndarray:
        """A column as pandas makes it from a list of the same values (``str``, or object when all None)."""
        self._flush()
        chunks = pa.chunked_array(self._chunks.pop(name), type=self.types[name])
        if pa.types.is_integer(chunks.type):
            return chunks.to_numpy()
        if chunks.null_count == len(chunks):
            return pd.Series([None] * len(chunks), dtype=object)
        return chunks.to_pandas()


_TEXT, _INT = pa.large_string(), pa.int64()
_ACCEPTED_TYPES = {"instruction": _TEXT, "input": _TEXT, "output": _TEXT, "family": _TEXT, "source": _TEXT}
_ACCEPTED_TYPES.update(source_row=_INT, n_chars=_INT)
_REJECTED_TYPES = {"source": _TEXT, "source_row": _INT, "reason": _TEXT, "detail": _TEXT, "preview": _TEXT}


class _Accepted:
    """The accepted rows, in Arrow columns, and ``counts``: how often each sample_id was seen.

    ``counts`` is keyed by the integer the sample_id's 16 hex digits spell (half the memory of the
    string); its insertion order is the pool's row order.
    """

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.rows = _Columns(_ACCEPTED_TYPES)

    @property
    def rows_kept(self) -> int:
        return sum(self.counts.values())

    def add(self, clean: dict[str, Any], raw: RawRow) -> None:
        key = int(clean["sample_id"], 16)
        seen = self.counts.get(key)
        if seen is not None:
            self.counts[key] = seen + 1
            return
        self.counts[key] = 1
        texts = (clean["instruction"], clean["input"], clean["output"], clean["family"])
        self.rows.append((*texts, raw.source, raw.row, clean["n_chars"]))

    def frame(self) -> pd.DataFrame:
        counts, self.counts = self.counts, {}
        duplicate_count = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
        sample_ids = _Columns({"sample_id": _TEXT})
        for key in counts:
            sample_ids.append((f"{key:016x}",))
        del counts  # the largest Python structure goes before the frame is assembled
        columns = {"sample_id": sample_ids.column("sample_id")}
        columns.update({name: self.rows.column(name) for name in _ACCEPTED_TYPES})
        columns["duplicate_count"] = duplicate_count
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
