"""DuckDB storage: bounded waits for the file lock, typed and atomic table writes, content hashes; and
folders of files published as one set.

DuckDB lets one process hold a database file read-write. A run that finds the file locked waits
up to ``lock_timeout_s`` and then fails with a message that names the process holding the lock,
instead of DuckDB's bare ``IOException``.

Every write names a table declared in :mod:`paser_assets.tables` and stores exactly its declared columns
and types, whatever the frame holds: DuckDB would otherwise infer types from the content, and a column of
only empty lists would become ``"NULL"[]``, which no later row with a value can be inserted into. Tables
are named bare: the connection's current schema (``USE``, see :func:`use_schema`) is the PASER schema.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from paser_assets.tables import TABLES, Table

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_PID = re.compile(r"PID (\d+)")


class DatabaseLockedError(RuntimeError):
    """The DuckDB file stayed locked by another process for longer than the configured wait."""


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Return ``name`` if it is a plain SQL identifier (letters, digits, underscore), else raise."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"invalid {what} {name!r}: use 1-63 letters, digits or underscores, not starting with a digit")
    return name


def _describe_process(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        cmdline = " ".join(raw.split())  # one line, also for `python -c` scripts
    except OSError:
        return f"PID {pid}"
    return f"PID {pid} ({cmdline[:160]})" if cmdline else f"PID {pid}"


def _lock_message(database: str, error: Exception, waited_s: float) -> str:
    match = _PID.search(str(error))
    holder = _describe_process(int(match.group(1))) if match else "another process"
    return (
        f"the DuckDB file {database} is locked by {holder}; waited {waited_s:.0f} s. "
        "Close that connection or let that process finish (a read-only connection blocks writers too), "
        "or raise PASER_DB_LOCK_TIMEOUT to wait longer. To query while runs go on, see "
        "'Querying while runs go on' in docs/sql.md."
    )


# How a full disk reads when the error is not an OSError with errno ENOSPC: DuckDB ('Could not write file
# "x.wal": No space left on device'), Arrow ('[errno 28] No space left on device'), safetensors ('os error 28').
_NO_SPACE = ("no space left on device", "errno 28", "os error 28", "database or disk is full")
_QUOTED_PATH = re.compile(r'\\?"(/[^"\\]+)\\?"')  # DuckDB quotes the file, inside JSON: \"/x/y.wal\"


def disk_full(error: BaseException, place: str | Path | None = None) -> bool:
    """Whether ``error``, or an error it was raised from or while handling, is a full disk. SQLite reports some as
    a bare 'disk I/O error' (its journal could not be written): that counts when the disk of ``place`` is full."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        if any(text in str(current).lower() for text in _NO_SPACE):
            return True
        if place is not None and "disk i/o error" in str(current).lower() and _nearly_full(place):
            return True
        # The chain Python prints: the cause, else the error being handled unless `from None` hid it (an
        # error that already said what it is, such as a dg.Failure naming the full disk, ends the search).
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return False


def _nearly_full(place: str | Path) -> bool:
    """Less than 1 MiB free on the disk of ``place`` (or of its nearest existing parent)."""
    path = Path(place)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < 1 << 20
    except OSError:
        return False


def no_space_message(error: BaseException, place: str | Path, setting: str, outcome: str) -> str:
    """One line for a full disk under ``place``: what failed to be written, how to go on (``setting`` moves
    the place to another disk), and ``outcome``, what is left as it was."""
    named = _QUOTED_PATH.search(str(error))
    written = named.group(1) if named else getattr(error, "filename", None)
    detail = f" (writing {written})" if written and str(written) != str(place) else ""
    return (
        f"no space left on {place}{detail}: free space on that disk, or set {setting} to a place on another one; "
        f"{outcome}"
    )


def is_lock_error(error: Exception) -> bool:
    text = str(error).lower()
    return "lock" in text and ("conflicting" in text or "could not set lock" in text)


# The storage format new database files are created in. DuckDB 2 writes its own format (storage version 69)
# by default, which no DuckDB 1.x opens: not the `duckdb` shell of PyPI's duckdb-cli 1.5 (it reads 64-68),
# nor an older Python duckdb. A file keeps the format it was created in, so creating it in the format of
# DuckDB 1.4 (the long-term-support release, version 67) is enough for every later write to stay readable.
STORAGE_VERSION = "v1.4.0"


