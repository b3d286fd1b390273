"""Stream the records of one JSON document (an array, or an object holding one array) item by item.

``json.loads`` of the whole file holds every record at once and fails the whole file for one item that
nests too deeply. Here each array item is decoded on its own from a sliding window of text: an item that
is too deep or too long becomes a rejected row, and only a syntax error fails the file (named with line
and column, as ``json`` reports them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from paser_assets.pool.rows import MALFORMED_ROW, TOO_LONG, PoolInputError, ReadLimits, Unread

_CHUNK = 1 << 20
_NOT_SPACE = re.compile(r"[^ \t\n\r]")
_STRING_SPECIAL = re.compile(r'["\\]')
_STRUCTURE = re.compile(r'["\[\]{}]')
_SCALAR_END = re.compile(r"[,\]}\s]")
# A decoding error, or the end of a value, this close to the end of the window may only mean that the
# value goes on beyond it; the value is decoded again with more text.
_END_MARGIN = 16
_MAX_INT_DIGITS = 4300  # Python's default limit for int(str); longer numbers are not converted at all


def _parse_int(text: str) -> int | Unread:
    # Past the limit int() raises ValueError (failing the whole file) or, with the limit lifted, takes
    # quadratic time; such a number is no text field anyway.
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        return Unread("int", len(text))
    return int(text)


DECODER = json.JSONDecoder(parse_int=_parse_int)


def loads(text: str) -> Any:
    """``json.loads`` with the integer guard (and its check for a stray BOM)."""
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return DECODER.decode(text)


@dataclass(frozen=True)
class Skipped:
    """An item that was not decoded: the (reason, detail) of its rejection."""

    reason: str
    detail: str


class _ValueEnd:
    """Finds where a JSON value ends without decoding it, across pieces of text: brackets outside strings."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.scalar: bool | None = None

    def feed(self, text: str, i: int) -> int | None:
        """The index just past the value's end in ``text``, or None when the value goes on past ``text``."""
        if self.scalar is None and i < len(text):
            self.scalar = text[i] not in '[{"'
        if self.scalar:
            match = _SCALAR_END.search(text, i)
            return match.start() if match else None
        while i < len(text):
            if self.escaped:
                self.escaped, i = False, i + 1
            elif self.in_string:
                match = _STRING_SPECIAL.search(text, i)
                if match is None:
                    return None
                i = match.end()
                if match.group() == "\\":
                    self.escaped = True
                else:
                    self.in_string = False
                    if self.depth == 0:
                        return i
            else:
                match = _STRUCTURE.search(text, i)
                if match is None:
                    return None
                i, char = match.end(), match.group()
                if char == '"':
                    self.in_string = True
                elif char in "[{":
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth <= 0:
                        return i
        return None


class _Window:
    """A sliding window over a text stream, that remembers the line and column where it starts."""

    def __init__(self, stream: IO[str], source: str) -> None:
        self.stream, self.source = stream, source
        self.text, self.pos, self.eof = "", 0, False
        self.lines_before, self.column_base = 0, 0

    def fill(self) -> bool:
        """Read more text (as much again as the window holds, so that a long value costs linear time)."""
        if self.eof:
            return False
        self.compact()
        chunk = self.stream.read(max(_CHUNK, len(self.text) - self.pos))
        if not chunk:
            self.eof = True
            return False
        self.text = self.text[self.pos :] + chunk if self.pos else self.text + chunk
        self.pos = 0
        return True

    def compact(self) -> None:
        if not self.pos:
            return
        dropped = self.text[: self.pos]
        newlines = dropped.count("\n")
        if newlines:
            self.lines_before += newlines
            self.column_base = len(dropped) - dropped.rfind("\n") - 1
        else:
            self.column_base += len(dropped)
        self.text, self.pos = self.text[self.pos :], 0

    def peek(self) -> str:
        """The next character that is not JSON whitespace ('' at the end of the stream)."""
        while True:
            match = _NOT_SPACE.search(self.text, self.pos)
            if match:
                self.pos = match.start()
                return match.group()
            self.pos = len(self.text)
            if not self.fill():
                return ""

    def error(self, message: str, pos: int) -> PoolInputError:
        newlines = self.text.count("\n", 0, pos)
        if newlines:
            line, column = self.lines_before + newlines + 1, pos - self.text.rfind("\n", 0, pos)
        else:
            line, column = self.lines_before + 1, self.column_base + pos + 1
        return PoolInputError(f"{self.source}: not valid JSON at line {line}, column {column}: {message}")

    def expect(self, char: str, message: str) -> None:
        if self.peek() != char:
            raise self.error(message, self.pos)
        self.pos += 1

    def value(self, limits: ReadLimits) -> Any:
        """Decode the value at the window's position, or skip it and return :class:`Skipped`."""
        start = self.pos
        while True:
            try:
                value, end = DECODER.raw_decode(self.text, start)
            except json.JSONDecodeError as error:
                incomplete = error.msg.startswith("Unterminated string") or error.pos >= len(self.text) - _END_MARGIN
                if self.eof or not incomplete:
                    raise self.error(error.msg, error.pos) from None
            except RecursionError:
                size = self.skip()
                return Skipped(MALFORMED_ROW, f"JSON nested too deeply to read ({size} characters)")
            else:
                # A number that ends near the window's end may go on in the next piece ("1" of "1.5e3").
                if len(self.text) - end > _END_MARGIN or self.eof:
                    self.pos = end
                    return value
            if len(self.text) - start > limits.record_chars:
                size = self.skip()
                return Skipped(TOO_LONG, f"a JSON value of {size} characters, over the {limits.record_chars} read")
            self.pos = start
            self.fill()
            start = self.pos

    def skip(self) -> int:
        """Move past the value at the window's position without decoding it; returns its length."""
        finder, i, size = _ValueEnd(), self.pos, 0
        while True:
            end = finder.feed(self.text, i)
            if end is not None:
                self.pos = end
                return size + end - i
            size += len(self.text) - i
            self.pos = len(self.text)
            if not self.fill():
                return size
            i = self.pos


