"""Text normalisation and content hashing for instruction records."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

# Control characters other than tab and newline (C0 and C1) carry no meaning in instructions and
# break tokenisers and CSV exports alike.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200e\u200f\u2028\u2029\ufeff]")
# Lone surrogates appear when bytes that are not valid UTF-8 are decoded with ``surrogateescape``.
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def normalize_text(text: str) -> str:
    """Return ``text`` in NFC with ``\\n`` line ends, no control characters and no outer whitespace.

    Inner whitespace is kept on purpose: indentation is meaningful in code answers.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_CHARS.sub("", text)
    # NFC last: removing a character between a letter and its combining mark can make them composable.
    text = unicodedata.normalize("NFC", text)
    return text.strip()


def has_undecodable_text(text: str) -> bool:
    """True when ``text`` holds bytes that were not valid in the file's encoding."""
    return _LONE_SURROGATE.search(text) is not None


def sample_id(instruction: str, input_text: str, output: str) -> str:
    """Content hash of a normalised record: ``sha256(json([instruction, input, output]))[:16]``.

    The JSON list keeps field boundaries unambiguous ("ab" + "c" differs from "a" + "bc"), and 64
    bits keep the collision probability below 1e-9 for pools of a million rows.
    """
    payload = json.dumps([instruction, input_text, output], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
