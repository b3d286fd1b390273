"""What readers hand to the pool: raw rows, the reasons a row is rejected, the limits that keep one row cheap."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

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

# No line, CSV record or JSON array item is held in memory beyond this many characters, whatever
# PASER_MAX_CHARS says: rows carry other fields too, so the cap is generous, but it is a cap.
MIN_RECORD_CHARS = 16 * 1024 * 1024


class PoolInputError(ValueError):
    """The input cannot be read at all (missing path, unparseable file, no usable row)."""


@dataclass(frozen=True)
class RawRow:
    """One record as read, before validation. ``row`` counts from 1 (the line number for JSONL)."""

    source: str
    row: int
    record: dict[str, Any] | None
    error: tuple[str, str] | None = None  # (reason, detail) when the row could not be read


@dataclass(frozen=True)
class Unread:
    """Stands in a record for a value that was too big to read; validation rejects the row if it needs it.

    ``type_name`` is what the value is (``str``, ``bytes``, ``int``) and ``size`` its length in
    characters (bytes, digits).
    """

    type_name: str
    size: int

    def __repr__(self) -> str:
        unit = {"str": "characters", "int": "digits"}.get(self.type_name, "bytes")
        return f"<{self.type_name} of {self.size} {unit}, not read>"


@dataclass(frozen=True)
class ReadLimits:
    """How much of one row a reader takes in.

    ``value_chars``: a single text value longer than this is not converted (it stands as :class:`Unread`).
    ``record_chars``: a line, CSV record or JSON item longer than this is skipped without being parsed.
    """

    value_chars: int
    record_chars: int

    @classmethod
    def for_pool(cls, max_chars: int) -> ReadLimits:
        # Normalisation can shrink a value (CRLF to LF halves it at most, outer whitespace is stripped),
        # so only a value over twice the row limit is certain to be too long before it is normalised.
        value_chars = 2 * max_chars + 1024
        return cls(value_chars, max(MIN_RECORD_CHARS, 8 * value_chars))


DEFAULT_LIMITS = ReadLimits.for_pool(20_000)


def display_name(name: str) -> str:
    """``name`` made safe to store: bytes of a file name that are not UTF-8 are shown as ``\\xNN``."""
    try:
        raw = os.fsencode(name)  # undoes the surrogateescape that decoded the name from the file system
    except UnicodeEncodeError:  # a lone surrogate that did not come from the file system
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
