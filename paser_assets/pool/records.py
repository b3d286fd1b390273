"""Turn raw rows into the normalised recovery pool and its rejection list."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from paser_assets.core.text import has_undecodable_text, normalize_text, sample_id
from paser_assets.pool.readers import (
    EMPTY_INSTRUCTION,
    EMPTY_OUTPUT,
    MISSING_INSTRUCTION,
    MISSING_OUTPUT,
    TOO_LONG,
    UNDECODABLE_TEXT,
    WRONG_TYPE,
    PoolInputError,
    RawRow,
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


def _text_field(record: Mapping[str, Any], mapping: FieldMapping, pool_field: str, required: bool) -> str:
    name, value = mapping.pick(record, pool_field)
    if name is None or value is None:
        if required:
            missing = MISSING_INSTRUCTION if pool_field == "instruction" else MISSING_OUTPUT
            tried = ", ".join(mapping.candidates(pool_field))
            raise _Rejected(missing, f"no {pool_field} field (looked for: {tried})")
        return ""
    if not isinstance(value, str):
        raise _Rejected(WRONG_TYPE, f"field {name!r} is {type(value).__name__}, expected a string")
    if has_undecodable_text(value):
        raise _Rejected(UNDECODABLE_TEXT, f"field {name!r} holds bytes that are not valid text in the file's encoding")
    return normalize_text(value)


def validate_record(record: Mapping[str, Any], mapping: FieldMapping, max_chars: int) -> dict[str, Any]:
    """Normalise one record, or raise ``_Rejected`` with the reason."""
    instruction = _text_field(record, mapping, "instruction", required=True)
    if not instruction:
        raise _Rejected(EMPTY_INSTRUCTION, "the instruction is empty after normalisation")
    input_text = _text_field(record, mapping, "input", required=False)
    output = _text_field(record, mapping, "output", required=True)
    if not output:
        raise _Rejected(EMPTY_OUTPUT, "the reference output is empty after normalisation")
    n_chars = len(instruction) + len(input_text) + len(output)
    if n_chars > max_chars:
        raise _Rejected(TOO_LONG, f"{n_chars} characters, over the limit of {max_chars}")
    _, family = mapping.pick(record, "family")
    if family is not None and not isinstance(family, (str, int)):
        family = None
    return {
        "sample_id": sample_id(instruction, input_text, output),
        "instruction": instruction,
        "input": input_text,
        "output": output,
        "family": None if family is None else normalize_text(str(family)) or None,
        "n_chars": n_chars,
    }


def _preview(value: Any) -> str:
    text = repr(value)
    return text[:200]


def build_pool(rows: Iterable[RawRow], mapping: FieldMapping, max_chars: int) -> PoolBuild:
    """Validate, normalise and de-duplicate rows; the first occurrence of a duplicate is kept."""
    accepted: dict[str, dict[str, Any]] = {}
    rejected: list[dict[str, Any]] = []
    rows_read = 0
    for raw in rows:
        rows_read += 1
        if raw.error is not None:
            reason, detail = raw.error
            rejected.append(
                {"source": raw.source, "source_row": raw.row, "reason": reason, "detail": detail, "preview": ""}
            )
            continue
        assert raw.record is not None
        try:
            clean = validate_record(raw.record, mapping, max_chars)
        except _Rejected as rejection:
            rejected.append(
                {
                    "source": raw.source,
                    "source_row": raw.row,
                    "reason": rejection.reason,
                    "detail": rejection.detail,
                    "preview": _preview(raw.record).encode("utf-8", "replace").decode("utf-8"),
                }
            )
            continue
        existing = accepted.get(clean["sample_id"])
        if existing is not None:
            existing["duplicate_count"] += 1
            continue
        clean.update(source=raw.source, source_row=raw.row, duplicate_count=1)
        accepted[clean["sample_id"]] = clean
    accepted_frame = pd.DataFrame(list(accepted.values()), columns=list(POOL_COLUMNS))
    accepted_frame = accepted_frame.astype({"source_row": "int64", "duplicate_count": "int64", "n_chars": "int64"})
    rejected_frame = pd.DataFrame(rejected, columns=list(REJECTED_COLUMNS)).astype({"source_row": "int64"})
    duplicates = int(accepted_frame["duplicate_count"].sum() - len(accepted_frame)) if len(accepted_frame) else 0
    return PoolBuild(accepted_frame, rejected_frame, rows_read, duplicates)


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
