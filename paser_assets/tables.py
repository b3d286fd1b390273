"""Every table the package writes, declared once: its columns with their types and meaning, the asset that
writes it and whether it holds rows per pruned variant.

Everything else is derived from these declarations: the typed writes in :mod:`paser_assets.storage` (a table
is created with exactly these columns and types, whatever the frame holds), the asset metadata
(``dagster/column_schema``), the tables ``paser variants remove`` deletes a variant's rows from, and the
table reference in docs/reference.md (``scripts/reference.py`` rewrites it). An asset's main table has the
asset's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import dagster as dg

from paser_assets.pool.records import POOL_COLUMNS, REJECTED_COLUMNS

Columns = Mapping[str, tuple[str, str]]  # name -> (SQL type, description)


@dataclass(frozen=True)
class Table:
    """One table: ``writer`` is the asset (or assets) whose materialization writes it, None for the variant
    registry; ``per_variant`` tables hold a block of rows per pruned variant in their ``variant`` column."""

    name: str
    writer: str | tuple[str, ...] | None
    columns: Columns
    per_variant: bool
    description: str

    def __post_init__(self) -> None:
        # A read-only view: the declaration is shared by every write, nothing may change it on the way.
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))
        if not self.columns:
            raise ValueError(f"table {self.name} declares no column")
        if self.per_variant and "variant" not in self.columns:
            raise ValueError(f"table {self.name} is declared per variant but has no variant column")

    @property
    def writers(self) -> tuple[str, ...]:
        if self.writer is None:
            return ()
        return (self.writer,) if isinstance(self.writer, str) else self.writer

    @property
    def types(self) -> dict[str, str]:
        """Column name -> SQL type, in declaration order."""
        return {name: sql_type for name, (sql_type, _) in self.columns.items()}


def _declare(*tables: Table) -> dict[str, Table]:
    declared: dict[str, Table] = {}
    for table in tables:
        if table.name in declared:
            raise ValueError(f"table {table.name} is declared twice")
        declared[table.name] = table
    return declared


_VARIANT = ("VARCHAR", "Pruned variant")
_METHOD = ("VARCHAR", "Selection method of the recovered model, or 'reference'")
# The evaluation tables: written by both evaluation assets, one row block per (variant, method) and model.
_EVALUATED_BY = ("reference_evaluation", "recovery_evaluation")
_MODEL = ("VARCHAR", "original, pruned or recovered")
TABLES: dict[str, Table] = _declare(
    Table(
        "recovery_pool",
        "recovery_pool",
        {
            name: (
                {"source_row": "BIGINT", "duplicate_count": "BIGINT", "n_chars": "BIGINT"}.get(name, "VARCHAR"),
                description,
            )
            for name, description in POOL_COLUMNS.items()
        },
        per_variant=False,
        description="Normalised instruction rows keyed by a content hash, duplicates kept once",
    ),
    Table(
        "recovery_pool_rejected",
        "recovery_pool",
        {
            name: ("BIGINT" if name == "source_row" else "VARCHAR", description)
            for name, description in REJECTED_COLUMNS.items()
        },
        per_variant=False,
        description="Input rows that could not be used, with file, row and reason",
    ),
    Table(
        "holdout_split",
        "holdout_split",
        {
            "sample_id": ("VARCHAR", "Pool row kept out of every selection to evaluate recovery on"),
            "family": ("VARCHAR", "Its family label, when the data has one"),
        },
        per_variant=False,
        description="Samples no selection may take, to evaluate recovery on",
    ),
    Table(
        "instruction_embeddings",
        "instruction_embeddings",
        {
            "sample_id": ("VARCHAR", "Pool row"),
            "embedding": ("FLOAT[]", "L2-normalised sentence embedding of instruction + input"),
        },
        per_variant=False,
        description="Sentence embedding of each sample's instruction + input",
    ),
    Table(
        "embedding_cache",
        "instruction_embeddings",
        {
            "model_key": ("VARCHAR", "Sentence model and text recipe the vector was made with"),
            "sample_id": ("VARCHAR", "Pool row"),
            "embedding": ("FLOAT[]", "The cached embedding"),
        },
        per_variant=False,
        description="Every embedding ever computed, by sentence model and sample, so none is computed twice",
    ),
    Table(
        "manifold",
        "manifold",
        {
            "sample_id": ("VARCHAR", "Pool row"),
            "coordinates": ("FLOAT[]", "Position on the learned low-dimensional manifold"),
            "map_x": ("FLOAT", "First coordinate of the 2-D cluster map"),
            "map_y": ("FLOAT", "Second coordinate of the 2-D cluster map"),
        },
        per_variant=False,
        description="UMAP (or diffusion-map) coordinates and the 2-D map",
    ),
    Table(
        "clusters",
        "clusters",
        {
            "sample_id": ("VARCHAR", "Pool row"),
            "cluster": ("BIGINT", "Cluster id, 0 = largest cluster"),
            "map_x": ("FLOAT", "First coordinate of the 2-D cluster map"),
            "map_y": ("FLOAT", "Second coordinate of the 2-D cluster map"),
        },
        per_variant=False,
        description="The cluster of each sample (spectral clustering)",
    ),
    Table(
        "cluster_spectrum",
        "clusters",
        {
            "k": ("BIGINT", "Position in the descending order of eigenvalues, 1 = largest"),
            "eigenvalue": ("DOUBLE", "k-th largest eigenvalue of the regularised normalised adjacency"),
            "eigengap": ("DOUBLE", "eigenvalue_k - eigenvalue_(k+1); NULL for the last one computed"),
            "chosen": ("BOOLEAN", "Whether k is the number of clusters made"),
            "criterion": ("VARCHAR", "How k was chosen: the largest eigengap over a range of k, or fixed"),
        },
        per_variant=False,
        description="The leading eigenvalues and eigengaps of the clustering, and the k chosen",
    ),
    Table(
        "cluster_profiles",
        "cluster_profiles",
        {
            "cluster": ("BIGINT", "Cluster id"),
            "size": ("BIGINT", "Samples in the cluster"),
            "top_keyphrases": ("VARCHAR[]", "Terms that set the cluster apart (class-based TF-IDF)"),
            "examples": ("VARCHAR[]", "Instructions closest to the cluster's centre"),
            "main_family": ("VARCHAR", "Most common family label in the cluster (NULL without labels)"),
            "family_share": ("DOUBLE", "Share of the cluster's samples with that label"),
        },
        per_variant=False,
        description="Size, distinctive keyphrases and typical instructions per cluster",
    ),
    Table(
        "variants",
        None,
        {
            "variant": ("VARCHAR", "Name of the pruned variant (the first part of its assets' keys)"),
            "kind": ("VARCHAR", "recipe (built-in pruning) or checkpoint (external)"),
            "spec": ("VARCHAR", "Recipe such as wanda:0.5 or magnitude:2:4, or the checkpoint path"),
            "fingerprint": ("VARCHAR", "Hash of the specification"),
        },
        per_variant=True,
        description="The variant registry: what each variant is (`paser variants add/remove`, PASER_VARIANTS)",
    ),
    Table(
        "pruned_model",
        "pruned_model",
        {
            "variant": ("VARCHAR", "Name of the pruned variant"),
            "kind": ("VARCHAR", "recipe or checkpoint"),
            "spec": ("VARCHAR", "The variant's specification"),
            "path": ("VARCHAR", "Folder (or .gguf or LLM-Pruner file) of the checkpoint that was scored"),
            "content_hash": ("VARCHAR", "Content hash of the checkpoint files (its data version)"),
            "original_hash": ("VARCHAR", "Content hash of the original model it was pruned from"),
            "sparsity": (
                "DOUBLE",
                "Measured share of zero weights in the decoder linears (built-in pruning, compressed-tensors and "
                "LLM-Pruner checkpoints; empty for other external checkpoints)",
            ),
            "parameters": ("BIGINT", "Parameter count of the pruned model (empty for GGUF files)"),
            "layer_widths": (
                "VARCHAR",
                "JSON list, per decoder layer: mlp (intermediate width), q (query outputs) and heads; structured "
                "pruning such as LLM-Pruner's makes them differ per layer",
            ),
        },
        per_variant=True,
        description="The checkpoint each variant was scored with",
    ),
    Table(
        "score_cache",
        "degradation_scores",
        {
            "scoring_key": ("VARCHAR", "Scoring recipe + original and pruned content hashes + settings"),
            "sample_id": ("VARCHAR", "Pool row"),
            "jsd": ("DOUBLE", "Mean JSD over response tokens (nats)"),
            "original_nll": ("DOUBLE", "Original model's mean response NLL"),
            "pruned_nll": ("DOUBLE", "Pruned model's mean response NLL"),
            "prompt_tokens": ("BIGINT", "Prompt tokens"),
            "response_tokens": ("BIGINT", "Response tokens scored (incl. end of sequence)"),
            "truncated": ("BOOLEAN", "Whether the sample was cut to max_tokens"),
        },
        per_variant=False,
        description="Every score ever computed, by scoring key, committed as batches finish (resumable scoring)",
    ),
    Table(
        "degradation_scores",
        "degradation_scores",
        {
            "variant": ("VARCHAR", "Pruned variant the scores belong to"),
            "shard": ("BIGINT", "Scoring shard of the sample (a hash of sample_id modulo PASER_SCORE_SHARDS)"),
            "sample_id": ("VARCHAR", "Pool row"),
            "jsd": ("DOUBLE", "Mean Jensen-Shannon divergence (nats, 0..ln 2) over the response tokens"),
            "ies": ("DOUBLE", "Individual Efficiency Score = jsd / log(cost)"),
            "cost": ("BIGINT", "Quadratic attention cost (prompt_tokens + response_tokens)^2"),
            "prompt_tokens": ("BIGINT", "Tokens of the templated prompt"),
            "response_tokens": ("BIGINT", "Tokens of the reference response, incl. end of sequence"),
            "original_nll": ("DOUBLE", "Original model's mean NLL of the response tokens"),
            "pruned_nll": ("DOUBLE", "Pruned model's mean NLL of the response tokens"),
            "truncated": ("BOOLEAN", "Whether prompt + response were cut to max_tokens"),
        },
        per_variant=True,
        description="Per variant and sample: mean response-token JSD, token counts, cost, IES, both models' NLL",
    ),
    Table(
        "capability_degradation",
        "capability_degradation",
        {
            "variant": _VARIANT,
            "cluster": ("BIGINT", "Cluster id"),
            "size": ("BIGINT", "Samples in the cluster"),
            "cds": ("DOUBLE", "Capability Degradation Score: mean JSD of the cluster's samples"),
            "jsd_std": ("DOUBLE", "Standard deviation of the samples' JSD"),
            "mean_ies": ("DOUBLE", "Mean Individual Efficiency Score"),
            "budget": ("BIGINT", "Samples the cluster may contribute to the selection"),
            "budget_share": ("DOUBLE", "budget / total budget"),
        },
        per_variant=True,
        description="Per variant and cluster: size, CDS (mean JSD) and budget",
    ),
    Table(
        "sample_concepts",
        "sample_concepts",
        {
            "sample_id": ("VARCHAR", "Pool row"),
            "concepts": ("VARCHAR[]", "Stemmed keyphrases of instruction + input + output (top TF-IDF)"),
            "n_concepts": ("BIGINT", "Number of concepts"),
        },
        per_variant=False,
        description="Per sample: its concepts (stemmed TF-IDF keyphrases of instruction + input + output)",
    ),
    Table(
        "selection",
        "selection",
        {
            "variant": _VARIANT,
            "sample_id": ("VARCHAR", "Pool row"),
            "cluster": ("BIGINT", "Cluster id"),
            "rank": ("BIGINT", "Position in the cluster's walk, 1 = the highest score (IES by default)"),
            "ies": ("DOUBLE", "Individual Efficiency Score"),
            "jsd": ("DOUBLE", "Mean JSD over the response tokens"),
            "score": ("DOUBLE", "What the walk ranked by: the IES (the study's lab arms rank by other scores)"),
            "decision": ("VARCHAR", "selected, concept_conflict or budget_full (never reached)"),
            "conflict_pairs": (
                "VARCHAR[]",
                "Concept pairs that were both in the graph but never co-occurred ('a | b')",
            ),
            "conflict_share": ("DOUBLE", "Conflicting pairs / all concept pairs of the candidate"),
            "refill_round": ("BIGINT", "0 = first pass, n = n-th refill pass, -1 = never considered"),
        },
        per_variant=True,
        description="Per variant: every candidate considered, with its decision and conflicting concept pairs",
    ),
    Table(
        "concept_graph",
        "concept_graph",
        {
            "variant": _VARIANT,
            "concept_a": ("VARCHAR", "A concept of a selected sample"),
            "concept_b": ("VARCHAR", "Another concept of the same selected sample (concept_a < concept_b)"),
            "cooccurrences": ("BIGINT", "Selected samples holding both concepts"),
        },
        per_variant=True,
        description="Per variant: the Concept Consistency Graph of the selected samples",
    ),
    Table(
        "baseline_selections",
        "baseline_selections",
        {
            "variant": _VARIANT,
            "method": ("VARCHAR", "A selection method of PASER_RECOVERY_METHODS (paser included; `paser methods`)"),
            "rank": ("BIGINT", "Order in which the method picked the sample"),
            "sample_id": ("VARCHAR", "Selected pool row"),
        },
        per_variant=True,
        description="Per variant: every configured method's selection (PASER's too) at PASER's budget",
    ),
    Table(
        "recovered_adapters",
        "recovered_model",
        {
            "variant": _VARIANT,
            "method": ("VARCHAR", "Selection method the pruned model was recovered with"),
            "path": ("VARCHAR", "Folder of the LoRA adapter (safetensors) in the model cache"),
            "recipe_hash": ("VARCHAR", "Hash of the LoRA settings, the pruned model and the selected samples"),
            "train_samples": ("BIGINT", "Samples fine-tuned on"),
            "train_tokens": ("BIGINT", "Tokens fine-tuned on"),
            "train_seconds": ("DOUBLE", "Wall-clock seconds of the fine-tune"),
        },
        per_variant=True,
        description="Per variant and method: the LoRA adapter the pruned model was recovered with",
    ),
    Table(
        "heldout_nll",
        _EVALUATED_BY,
        {
            "variant": _VARIANT,
            "method": _METHOD,
            "model": _MODEL,
            "sample_id": ("VARCHAR", "Held-out pool row"),
            "nll": ("DOUBLE", "Mean NLL of the response tokens"),
            "tokens": ("BIGINT", "Response tokens the NLL is a mean over (incl. end of sequence)"),
        },
        per_variant=True,
        description="Per variant and model: the mean response NLL of every held-out sample and its tokens",
    ),
    Table(
        "text_perplexity",
        _EVALUATED_BY,
        {
            "variant": _VARIANT,
            "method": _METHOD,
            "model": _MODEL,
            "text": ("VARCHAR", "Corpus name from PASER_EVAL_TEXT ('stdlib_docs' by default)"),
            "windows": ("BIGINT", "Non-overlapping windows of PASER_EVAL_WINDOW tokens scored"),
            "tokens": ("BIGINT", "Tokens predicted (every token of a window but its first)"),
            "mean_nll": ("DOUBLE", "Mean NLL per predicted token"),
            "perplexity": ("DOUBLE", "exp(mean_nll)"),
        },
        per_variant=True,
        description="Per variant and model: perplexity on each text corpus",
    ),
    Table(
        "task_accuracy",
        _EVALUATED_BY,
        {
            "variant": _VARIANT,
            "method": _METHOD,
            "model": _MODEL,
            "task": ("VARCHAR", "Task name from PASER_EVAL_TASKS"),
            "items": ("BIGINT", "Items scored (the first PASER_EVAL_TASK_ITEMS of the file)"),
            "acc": ("DOUBLE", "Share of items whose answer has the largest log-likelihood"),
            "acc_stderr": ("DOUBLE", "Standard error of acc"),
            "acc_norm": ("DOUBLE", "Same, per character of the answer; NULL for partially scored tasks"),
            "acc_norm_stderr": ("DOUBLE", "Standard error of acc_norm"),
        },
        per_variant=True,
        description="Per variant and model: zero-shot multiple-choice accuracy on each task",
    ),
    Table(
        "harness_results",
        _EVALUATED_BY,
        {
            "variant": _VARIANT,
            "method": _METHOD,
            "model": _MODEL,
            "task": (
                "VARCHAR",
                "The lm-evaluation-harness task's name in PASER_EVAL_TASKS (a harness task name, or the name given "
                "to a YAML file); a group's subtasks by the harness's names",
            ),
            "metric": (
                "VARCHAR",
                "The harness's metric (acc, acc_norm, exact_match, ...); 'metric,filter' for a filter other than "
                "'none' (exact_match,strict-match)",
            ),
            "value": ("DOUBLE", "The metric's value as the harness computes it"),
            "stderr": ("DOUBLE", "The harness's standard error of it (NULL where it gives none)"),
            "items": ("BIGINT", "Documents scored (at most PASER_EVAL_TASK_ITEMS); NULL for a group's aggregate"),
            "harness_version": ("VARCHAR", "The lm-evaluation-harness (lm_eval) version that computed it"),
        },
        per_variant=True,
        description="Per variant and model: the metrics of the lm-evaluation-harness tasks in PASER_EVAL_TASKS",
    ),
    Table(
        "recovery_comparison",
        "recovery_comparison",
        {
            "variant": _VARIANT,
            "method": ("VARCHAR", "original, pruned, or the selection method the pruned model was recovered with"),
            "metric": (
                "VARCHAR",
                "heldout_nll, heldout_nll_macro, heldout_token_nll, heldout_token_nll_macro, heldout_nll:<group>, "
                "ppl:<text>, acc:<task>, acc_norm:<task>, task_average, or harness:<task>:<metric> (harness_results)",
            ),
            "value": ("DOUBLE", "The metric's value"),
            "stderr": ("DOUBLE", "Its standard error where one is defined (NULL otherwise)"),
            "recovery_ratio": ("DOUBLE", "(value - pruned) / (original - pruned): 1 when all the damage is undone"),
            "train_samples": ("BIGINT", "Samples the method fine-tuned on (NULL for the references)"),
            "train_tokens": ("BIGINT", "Tokens fine-tuned on, over all epochs"),
            "train_seconds": ("DOUBLE", "Wall-clock seconds of the fine-tune"),
        },
        per_variant=True,
        description="Per variant: every metric per method with its recovery ratio and the training it used",
    ),
)

# Tables holding one block of rows per variant (``variant`` column): `paser variants remove` empties them all.
PER_VARIANT_TABLES: tuple[str, ...] = tuple(name for name, table in TABLES.items() if table.per_variant)


def column_schema(table: str) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, sql_type, description)
            for name, (sql_type, description) in TABLES[table].columns.items()
        ]
    )


def table_metadata(table: str, schema: str, row_count: int) -> dict[str, object]:
    """Standard metadata of a table asset: column schema, row count and where to query it."""
    return {
        "dagster/column_schema": column_schema(table),
        "dagster/row_count": dg.MetadataValue.int(row_count),
        "dagster/table_name": dg.MetadataValue.text(f"{schema}.{table}"),
    }
