"""Dagster resources: the PASER settings (:mod:`paser_assets.settings`) and the DuckDB database.

``PaserConfig.from_env()`` and ``PaserDuckDB.from_env()`` read the ``PASER_*`` environment variables
documented in docs/reference.md; users who write their own ``Definitions`` construct the same resources in Python.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import ValidationError, field_validator

from paser_assets import storage
from paser_assets.settings import (
    PaserConfig,
    SettingError,
    SettingInfo,
    describe_validation_error,
    parse_field_map,
    setting,
)

DEFAULT_DB = "paser.duckdb"
DEFAULT_SCHEMA = "paser"
# Bytes 8-11 of every DuckDB database file.
DUCKDB_MAGIC = b"DUCK"

__all__ = ["DEFAULT_DB", "DEFAULT_SCHEMA", "PaserConfig", "PaserDuckDB", "SettingError", "parse_field_map"]


class PaserDuckDB(DuckDBResource):
    """The DuckDB file that holds the ``paser`` schema, with a bounded wait for its lock.

    DuckDB allows one read-write process per file. Instead of failing at once (or after a long
    silent back-off), a connection waits up to ``lock_timeout_s`` and then raises an error that
    names the process holding the lock.
    """

    database: str = setting(DEFAULT_DB, "Path to the DuckDB file.", affects="runtime", env="PASER_DB", min_length=1)
    schema_name: str = setting(DEFAULT_SCHEMA, "Schema of the PASER tables.", affects="runtime", env="PASER_SCHEMA")
    lock_timeout_s: float = setting(
        60.0,
        "Seconds to wait for another process's lock.",
        affects="runtime",
        env="PASER_DB_LOCK_TIMEOUT",
        ge=0.0,
        allow_inf_nan=False,
    )

    @field_validator("database")
    @classmethod
    def _database_file(cls, value: str) -> str:
        """Checked before any work: a folder, a file of another kind or a place that cannot be written."""
        if value == ":memory:":
            return value
        path = Path(value).expanduser()
        if path.is_dir():
            raise ValueError(f"{value} is a folder; name a file such as {path / 'paser.duckdb'}")
        if path.is_file():
            with path.open("rb") as handle:
                header = handle.read(16)
            if header[8:12] != DUCKDB_MAGIC:
                kind = " (it is an SQLite database)" if header.startswith(b"SQLite format 3") else ""
                kind = " (it is empty)" if not header else kind
                raise ValueError(f"{value} is not a DuckDB database{kind}; choose another file or delete it")
        existing = next((p for p in (path.parent, *path.parent.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise ValueError(f"{value} cannot be created: {existing} is a file, not a folder")
        if existing is not None and not path.exists() and not os.access(existing, os.W_OK):
            raise ValueError(f"{value} cannot be created: {existing} is not writable")
        return value

    @field_validator("schema_name")
    @classmethod
    def _schema(cls, value: str) -> str:
        return storage.validate_identifier(value, "schema name")

    @classmethod
    def environment_names(cls) -> dict[str, str]:
        """Field -> environment variable, from the field declarations."""
        return {name: info.json_schema_extra["env"] for name, info in cls.model_fields.items()
                if isinstance(info.json_schema_extra, dict) and "env" in info.json_schema_extra}  # fmt: skip

    @classmethod
    def documented_settings(cls) -> dict[str, tuple[str, Any, str]]:
        """Field -> (environment variable, default, help), for `paser settings` and docs/reference.md."""
        names = cls.environment_names()
        return {name: (names[name], cls.model_fields[name].default, cls.model_fields[name].description or "")
                for name in names}  # fmt: skip

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PaserDuckDB:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, variable in cls.environment_names().items():
            raw = env.get(variable, "")
            if raw:  # not stripped: a schema name with spaces or a newline is refused, not repaired
                values[name] = raw
        try:
            return cls(**values)
        except ValidationError as error:
            fields = [
                SettingInfo(name, name, None, variable, "runtime", cls.model_fields[name])
                for name, variable in cls.environment_names().items()
            ]
            raise SettingError(describe_validation_error(error, values, fields)) from None

    @contextmanager
    def get_connection(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection whose current schema is ``schema_name`` (created first unless ``read_only``), so
        SQL names the tables bare. Read-only, a file without that schema raises
        :class:`storage.SchemaNotFoundError` (a ``LookupError``) naming the file and the schema."""
        try:
            conn = storage.connect(self.database, read_only=read_only, lock_timeout_s=self.lock_timeout_s)
        except storage.DatabaseLockedError as error:
            # A deliberate failure with its own clear message, reported without a stack trace.
            raise dg.Failure(description=str(error)) from None
        except (duckdb.Error, OSError) as error:
            self._fail_if_disk_full(error)
            raise
        try:
            storage.use_schema(conn, self.schema_name, create=not read_only)
            yield conn
        except duckdb.Error as error:
            # A write's transaction is rolled back by now (storage.transaction, inside this block).
            self._fail_if_disk_full(error)
            raise
        finally:
            conn.close()

    def _fail_if_disk_full(self, error: BaseException) -> None:
        """DuckDB reports a full disk as an IO or transaction error about a file (the WAL, a temporary file);
        say what it is, where, and that the database is unharmed."""
        # Worded for reads as well: a large query spills to a temporary file beside the database.
        outcome = "any unfinished write was rolled back, the database is as it was before it"
        _fail_if_disk_full(error, self.database, "PASER_DB", outcome)

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside one transaction: every table written in the block lands, or none does."""
        with self.get_connection() as conn, storage.transaction(conn):
            yield conn

    def read(self, table: str, columns: str = "*"):
        with self.get_connection() as conn:
            return storage.read_table(conn, table, columns)


@contextmanager
def named_when_disk_full(place: str | Path, setting: str, outcome: str) -> Iterator[None]:
    """Turn a full disk under ``place`` (a file or folder that ``setting`` chooses) met inside the block into a
    one-line ``dg.Failure`` that says so, instead of the writer's own error (often a bare OSError traceback or
    a serialiser's message). ``outcome`` says what is left as it was."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as error:
        _fail_if_disk_full(error, place, setting, outcome)
        raise


def _fail_if_disk_full(error: BaseException, place: str | Path, setting: str, outcome: str) -> None:
    """Raise the one-line ``dg.Failure`` of :func:`storage.no_space_message` when ``error`` is a full disk."""
    if storage.disk_full(error):
        raise dg.Failure(description=storage.no_space_message(error, place, setting, outcome)) from None
