"""Which files a dataset path stands for, and which files below a folder are not read, each with its reason.

A folder is read recursively in sorted order. Not read: hidden files and folders (a leading dot), links
to folders, the plugin's own outputs (the DuckDB file and its write-ahead log, model cache, checkpoints,
adapters and exports, recognised by what they hold, plus any path the caller excludes), and files that
are not data by their suffix. Every skipped path is returned with the reason and logged.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from paser_assets.locations import EXPORT_FOLDER, MODEL_CACHE_FOLDER
from paser_assets.pool.rows import PoolInputError, display_name
from paser_assets.pool.textio import COMPRESSION_SUFFIXES, compression_of, format_suffix

logger = logging.getLogger("paser_assets.pool")

DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet", ".csv", ".tsv")
# Text formats are read as a stream, so they may be compressed; Parquet needs random access.
COMPRESSIBLE_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tbz", ".tbz2", ".txz", ".7z", ".rar")
OTHER_COMPRESSION_SUFFIXES = (".zst", ".zstd", ".lz4", ".br", ".z", ".lzma", ".snappy", ".sz")

# Default folder names of the model cache and the export folder; renamed ones are found by content.
OUTPUT_FOLDER_NAMES = {MODEL_CACHE_FOLDER: "the plugin's model cache", EXPORT_FOLDER: "the plugin's export folder"}
RUN_RECORDS = {
    "paser_pruning.json": "a pruned model written by the plugin",
    "paser_training.json": "an adapter trained by the plugin",
}
CHECKPOINT_CONFIGS = ("config.json", "adapter_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")
EXPORT_FILES = frozenset({"selection.json", "selection.jsonl", "selection.parquet"})
# The original model's hidden states that scoring caches as <cache>/original_states/<key>/part-*.parquet.
STATE_COLUMNS = frozenset({"sample_id", "tokens", "width", "dtype", "hidden"})
_STATE_PART = re.compile(r"part-\d+(-\d+)?\.parquet")
_DUCKDB_MAGIC = b"DUCK"  # bytes 8-11 of every DuckDB database file

# What kind of skip an entry is; ``refused`` and ``unreadable`` are logged as warnings.
HIDDEN, PLUGIN_OUTPUT, NOT_DATA, REFUSED, UNREADABLE = "hidden", "plugin_output", "not_data", "refused", "unreadable"


@dataclass(frozen=True)
class SkippedPath:
    """A file or folder (path ending in ``/``) below the dataset folder that was not read, and why."""

    path: str
    reason: str
    kind: str


@dataclass
class InputFiles:
    """The files to read, in order, and what was passed over."""

    root: Path | None  # the folder the sources are relative to; None for a single file
    files: list[Path]
    skipped: list[SkippedPath] = field(default_factory=list)

    def source(self, file: Path) -> str:
        return display_name(str(file.relative_to(self.root)) if self.root is not None else file.name)


def supported_formats() -> str:
    compressions = ", ".join(COMPRESSION_SUFFIXES)
    return f"{', '.join(DATA_SUFFIXES)} (the text formats also compressed as {compressions})"


def file_refusal(path: Path) -> tuple[str, str] | None:
    """(kind, reason) why a file with this name is not read as data, or None when it is."""
    suffix = path.suffix.lower()
    compression = compression_of(path)
    inner = format_suffix(path)
    readable = inner in COMPRESSIBLE_SUFFIXES if compression else suffix in DATA_SUFFIXES
    if readable:
        return None
    if compression and inner == ".parquet":
        return REFUSED, f"compressed Parquet is not read: Parquet compresses inside the file; decompress {path.name}"
    if suffix in ARCHIVE_SUFFIXES or (compression and inner == ".tar"):
        return REFUSED, "an archive is not read: unpack it into the folder"
    if suffix in OTHER_COMPRESSION_SUFFIXES:
        return REFUSED, f"{suffix} compression is not read: decompress it, or use {', '.join(COMPRESSION_SUFFIXES)}"
    if compression:
        return NOT_DATA, f"a compressed {inner or 'file without extension'} is not a data format"
    return NOT_DATA, f"not a data file (extension {suffix!r})" if suffix else "not a data file (no extension)"


# What a path that exists is when it is neither a regular file nor a folder, by its stat mode.
_SPECIAL_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(path: Path) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a folder ("a character device", "a FIFO
    (named pipe)", ...); None for a file, a folder, or nothing. Judged from ``stat`` (links followed), never by
    opening it: opening a FIFO blocks until a writer comes, and a device can stream forever."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "a special file")


def missing_path_error(path: Path, name: str | None = None) -> PoolInputError:
    """The refusal of a dataset path that is neither a file nor a folder, named ``name`` (default: the path): what
    it is when it exists (a device, a FIFO, a socket) or is a broken link, else that there is no such file or
    folder."""
    name = str(path) if name is None else name
    kind = special_kind(path)
    if kind is not None:
        return PoolInputError(f"{name} is {kind}, not a file or folder of instruction data")
    if path.is_symlink() and not path.exists():
        target = os.readlink(path)
        return PoolInputError(f"{name} is a broken link (to {target}), not a file or folder of instruction data")
    return PoolInputError(f"{name}: no such file or folder")


def _is_regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _is_duckdb(path: Path) -> bool:
    if not _is_regular_file(path):  # never opened otherwise: a FIFO would block the walk
        return False
    try:
        with path.open("rb") as handle:
            return handle.read(12)[8:12] == _DUCKDB_MAGIC
    except OSError:
        return False


def _is_state_part(path: Path) -> bool:
    try:
        return STATE_COLUMNS <= set(pq.read_schema(path).names)  # the footer only
    except Exception:  # not readable as Parquet: the reader will say so
        return False


def _output_file_reason(path: Path) -> str | None:
    """Why ``path`` is one of the plugin's own output files, judged by its content."""
    if path.name.lower().endswith(".wal") and _is_duckdb(path.with_name(path.name[:-4])):
        return f"the write-ahead log of the DuckDB database {path.name[:-4]}"
    if _is_duckdb(path):
        return "a DuckDB database (the plugin's storage)"
    if path.suffix.lower() == ".parquet" and _is_state_part(path):
        return "hidden states of the original model cached by the plugin"
    return None