def _create_readable_by_duckdb_1(database: str) -> None:
    """Create the empty file ``database`` in :data:`STORAGE_VERSION`; DuckDB 1.x needs nothing done."""
    if int(duckdb.__version__.split(".")[0]) < 2:
        return  # DuckDB 1.x writes a format that every 1.x release reads by default
    with duckdb.connect() as conn:
        literal = "'" + database.replace("'", "''") + "'"  # ATTACH takes no parameter for the path
        conn.execute(f"ATTACH {literal} AS new_file (STORAGE_VERSION '{STORAGE_VERSION}')")
        conn.execute("DETACH new_file")


def connect(database: str, *, read_only: bool = False, lock_timeout_s: float = 30.0) -> duckdb.DuckDBPyConnection:
    """Open ``database``, waiting at most ``lock_timeout_s`` for another process's lock to go; a new file is
    created in :data:`STORAGE_VERSION`."""
    if database != ":memory:" and not read_only:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    delay = 0.05
    while True:
        try:
            if database != ":memory:" and not read_only and not Path(database).exists():
                _create_readable_by_duckdb_1(database)
            return duckdb.connect(database, read_only=read_only, config={"custom_user_agent": "paser-assets"})
        except (duckdb.IOException, duckdb.ConnectionException) as error:
            if not is_lock_error(error):
                raise
            waited = time.monotonic() - start
            if waited >= lock_timeout_s:
                raise DatabaseLockedError(_lock_message(database, error, waited)) from None
            time.sleep(min(delay, max(lock_timeout_s - waited, 0.01)))
            delay = min(delay * 2, 1.0)


class SchemaNotFoundError(LookupError):
    """A read-only connection found no schema of that name in the file: nothing was materialized there yet."""


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run a block in one transaction: all of its writes land, or none do."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    except BaseException as error:
        try:
            conn.execute("ROLLBACK")
        except duckdb.Error as rollback_error:
            # The block's error is what the caller must see; a failed rollback only adds to it.
            error.add_note(f"(rolling back failed too: {rollback_error})")
        raise
    conn.execute("COMMIT")


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def use_schema(conn: duckdb.DuckDBPyConnection, schema: str, *, create: bool) -> None:
    """Make ``schema`` of the attached file the connection's current schema, so SQL names tables bare.

    The catalog is spelled out and quoted because DuckDB names it after the file: in ``paser.duckdb`` the
    two-part name ``paser.x`` is ambiguous. Without ``create``, a missing schema is a
    :class:`SchemaNotFoundError` rather than silently reading another schema's tables of the same names.
    """
    validate_identifier(schema, "schema name")
    catalog = str(conn.execute("SELECT current_database()").fetchall()[0][0])
    if not _schema_exists(conn, schema):
        if not create:
            database = conn.execute("SELECT path FROM duckdb_databases() WHERE database_name = ?", [catalog])
            path = (database.fetchall() or [(catalog,)])[0][0]
            raise SchemaNotFoundError(
                f"the DuckDB file {path} has no schema {schema!r} yet: materialize the assets first "
                "(`paser materialize`), or check PASER_DB and PASER_SCHEMA"
            )
        try:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quoted(catalog)}.{_quoted(schema)}")
        except duckdb.TransactionException:
            if not _schema_exists(conn, schema):  # else another connection of this process created it first
                raise
    conn.execute(f"USE {_quoted(catalog)}.{_quoted(schema)}")


def _schema_exists(conn: duckdb.DuckDBPyConnection, schema: str) -> bool:
    rows = conn.execute(
        "SELECT count(*) FROM information_schema.schemata WHERE catalog_name = current_database() AND schema_name = ?",
        [schema],
    ).fetchall()
    return bool(rows[0][0])


def declared(table: str) -> Table:
    """The declaration of ``table`` in :mod:`paser_assets.tables`; every write goes through one."""
    validate_identifier(table, "table name")
    if table not in TABLES:
        raise ValueError(f"table {table!r} is not declared in paser_assets/tables.py; declare its columns there")
    return TABLES[table]


def _list_of_floats(sql_type: str) -> bool:
    return sql_type in ("FLOAT[]", "DOUBLE[]")


