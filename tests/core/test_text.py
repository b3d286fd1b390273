"""Text normalisation and content hashing (paser_assets.core.text)."""

from __future__ import annotations

import hashlib
import json
import unicodedata

import pytest

from paser_assets.core.text import has_undecodable_text, normalize_text, sample_id


def test_normalize_composes_to_nfc():
    decomposed = "Cafe\u0301 cre\u0300me"
    result = normalize_text(decomposed)
    assert result == "Café crème"
    assert unicodedata.is_normalized("NFC", result)


def test_normalize_turns_crlf_and_cr_into_lf():
    assert normalize_text("one\r\ntwo\rthree\nfour") == "one\ntwo\nthree\nfour"


@pytest.mark.parametrize(
    "char",
    ["\x00", "\x07", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\x9b", "\u200b", "\u200e", "\u2028", "\ufeff"],
)
def test_normalize_removes_control_characters(char):
    assert normalize_text(f"ab{char}cd") == "abcd"


def test_normalize_keeps_tab_and_newline_inside():
    assert normalize_text("a\tb\nc") == "a\tb\nc"


def test_normalize_strips_outer_whitespace_and_keeps_indentation():
    code = "\n\n  def f(x):\n      if x:\n          return 1\n      return 0\n\t \n"
    assert normalize_text(code) == "def f(x):\n      if x:\n          return 1\n      return 0"


def test_normalize_result_is_nfc_even_when_a_control_char_split_a_combining_sequence():
    # The NUL sits between the letter and its accent; once removed the pair must still be composed.
    result = normalize_text("e\x00\u0301")
    assert result == "é"
    assert unicodedata.is_normalized("NFC", result)


def test_normalize_is_idempotent():
    messy = "  Cafe\u0301\r\n\x00  indented\u200b line \t"
    once = normalize_text(messy)
    assert normalize_text(once) == once


def test_has_undecodable_text_detects_surrogate_escaped_bytes():
    decoded = b"caf\xe9 au lait".decode("utf-8", errors="surrogateescape")
    assert has_undecodable_text(decoded)
    assert not has_undecodable_text("café au lait")
    assert not has_undecodable_text("emoji \U0001f600 is a valid pair")


def test_sample_id_matches_the_documented_formula():
    expected = hashlib.sha256(json.dumps(["i", "x", "o"], ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
    assert sample_id("i", "x", "o") == expected


def test_sample_id_is_stable_and_short_hex():
    first = sample_id("Add the numbers.", "2, 3", "5")
    assert first == sample_id("Add the numbers.", "2, 3", "5")
    assert len(first) == 16
    int(first, 16)  # hex digits only


def test_sample_id_depends_on_field_boundaries():
    assert sample_id("ab", "c", "out") != sample_id("a", "bc", "out")
    assert sample_id("ins", "ab", "c") != sample_id("ins", "a", "bc")
    assert sample_id("x", "", "y") != sample_id("", "x", "y")


def test_sample_id_differs_for_each_field():
    base = sample_id("i", "x", "o")
    assert len({base, sample_id("j", "x", "o"), sample_id("i", "y", "o"), sample_id("i", "x", "p")}) == 4
