"""Dagster resources: the PASER settings and the DuckDB database the assets write to.

``PaserConfig.from_env()`` and ``PaserDuckDB.from_env()`` read the ``PASER_*`` environment
variables documented in the README; users who write their own ``Definitions`` construct the same
resources in Python instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field, field_validator

from paser_assets import storage
from paser_assets.pool.demo import DEFAULT_DEMO_SIZE

DEFAULT_DB = "paser.duckdb"
DEFAULT_SCHEMA = "paser"
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class SettingError(ValueError):
    """A setting (environment variable or config field) has a value that cannot be used."""


def _env_int(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not an integer") from None


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingError(f"{name}={raw!r} is not a number") from None


def parse_field_map(raw: str) -> dict[str, str]:
    """Parse ``"output=answer,instruction=question"`` into ``{"output": "answer", ...}``."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        pool_field, sep, source_field = part.partition("=")
        if not sep or not pool_field.strip() or not source_field.strip():
            raise SettingError(f"PASER_FIELD_MAP entry {part!r} is not of the form pool_field=source_field")
        mapping[pool_field.strip()] = source_field.strip()
    return mapping


class PaserConfig(dg.ConfigurableResource):
    """Settings of the PASER pipeline. Every field has a ``PASER_*`` environment variable."""

    dataset: str | None = Field(
        default=None,
        description="Path to a JSON/JSONL/Parquet/CSV file or folder, or a Hugging Face dataset id. "
        "None generates the offline demo pool. Env: PASER_DATASET.",
    )
    dataset_split: str = Field(default="train", description="Split of a hub dataset. Env: PASER_DATASET_SPLIT.")
    field_map: dict[str, str] = Field(
        default_factory=dict,
        description="Pool field -> source field, e.g. {'output': 'answer'}; unmapped fields use the usual "
        "aliases. Env: PASER_FIELD_MAP='output=answer,instruction=question'.",
    )
    max_chars: int = Field(
        default=20_000,
        description="Rows longer than this (instruction+input+output) are rejected. Env: PASER_MAX_CHARS.",
    )
    demo_size: int = Field(
        default=DEFAULT_DEMO_SIZE, description="Rows of the generated demo pool. Env: PASER_DEMO_SIZE."
    )
    seed: int = Field(default=0, description="Seed for every random step. Env: PASER_SEED.")
    embedding_model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        description="Sentence-transformers model; the packaged all-MiniLM-L6-v2 is used offline. "
        "Env: PASER_EMBEDDING_MODEL.",
    )
    embedding_batch_size: int = Field(default=64, description="Sentences per embedding batch.")
    manifold: Literal["umap", "diffusion"] = Field(
        default="umap", description="Manifold learner: 'umap' or 'diffusion' (diffusion map). Env: PASER_MANIFOLD."
    )
    manifold_dims: int = Field(
        default=2,
        description="Dimensions of the learned manifold; 2 doubles as the cluster map. Env: PASER_MANIFOLD_DIMS.",
    )
    n_neighbors: int = Field(default=20, description="Neighbours per point in the sparse graphs. Env: PASER_NEIGHBORS.")
    graph_regularization: float = Field(
        default=0.1,
        description="tau of the regularised graph, as a multiple of the mean degree; it reconnects "
        "near-duplicate islands (Amini et al., 2013). Env: PASER_GRAPH_REGULARIZATION.",
    )
    cluster_space: Literal["embedding", "manifold"] = Field(
        default="embedding",
        description="Where the neighbour graph for clustering is built: the embedding space (default, "
        "measured best) or the learned manifold. Env: PASER_CLUSTER_SPACE.",
    )
    n_clusters: int | None = Field(
        default=None,
        description="Number of clusters; None chooses it by the eigengap of the graph Laplacian. "
        "Env: PASER_CLUSTERS (a number or 'auto').",
    )
    max_clusters: int = Field(
        default=24, description="Upper bound for the automatic choice of k. Env: PASER_MAX_CLUSTERS."
    )

    @field_validator("max_chars", "demo_size", "embedding_batch_size", "manifold_dims", "n_neighbors", "max_clusters")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @field_validator("n_clusters")
    @classmethod
    def _clusters(cls, value: int | None) -> int | None:
        if value is not None and value < 2:
            raise ValueError(f"n_clusters must be at least 2 (or None for automatic), got {value}")
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PaserConfig:
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            "dataset": env.get("PASER_DATASET") or None,
            "dataset_split": env.get("PASER_DATASET_SPLIT") or "train",
            "field_map": parse_field_map(env.get("PASER_FIELD_MAP", "")),
            "max_chars": _env_int(env, "PASER_MAX_CHARS", 20_000),
            "demo_size": _env_int(env, "PASER_DEMO_SIZE", DEFAULT_DEMO_SIZE),
            "seed": _env_int(env, "PASER_SEED", 0),
            "embedding_model": env.get("PASER_EMBEDDING_MODEL") or DEFAULT_EMBEDDING_MODEL,
            "manifold": (env.get("PASER_MANIFOLD") or "umap").lower(),
            "manifold_dims": _env_int(env, "PASER_MANIFOLD_DIMS", 2),
            "n_neighbors": _env_int(env, "PASER_NEIGHBORS", 20),
            "graph_regularization": _env_float(env, "PASER_GRAPH_REGULARIZATION", 0.1),
            "cluster_space": (env.get("PASER_CLUSTER_SPACE") or "embedding").lower(),
            "max_clusters": _env_int(env, "PASER_MAX_CLUSTERS", 24),
        }
        clusters = (env.get("PASER_CLUSTERS") or "auto").strip().lower()
        values["n_clusters"] = (
            None if clusters == "auto" else _env_int({"PASER_CLUSTERS": clusters}, "PASER_CLUSTERS", None)
        )
        try:
            return cls(**values)
        except Exception as error:  # pydantic's message names the field; add the variable names
            raise SettingError(f"invalid PASER_* setting: {error}") from None