def to_arrow(frame: pd.DataFrame, table: Table | None = None) -> pa.Table:
    """Arrow table for ``frame``. Equal-length numpy float vectors become one flat float32 buffer (fast for
    100k embeddings); a declared list column gets a variable-size list, anything else a fixed-size one.
    Other columns keep Arrow's inference: the SQL casts of the typed insert make them the declared types."""
    types = table.types if table is not None else {}
    arrays = []
    for name in frame.columns:
        column = frame[name]
        vectors = _float_matrix(column)
        if vectors is not None:
            values = pa.array(vectors.ravel())
            if _list_of_floats(types.get(str(name), "")):
                offsets = np.arange(len(vectors) + 1, dtype=np.int64) * vectors.shape[1]
                if vectors.size < 2**31:
                    arrays.append(pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values))
                else:
                    arrays.append(pa.LargeListArray.from_arrays(pa.array(offsets), values))
            else:
                arrays.append(pa.FixedSizeListArray.from_arrays(values, vectors.shape[1]))
        elif not len(column) and column.dtype == object:
            arrays.append(pa.array([], type=pa.string()))  # an empty text column, not a NULL-typed one
        else:
            arrays.append(pa.array(column, from_pandas=True))
    return pa.Table.from_arrays(arrays, names=[str(c) for c in frame.columns])


def _float_matrix(column: pd.Series) -> np.ndarray | None:
    """The column as an (n, d) float32 matrix when every value is a numpy float vector of one length."""
    if not len(column) or not isinstance(column.iloc[0], np.ndarray) or column.iloc[0].dtype.kind != "f":
        return None
    try:
        matrix = np.stack(column.to_list())
    except (ValueError, TypeError):  # ragged vectors or a None among them: the generic conversion copes
        return None
    return matrix.astype(np.float32, copy=False) if matrix.ndim == 2 else None


def _incoming(table: Table, data: pd.DataFrame | pa.Table) -> pa.Table:
    """``data`` as Arrow, refused unless its columns are exactly the declared ones."""
    names = [str(c) for c in data.column_names] if isinstance(data, pa.Table) else [str(c) for c in data.columns]
    declared_names = list(table.columns)
    missing = [c for c in declared_names if c not in names]
    extra = [c for c in names if c not in declared_names]
    duplicated = sorted({c for c in names if names.count(c) > 1})
    if missing or extra or duplicated:
        problems = [
            f"{label} {columns}"
            for label, columns in (("lacks", missing), ("has undeclared", extra), ("repeats", duplicated))
            if columns
        ]
        raise ValueError(
            f"cannot write table {table.name}: the data {' and '.join(problems)} column(s); "
            f"paser_assets/tables.py declares {declared_names}"
        )
    return data if isinstance(data, pa.Table) else to_arrow(data, table)


def _create_sql(table: Table, name: str, *, replace: bool = False) -> str:
    columns = ", ".join(f"{_quoted(c)} {sql_type}" for c, sql_type in table.types.items())
    return f"CREATE {'OR REPLACE ' if replace else ''}TABLE {_quoted(name)} ({columns})"


@contextmanager
def _registered(conn: duckdb.DuckDBPyConnection, arrow: pa.Table) -> Iterator[str]:
    """``arrow`` as a view of a unique name for the block."""
    view = f"_paser_incoming_{uuid.uuid4().hex}"
    conn.register(view, arrow)
    try:
        yield view
    except BaseException:
        # In an aborted transaction unregister fails too; that second error must not hide the first.
        with suppress(duckdb.Error):
            conn.unregister(view)
        raise
    conn.unregister(view)


def _insert(conn: duckdb.DuckDBPyConnection, table: Table, arrow: pa.Table) -> None:
    """Insert ``arrow`` with an explicit cast of every column to its declared type."""
    if not arrow.num_rows:
        return
    names = ", ".join(_quoted(c) for c in table.columns)
    casts = ", ".join(f"CAST({_quoted(c)} AS {sql_type})" for c, sql_type in table.types.items())
    with _registered(conn, arrow) as view:
        try:
            conn.execute(f"INSERT INTO {_quoted(table.name)} ({names}) SELECT {casts} FROM {_quoted(view)}")
        except duckdb.Error as error:
            incoming = ", ".join(f"{field.name} {field.type}" for field in arrow.schema)
            error.add_note(f"while writing {arrow.num_rows} rows ({incoming}) to table {table.name}")
            raise


