"""`paser <args>` with a pause inside one table's write, or between the files of the selection export, for
the crash-safety tests to kill the run there.

    python tests/fault_injection.py <table> materialize
    python tests/fault_injection.py export:<format> materialize
    python tests/fault_injection.py nospace:<table> materialize

wraps the storage writes so that, once the write of ``<table>`` has run (its transaction still open), the
process announces it on stderr and sleeps; the test then kills it with SIGKILL. ``export:json`` pauses the
same way once the export's JSON file is written, before its other files. ``nospace:<table>`` makes the
write of ``<table>`` meet a full disk instead: a genuine DuckDB "No space left on device" error, from a write
to /dev/full on the same connection, inside the write's transaction. The hook lives here, not in the package:
production code has no test switch.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from paser_assets import storage

WRITES = ("replace_table", "replace_partition", "append_rows")
EXPORT_TARGET = "export:"
NO_SPACE_TARGET = "nospace:"


def announcement(table: str) -> str:
    return f"fault injection: paused inside the write of {table}"


def _paused(write: Callable[..., None], table: str) -> Callable[..., None]:
    def paused_write(conn: Any, written: str, *args: Any, **kwargs: Any) -> None:
        write(conn, written, *args, **kwargs)
        if written == table:
            print(announcement(table), file=sys.stderr, flush=True)
            time.sleep(3600)

    return paused_write


def pause_inside_writes_of(table: str) -> None:
    """Make every storage write of ``table`` pause after writing, inside its transaction (assets call the
    writes as ``storage.<name>``, so replacing the module attributes reaches them all)."""
    storage.declared(table)  # a typo in a test must not silently never pause
    for name in WRITES:
        setattr(storage, name, _paused(getattr(storage, name), table))


def fill_the_disk(conn: Any) -> None:
    """What DuckDB raises when the disk under a file it writes is full, raised on ``conn``."""
    conn.execute("COPY (SELECT range AS n FROM range(100000)) TO '/dev/full' (FORMAT csv)")


def _out_of_space(write: Callable[..., None], table: str) -> Callable[..., None]:
    def full_write(conn: Any, written: str, *args: Any, **kwargs: Any) -> None:
        write(conn, written, *args, **kwargs)
        if written == table:
            fill_the_disk(conn)

    return full_write


def disk_full_inside_writes_of(table: str) -> dict[str, Callable[..., None]]:
    """The storage writes (name -> function) with every write of ``table`` meeting a full disk after writing,
    inside its transaction; set them on ``storage`` (the CLI below, or a test's monkeypatch)."""
    storage.declared(table)
    return {name: _out_of_space(getattr(storage, name), table) for name in WRITES}


def export_announcement(fmt: str) -> str:
    return f"fault injection: paused after writing the export's {fmt} file"


def pause_after_export_file(fmt: str) -> None:
    """Make the selection export pause once it has written its ``fmt`` file (the writers are looked up in
    ``EXPORT_WRITERS`` at each export, so replacing the entry reaches them)."""
    from paser_assets.assets import selection

    write = selection.EXPORT_WRITERS[fmt]  # a KeyError for a typo, rather than never pausing

    def paused_write(rows: Any, path: Any) -> None:
        write(rows, path)
        print(export_announcement(fmt), file=sys.stderr, flush=True)
        time.sleep(3600)

    selection.EXPORT_WRITERS[fmt] = paused_write


if __name__ == "__main__":
    target, *arguments = sys.argv[1:]
    if target.startswith(EXPORT_TARGET):
        pause_after_export_file(target.removeprefix(EXPORT_TARGET))
    elif target.startswith(NO_SPACE_TARGET):
        for name, write in disk_full_inside_writes_of(target.removeprefix(NO_SPACE_TARGET)).items():
            setattr(storage, name, write)
    else:
        pause_inside_writes_of(target)
    from paser_assets.cli import main

    sys.exit(main(arguments))
