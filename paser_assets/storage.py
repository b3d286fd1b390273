"""DuckDB storage: bounded waits for the file lock, atomic table replacement, content hashes.

DuckDB lets one process hold a database file read-write. A run that finds the file locked waits
up to ``lock_timeout_s`` and then fails with a message that names the process holding the lock,
instead of DuckDB's bare ``IOException``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

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
        "'Querying while runs go on' in the README."
    )


def is_lock_error(error: Exception) -> bool:
    text = str(error).lower()
    return "lock" in text and ("conflicting" in text or "could not set lock" in text)


def connect(database: str, *, read_only: bool = False, lock_timeout_s: float = 30.0) -> duckdb.DuckDBPyConnection:
    """Open ``database``, waiting at most ``lock_timeout_s`` for another process's lock to go."""
    if database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    delay = 0.05
    while True:
        try:
            return duckdb.connect(database, read_only=read_only, config={"custom_user_agent": "paser-assets"})
        except (duckdb.IOException, duckdb.ConnectionException) as error:
            if not is_lock_error(error):
                raise
            waited = time.monotonic() - start
            if waited >= lock_timeout_s:
                raise DatabaseLockedError(_lock_message(database, error, waited)) from None
            time.sleep(min(delay, max(lock_timeout_s - waited, 0.01)))
            delay = min(delay * 2, 1.0)


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """Run a block in one transaction: all of its writes land, or none do."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _catalog(conn: duckdb.DuckDBPyConnection) -> str:
    """The attached database's name, quoted for use inside double quotes."""
    return str(conn.execute("SELECT current_database()").fetchall()[0][0]).replace('"', '""')


def qualified_schema(conn: duckdb.DuckDBPyConnection, schema: str) -> str:
    return f'"{_catalog(conn)}"."{validate_identifier(schema, "schema name")}"'


def qualified(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> str:
    """``"catalog"."schema"."table"``: the catalog is spelled out because DuckDB names it after the
    file, so in ``paser.duckdb`` the two-part name ``paser.table`` is ambiguous."""
    catalog = _catalog(conn)
    return f'"{catalog}"."{validate_identifier(schema, "schema name")}"."{validate_identifier(table, "table name")}"'


def to_arrow(frame: pd.DataFrame) -> pa.Table:
    """Arrow table for ``frame``; columns of equal-length numpy vectors become fixed-size float32 arrays."""
    arrays = []
    for name in frame.columns:
        column = frame[name]
        if len(column) and isinstance(column.iloc[0], np.ndarray):
            matrix = np.stack(column.to_list()).astype(np.float32)
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), matrix.shape[1]))
        elif not len(column) and column.dtype == object:
            arrays.append(pa.array([], type=pa.string()))  # an empty text column, not a NULL-typed one
        else:
            arrays.append(pa.array(column, from_pandas=True))
    return pa.Table.from_arrays(arrays, names=[str(c) for c in frame.columns])


def _fault_point(table: str) -> None:
    """Crash-safety tests set PASER_FAULT_PAUSE=<table> to freeze a run in the middle of writing that table
    (inside its transaction), announce it on stderr, and kill the process there with SIGKILL."""
    if os.environ.get("PASER_FAULT_PAUSE") == table:
        print(f"PASER_FAULT_PAUSE writing {table}", file=sys.stderr, flush=True)
        time.sleep(3600)


def replace_table(conn: duckdb.DuckDBPyConnection, schema: str, table: str, data: pd.DataFrame | pa.Table) -> None:
    """Replace ``schema.table`` with ``data``. Call inside :func:`transaction` to make it atomic."""
    arrow = data if isinstance(data, pa.Table) else to_arrow(data)
    catalog = _catalog(conn)
    conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{catalog}"."{validate_identifier(schema, "schema name")}"')
    view = f"_paser_incoming_{table}"
    conn.register(view, arrow)
    try:
        conn.execute(f"CREATE OR REPLACE TABLE {qualified(conn, schema, table)} AS SELECT * FROM {view}")
        _fault_point(table)
    finally:
        conn.unregister(view)


def replace_partition(
    conn: duckdb.DuckDBPyConnection, schema: str, table: str, where: dict[str, object], data: pd.DataFrame
) -> None:
    """Replace the rows of ``schema.table`` matching ``where`` (column -> value, e.g. {"variant": "w50"}) with
    ``data``; other rows stay as they are, byte for byte. ``data`` must carry those values. Call inside
    :func:`transaction`."""
    for name, expected in where.items():
        if name not in data.columns or not (data[name] == expected).all():
            raise ValueError(f"every row written to {table} for {name}={expected!r} must carry that value")
    if not table_exists(conn, schema, table):
        replace_table(conn, schema, table, data)
        return
    target = qualified(conn, schema, table)
    existing = [row[0] for row in conn.execute(f"DESCRIBE {target}").fetchall()]
    if existing != [str(c) for c in data.columns]:
        raise RuntimeError(
            f"{schema}.{table} has columns {existing}, but this version writes {list(data.columns)}: "
            f"drop the table (DROP TABLE {schema}.{table}) and materialize its asset again"
        )
    condition = " AND ".join(f'"{validate_identifier(name, "column name")}" = ?' for name in where)
    conn.execute(f"DELETE FROM {target} WHERE {condition}", list(where.values()))
    if len(data):
        view = f"_paser_partition_{table}"
        conn.register(view, to_arrow(data))
        try:
            conn.execute(f"INSERT INTO {target} SELECT * FROM {view}")
        finally:
            conn.unregister(view)
    _fault_point(table)


def append_rows(conn: duckdb.DuckDBPyConnection, schema: str, table: str, data: pd.DataFrame) -> None:
    """Append ``data`` to ``schema.table``, creating the table on first use."""
    if not table_exists(conn, schema, table):
        replace_table(conn, schema, table, data)
        return
    view = f"_paser_appending_{table}"
    conn.register(view, to_arrow(data))
    try:
        conn.execute(f"INSERT INTO {qualified(conn, schema, table)} SELECT * FROM {view}")
        _fault_point(table)
    finally:
        conn.unregister(view)


def table_exists(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    rows = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = ? AND table_name = ?",
        [schema, table],
    ).fetchall()
    return bool(rows[0][0])


def read_table(conn: duckdb.DuckDBPyConnection, schema: str, table: str, columns: str = "*") -> pd.DataFrame:
    if not table_exists(conn, schema, table):
        raise LookupError(f"table {schema}.{table} does not exist yet: materialize the asset that writes it first")
    return conn.execute(f"SELECT {columns} FROM {qualified(conn, schema, table)}").df()


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
        else:
            digest.update(pd.util.hash_pandas_object(column, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:24]