def existing_columns(conn: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """Column name -> SQL type of ``table`` in the connection's current schema (empty when it does not exist)."""
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = current_database() "
        "AND table_schema = current_schema() AND table_name = ? ORDER BY ordinal_position",
        [table],
    ).fetchall()
    return dict(rows)


def _conform(conn: duckdb.DuckDBPyConnection, table: Table) -> None:
    """Create ``table`` as declared, or migrate an existing one whose columns or types differ (left by an
    older version) to the declaration, keeping every row. Call inside :func:`transaction`: the migration
    then lands with the write that needed it, or not at all."""
    existing = existing_columns(conn, table.name)
    if not existing:
        conn.execute(_create_sql(table, table.name))
        return
    if existing == table.types:
        return
    target = _quoted(table.name)
    for column, sql_type in table.types.items():
        if column not in existing or existing[column] == sql_type:
            continue
        source = _quoted(column)
        try:
            count, example = conn.execute(
                f"SELECT count(*), any_value(CAST({source} AS VARCHAR)) FROM {target} "
                f"WHERE {source} IS NOT NULL AND TRY_CAST({source} AS {sql_type}) IS NULL"
            ).fetchall()[0]
            problem = f"{count} of its values (e.g. {example!r}) cannot be cast" if count else ""
        except duckdb.Error as error:  # no cast between the two types at all
            problem = f"DuckDB cannot cast it ({str(error).splitlines()[0]})"
        if problem:
            writers = " or ".join(table.writers) or "the variant registry"
            raise ValueError(
                f"table {table.name} was written by an older version: its column {column} is {existing[column]}, "
                f"declared {sql_type}, and {problem}; no row was changed. Fix those values with SQL "
                f"(UPDATE {table.name} SET {column} = ...), or drop the table (DROP TABLE {table.name}) and "
                f"materialize {writers} again"
            )
    staging = f"_paser_migrating_{table.name}"
    select = ", ".join(
        f"CAST({_quoted(c)} AS {sql_type})" if c in existing else f"CAST(NULL AS {sql_type})"
        for c, sql_type in table.types.items()
    )
    conn.execute(_create_sql(table, staging, replace=True))
    conn.execute(f"INSERT INTO {_quoted(staging)} SELECT {select} FROM {target}")
    conn.execute(f"DROP TABLE {target}")
    conn.execute(f"ALTER TABLE {_quoted(staging)} RENAME TO {target}")


def replace_table(conn: duckdb.DuckDBPyConnection, table: str, data: pd.DataFrame | pa.Table) -> None:
    """Replace ``table`` (in the connection's current schema) with ``data``, as declared in
    :mod:`paser_assets.tables`. Call inside :func:`transaction` to make it atomic."""
    spec = declared(table)
    arrow = _incoming(spec, data)
    conn.execute(_create_sql(spec, spec.name, replace=True))
    _insert(conn, spec, arrow)


def replace_partition(
    conn: duckdb.DuckDBPyConnection, table: str, where: dict[str, object], data: pd.DataFrame
) -> None:
    """Replace the rows of ``table`` matching ``where`` (column -> value, e.g. {"variant": "w50"}) with
    ``data``; other rows stay as they are, byte for byte. ``data`` must carry those values. Call inside
    :func:`transaction`."""
    spec = declared(table)
    for name, expected in where.items():
        if name not in spec.columns:
            raise ValueError(f"table {table} has no column {name!r} to replace a partition by")
        if name not in data.columns or not (data[name] == expected).all():
            raise ValueError(f"every row written to {table} for {name}={expected!r} must carry that value")
    arrow = _incoming(spec, data)
    _conform(conn, spec)
    condition = " AND ".join(f"{_quoted(name)} = ?" for name in where)
    conn.execute(f"DELETE FROM {_quoted(spec.name)} WHERE {condition}", list(where.values()))
    _insert(conn, spec, arrow)


def append_rows(conn: duckdb.DuckDBPyConnection, table: str, data: pd.DataFrame | pa.Table) -> None:
    """Append ``data`` to ``table``, creating it as declared on first use."""
    spec = declared(table)
    arrow = _incoming(spec, data)
    _conform(conn, spec)
    _insert(conn, spec, arrow)