class PaserDuckDB(DuckDBResource):
    """The DuckDB file that holds the ``paser`` schema, with a bounded wait for its lock.

    DuckDB allows one read-write process per file. Instead of failing at once (or after a long
    silent back-off), a connection waits up to ``lock_timeout_s`` and then raises an error that
    names the process holding the lock.
    """

    database: str = Field(default=DEFAULT_DB, description="Path to the DuckDB file. Env: PASER_DB.")
    schema_name: str = Field(default=DEFAULT_SCHEMA, description="Schema of the PASER tables. Env: PASER_SCHEMA.")
    lock_timeout_s: float = Field(
        default=60.0, description="Seconds to wait for another process's lock. Env: PASER_DB_LOCK_TIMEOUT."
    )

    @field_validator("schema_name")
    @classmethod
    def _schema(cls, value: str) -> str:
        return storage.validate_identifier(value, "schema name")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PaserDuckDB:
        env = os.environ if env is None else env
        try:
            return cls(
                database=env.get("PASER_DB") or DEFAULT_DB,
                schema_name=env.get("PASER_SCHEMA") or DEFAULT_SCHEMA,
                lock_timeout_s=_env_float(env, "PASER_DB_LOCK_TIMEOUT", 60.0),
            )
        except SettingError:
            raise
        except Exception as error:
            raise SettingError(f"invalid PASER_DB/PASER_SCHEMA setting: {error}") from None

    @contextmanager
    def get_connection(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        conn = storage.connect(self.database, read_only=read_only, lock_timeout_s=self.lock_timeout_s)
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside one transaction: every table written in the block lands, or none does."""
        with self.get_connection() as conn, storage.transaction(conn):
            yield conn

    def read(self, table: str, columns: str = "*"):
        with self.get_connection() as conn:
            return storage.read_table(conn, self.schema_name, table, columns)