def _type_name(value: Any) -> str:
    if isinstance(value, Unread):
        return value.type_name
    return "str" if isinstance(value, Skipped) else type(value).__name__


def _wrong_document(source: str, type_name: str) -> PoolInputError:
    return PoolInputError(
        f"{source}: expected a JSON array of records (or an object holding one array), got {type_name}"
    )


def _array_items(window: _Window, limits: ReadLimits) -> Iterator[Any]:
    """The items of the array whose ``[`` was just read; each a value or :class:`Skipped`."""
    if window.peek() == "]":
        window.pos += 1
        return
    while True:
        window.peek()
        yield window.value(limits)
        char = window.peek()
        if char == "]":
            window.pos += 1
            return
        if char != ",":
            raise window.error("Expecting ',' delimiter", window.pos)
        window.pos += 1


def _object_members(window: _Window, limits: ReadLimits) -> Iterator[tuple[str, str]]:
    """Walk the object whose ``{`` was just read: yields (key, first character of its value) and leaves
    the window at the value, which the caller must consume."""
    if window.peek() == "}":
        window.pos += 1
        return
    while True:
        if window.peek() != '"':
            raise window.error("Expecting property name enclosed in double quotes", window.pos)
        key = window.value(limits)
        if isinstance(key, Skipped):
            raise window.error("a property name too long to read", window.pos)
        window.expect(":", "Expecting ':' delimiter")
        yield key, window.peek()
        char = window.peek()
        if char == "}":
            window.pos += 1
            return
        if char != ",":
            raise window.error("Expecting ',' delimiter", window.pos)
        window.pos += 1


def iter_document(stream: IO[str], source: str, limits: ReadLimits) -> Iterator[tuple[int, Any]]:
    """(row, item) for each record of the document: an array's items, the items of the one array an
    object holds, or the object itself when all its values are scalars. Items may be :class:`Skipped`."""
    window = _Window(stream, source)
    first = window.peek()
    if not first:
        raise PoolInputError(f"{source}: the file is empty")
    if first == "[":
        window.pos += 1
        yield from enumerate(_array_items(window, limits), start=1)
    elif first == "{":
        window.pos += 1
        yield from _object_records(window, source, limits)
    else:
        value = window.value(limits)
        _expect_end(window)
        raise _wrong_document(source, _type_name(value))
    _expect_end(window)


def _object_records(window: _Window, source: str, limits: ReadLimits) -> Iterator[tuple[int, Any]]:
    record: dict[str, Any] = {}
    found_array, flat = False, True
    for key, char in _object_members(window, limits):
        if char == "[":
            if found_array:
                raise _wrong_document(source, "dict")
            found_array, flat = True, False
            window.pos += 1
            yield from enumerate(_array_items(window, limits), start=1)
        elif char == "{":
            flat = False
            window.skip()  # an object beside the records (metadata) is not needed
        else:
            record[key] = window.value(limits)
    if found_array:
        return
    _expect_end(window)
    if not flat:
        raise _wrong_document(source, "dict")
    skipped = next((value for value in record.values() if isinstance(value, Skipped)), None)
    yield 1, skipped or record


def _expect_end(window: _Window) -> None:
    if window.peek():
        raise window.error("Extra data", window.pos)