def table_exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether ``table`` (or a view of that name) exists in the connection's current schema."""
    rows = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = current_schema() AND table_name = ?",
        [table],
    ).fetchall()
    return bool(rows[0][0])


def read_table(conn: duckdb.DuckDBPyConnection, table: str, columns: str = "*") -> pd.DataFrame:
    if not table_exists(conn, validate_identifier(table, "table name")):
        raise LookupError(f"table {table} does not exist yet: materialize the asset that writes it first")
    return conn.execute(f"SELECT {columns} FROM {_quoted(table)}").df()


HASH_SLICE = 1 << 16


def content_hash(frame: pd.DataFrame) -> str:
    """A hash of a table's column names and values, stable across processes (the Dagster data version)."""
    digest = hashlib.sha256()
    digest.update(repr([str(c) for c in frame.columns]).encode())
    digest.update(str(len(frame)).encode())
    for name in frame.columns:
        column = frame[name]
        first = column.iloc[0] if len(column) else None
        if isinstance(first, np.ndarray) and first.dtype.kind == "f":
            digest.update(np.ascontiguousarray(np.stack(column.to_list()), dtype=np.float32).tobytes())
        elif isinstance(first, (list, tuple, np.ndarray)):
            plain = [None if value is None else [str(item) for item in value] for value in column]
            digest.update(json.dumps(plain).encode())
        else:  # in slices: the same digest (each value hashes alone), without a hash array of the whole column
            for start in range(0, len(column), HASH_SLICE):
                piece = column.iloc[start : start + HASH_SLICE]
                digest.update(pd.util.hash_pandas_object(piece, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:24]


def write_atomically(path: Path, write: Callable[[Path], object], mode: int | None = None) -> None:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it to ``path``: a reader sees the
    old file or the new one, never half of one. ``mode``: the file's permissions (mkstemp makes it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- folders published as one set --------------------------------------------------------------------------
#
# Files that must change together (the JSON, JSONL and Parquet of an export; the files of a checkpoint) are
# written into a staging folder beside their folder, which then takes its place in one rename: a reader, or
# a run killed at any point, sees the previous set or the new one, never some files of each.

_STAGING_SUFFIX = ".partial"
_RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths atomically (renameat2, Linux 3.15+)
_AT_FDCWD = -100


def staging_folder_beside(target: Path) -> Path:
    """A new empty folder beside ``target`` to write the new set into, named after ``target`` and this process
    (so a later run can tell a leftover of a killed process from a folder another run is still writing)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=_STAGING_SUFFIX, dir=target.parent))


def remove_leftover_staging(target: Path) -> list[Path]:
    """Delete the staging folders of ``target`` left by processes that died before publishing; returns them."""
    removed = []
    for path in target.parent.glob(f".{target.name}.*{_STAGING_SUFFIX}"):
        pid = path.name.removeprefix(f".{target.name}.").split(".", 1)[0]
        if pid.isdigit() and not _process_alive(int(pid)) and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _sync(path: Path) -> None:
    """Flush a file or folder to disk, so that after a power cut the rename is not found without its data."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    try:
        handle = os.open(path, flags)
    except OSError:  # a file system that cannot open folders: the rename is atomic all the same
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _exchange(staging: Path, target: Path) -> bool:
    """Swap ``staging`` and ``target`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # a C library older than glibc 2.28
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(staging), _AT_FDCWD, os.fsencode(target), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(target))


def replace_folder(staging: Path, target: Path) -> None:
    """Put the fully written ``staging`` folder in the place of ``target`` (which may not exist yet), and delete
    the set it replaces. Where the swap cannot be one step, ``target`` is moved aside first: a crash between
    the two renames leaves no folder at ``target`` for a moment, but never a mixed one."""
    for file in staging.rglob("*"):
        if file.is_file():
            _sync(file)
    _sync(staging)
    if not os.path.lexists(target):
        os.replace(staging, target)
    elif _exchange(staging, target):
        _remove(staging)  # it holds the previous set now
    else:
        retired = staging_folder_beside(target)
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        shutil.rmtree(retired)
    _sync(target.parent)


def _remove(path: Path) -> None:
    """Delete a folder, or only the link when it is a symbolic link (what it points at is not ours)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)