def _output_folder_reason(folder: Path, names: Iterable[str]) -> str | None:
    """Why a folder holding these entries is the plugin's output or a model, not data."""
    names = set(names)
    for record, what in RUN_RECORDS.items():
        if record in names:
            return f"{what} (it holds {record})"
    configs = [name for name in CHECKPOINT_CONFIGS if name in names]
    weights = any(name.lower().endswith(WEIGHT_SUFFIXES) for name in names)
    if configs and weights:
        return f"a model checkpoint ({configs[0]} with weights)"
    if EXPORT_FILES <= names:
        return "an export of a selection (selection.json, .jsonl and .parquet)"
    parts = sorted(name for name in names if _STATE_PART.fullmatch(name))
    if parts and _is_state_part(folder / parts[0]):
        return "hidden states of the original model cached by the plugin (part-*.parquet)"
    return None


class _Exclusions:
    """Paths the caller says are outputs (the DuckDB file, model cache, export folder), resolved once."""

    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths: dict[Path, str] = {}
        for path in paths:
            real = Path(os.path.realpath(Path(path).expanduser()))
            self.paths[real] = str(path)
            # DuckDB keeps its write-ahead log and spill folder beside the database file.
            for companion in (".wal", ".tmp"):
                self.paths.setdefault(real.with_name(real.name + companion), f"{path}{companion}")

    def reason(self, real: Path) -> str | None:
        given = self.paths.get(real)
        return None if given is None else f"excluded as one of the plugin's outputs ({given})"

    def covering(self, real: Path) -> str | None:
        """The reason when ``real`` is an excluded path or lies inside one."""
        for candidate in (real, *real.parents):
            reason = self.reason(candidate)
            if reason:
                return reason
        return None


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _folder_skip(path: Path, exclusions: _Exclusions) -> tuple[str, str] | None:
    name = path.name
    if name.startswith("."):
        return HIDDEN, "hidden folder"
    if path.is_symlink():
        return NOT_DATA, "a link to a folder (links to folders are not followed)"
    reason = exclusions.reason(_real(path))
    if reason:
        return PLUGIN_OUTPUT, reason
    if name in OUTPUT_FOLDER_NAMES:
        return PLUGIN_OUTPUT, f"{OUTPUT_FOLDER_NAMES[name]} (by its name)"
    if name.lower().endswith(".tmp") and _is_duckdb(path.with_name(name[:-4])):
        return PLUGIN_OUTPUT, f"the temporary folder of the DuckDB database {name[:-4]}"
    try:
        reason = _output_folder_reason(path, os.listdir(path))
    except OSError:
        return None  # the walk reports a folder it cannot list
    return None if reason is None else (PLUGIN_OUTPUT, reason)


