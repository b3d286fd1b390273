"""Open data files as streams of text: the encoding from the BOM, compression by suffix, lines of bounded length."""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import lzma
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Compressed text files are decompressed while they are read, never into memory as a whole.
COMPRESSION_SUFFIXES: dict[str, Callable[[Path], IO[bytes]]] = {
    ".gz": lambda path: gzip.open(path, "rb"),
    ".bz2": lambda path: bz2.open(path, "rb"),
    ".xz": lambda path: lzma.open(path, "rb"),
}

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# How much of an over-long line is read at a time while it is skipped.
_SKIP_CHUNK = 1 << 20


def compression_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return suffix if suffix in COMPRESSION_SUFFIXES else None


def format_suffix(path: Path) -> str:
    """The suffix that names the format: ``.jsonl`` for both ``a.jsonl`` and ``a.jsonl.gz``."""
    inner = path.with_suffix("") if compression_of(path) else path
    return inner.suffix.lower()


def _encoding_for(head: bytes) -> tuple[str, str]:
    """(encoding, error handler): a BOM picks the encoding, otherwise UTF-8.

    Invalid UTF-8 becomes lone surrogates (``surrogateescape``) instead of failing the whole file,
    so that only the rows that contain them are rejected as ``undecodable_text``.
    """
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding, "surrogateescape" if encoding.startswith("utf-8") else "replace"
    return "utf-8", "surrogateescape"


def decode_bytes(data: bytes) -> str:
    """Decode file content the way :func:`open_text` does."""
    encoding, errors = _encoding_for(data[:4])
    return data.decode(encoding, errors=errors)


def open_binary(path: Path) -> IO[bytes]:
    compression = compression_of(path)
    return COMPRESSION_SUFFIXES[compression](path) if compression else path.open("rb")


def open_text(path: Path, newline: str) -> io.TextIOWrapper:
    """``path`` as decoded text, decompressed on the fly; ``newline`` as for :func:`open`."""
    raw = open_binary(path)
    try:
        head = raw.read(4)
        raw.seek(0)  # the codecs for a BOM consume it themselves
    except BaseException:
        raw.close()
        raise
    encoding, errors = _encoding_for(head)
    return io.TextIOWrapper(raw, encoding=encoding, errors=errors, newline=newline)


@dataclass(frozen=True)
class LongLine:
    """A line over the limit, skipped unread: its length and how many double quotes it held."""

    size: int
    quotes: int


def bounded_lines(stream: IO[str], limit: int, ends: tuple[str, ...] = ("\n",)) -> Iterator[str | LongLine]:
    """The lines of ``stream``; one longer than ``limit`` characters is skipped in pieces and stands as a LongLine.

    ``ends`` are the line ends the stream was opened to split on (``\n`` only, or also ``\r`` with ``newline=""``).
    """
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(ends):
            yield line
            continue
        size, quotes = len(line), line.count('"')
        while not line.endswith(ends):
            line = stream.readline(_SKIP_CHUNK)
            if not line:
                break
            size += len(line)
            quotes += line.count('"')
        yield LongLine(size, quotes)