def _file_skip(path: Path, exclusions: _Exclusions) -> tuple[str, str] | None:
    if path.name.startswith("."):
        return HIDDEN, "hidden file"
    reason = exclusions.reason(_real(path))
    if reason:
        return PLUGIN_OUTPUT, reason
    if not path.is_file():
        if path.is_symlink() and not path.exists():
            return UNREADABLE, "a broken link"
        kind = special_kind(path)
        return UNREADABLE, f"{kind}, not a regular file" if kind else "not a regular file"
    reason = _output_file_reason(path)
    if reason:
        return PLUGIN_OUTPUT, reason
    return file_refusal(path)


def _single_file(path: Path, exclusions: _Exclusions) -> InputFiles:
    reason = exclusions.covering(_real(path)) or _output_file_reason(path)
    if reason:
        raise PoolInputError(f"{path}: {reason}; it is not read as data")
    refusal = file_refusal(path)
    if refusal:
        raise PoolInputError(
            f"{path}: unsupported file type {path.suffix!r} ({refusal[1]}); use one of {supported_formats()}"
        )
    return InputFiles(None, [path])


def _walk(root: Path, exclusions: _Exclusions) -> InputFiles:
    listing = InputFiles(root, [])

    def skip(path: Path, kind: str, reason: str, folder: bool = False) -> None:
        relative = display_name(str(path.relative_to(root))) + ("/" if folder else "")
        listing.skipped.append(SkippedPath(relative, reason, kind))

    def unlistable(error: OSError) -> None:
        skip(Path(error.filename), UNREADABLE, f"the folder cannot be listed: {error.strerror}", folder=True)

    for folder, subfolders, names in os.walk(root, onerror=unlistable):
        here = Path(folder)
        kept = []
        for name in sorted(subfolders):
            verdict = _folder_skip(here / name, exclusions)
            if verdict:
                skip(here / name, *verdict, folder=True)
            else:
                kept.append(name)
        subfolders[:] = kept  # os.walk descends only into what is left here
        for name in sorted(names):
            verdict = _file_skip(here / name, exclusions)
            if verdict:
                skip(here / name, *verdict)
            else:
                listing.files.append(here / name)
    # The order of sorted() paths: part by part, so that a folder's files come where its name sorts.
    listing.files.sort(key=lambda path: path.relative_to(root).parts)
    listing.skipped.sort(key=lambda entry: Path(entry.path).parts)
    return listing


def _check_root(root: Path, exclusions: _Exclusions) -> None:
    reason = exclusions.covering(_real(root))
    if reason is None:
        try:
            reason = _output_folder_reason(root, os.listdir(root))
        except OSError as error:
            raise PoolInputError(f"{root}: the folder cannot be listed: {error.strerror}") from None
    if reason:
        raise PoolInputError(f"{root}: the folder is {reason}, not data")


def log_skipped(root: Path, skipped: Sequence[SkippedPath]) -> None:
    for entry in skipped:
        level = logging.WARNING if entry.kind in (REFUSED, UNREADABLE) else logging.INFO
        logger.log(level, "pool input %s: not reading %s: %s", root, entry.path, entry.reason)


def list_inputs(path: Path, exclude: Sequence[str | Path] = ()) -> InputFiles:
    """The files a dataset path stands for: the file itself, or the data files below a folder."""
    exclusions = _Exclusions(exclude)
    if path.is_file():
        return _single_file(path, exclusions)
    if not path.is_dir():
        raise missing_path_error(path)
    _check_root(path, exclusions)
    listing = _walk(path, exclusions)
    log_skipped(path, listing.skipped)
    if not listing.files:
        first = f"; skipped {len(listing.skipped)}, e.g. {listing.skipped[0].path}: {listing.skipped[0].reason}"
        raise PoolInputError(
            f"{path}: the folder holds no {', '.join(DATA_SUFFIXES)} files" + (first if listing.skipped else "")
        )
    return listing
