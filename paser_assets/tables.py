"""The columns of every table the assets write, with their types and meaning.

One place documents the schema: asset metadata (``dagster/column_schema``) and the README's table
reference are both built from it.
"""

from __future__ import annotations

import dagster as dg

from paser_assets.pool.records import POOL_COLUMNS, REJECTED_COLUMNS

Columns = dict[str, tuple[str, str]]  # name -> (SQL type, description)

TABLES: dict[str, Columns] = {
    "recovery_pool": {
        name: (
            {"source_row": "BIGINT", "duplicate_count": "BIGINT", "n_chars": "BIGINT"}.get(name, "VARCHAR"),
            description,
        )
        for name, description in POOL_COLUMNS.items()
    },
    "recovery_pool_rejected": {
        name: ("BIGINT" if name == "source_row" else "VARCHAR", description)
        for name, description in REJECTED_COLUMNS.items()
    },
    "holdout": {
        "sample_id": ("VARCHAR", "Pool row kept out of every selection to evaluate recovery on"),
        "family": ("VARCHAR", "Its family label, when the data has one"),
    },
    "instruction_embeddings": {
        "sample_id": ("VARCHAR", "Pool row"),
        "embedding": ("FLOAT[]", "L2-normalised sentence embedding of instruction + input"),
    },
    "embedding_cache": {
        "model_key": ("VARCHAR", "Sentence model and text recipe the vector was made with"),
        "sample_id": ("VARCHAR", "Pool row"),
        "embedding": ("FLOAT[]", "The cached embedding"),
    },
    "manifold": {
        "sample_id": ("VARCHAR", "Pool row"),
        "coordinates": ("FLOAT[]", "Position on the learned low-dimensional manifold"),
        "map_x": ("FLOAT", "First coordinate of the 2-D cluster map"),
        "map_y": ("FLOAT", "Second coordinate of the 2-D cluster map"),
    },
    "clusters": {
        "sample_id": ("VARCHAR", "Pool row"),
        "cluster": ("BIGINT", "Cluster id, 0 = largest cluster"),
        "map_x": ("FLOAT", "First coordinate of the 2-D cluster map"),
        "map_y": ("FLOAT", "Second coordinate of the 2-D cluster map"),
    },
    "cluster_profiles": {
        "cluster": ("BIGINT", "Cluster id"),
        "size": ("BIGINT", "Samples in the cluster"),
        "top_keyphrases": ("VARCHAR[]", "Terms that set the cluster apart (class-based TF-IDF)"),
        "examples": ("VARCHAR[]", "Instructions closest to the cluster's centre"),
        "main_family": ("VARCHAR", "Most common family label in the cluster (NULL without labels)"),
        "family_share": ("DOUBLE", "Share of the cluster's samples with that label"),
    },
    "variants": {
        "variant": ("VARCHAR", "Name of the pruned variant (a Dagster partition key)"),
        "kind": ("VARCHAR", "recipe (built-in pruning) or checkpoint (external)"),
        "spec": ("VARCHAR", "Recipe such as wanda:0.5 or magnitude:2:4, or the checkpoint path"),
        "fingerprint": ("VARCHAR", "Hash of the specification"),
    },
    "pruned_checkpoints": {
        "variant": ("VARCHAR", "Name of the pruned variant"),
        "kind": ("VARCHAR", "recipe or checkpoint"),
        "spec": ("VARCHAR", "The variant's specification"),
        "path": ("VARCHAR", "Folder (or .gguf file) of the checkpoint that was scored"),
        "content_hash": ("VARCHAR", "Content hash of the checkpoint files (its data version)"),
        "original_hash": ("VARCHAR", "Content hash of the original model it was pruned from"),
        "sparsity": ("DOUBLE", "Measured share of zero weights in the decoder linears (built-in pruning only)"),
    },
    "score_cache": {
        "scoring_key": ("VARCHAR", "Scoring recipe + original and pruned content hashes + settings"),
        "sample_id": ("VARCHAR", "Pool row"),
        "jsd": ("DOUBLE", "Mean JSD over response tokens (nats)"),
        "original_nll": ("DOUBLE", "Original model's mean response NLL"),
        "pruned_nll": ("DOUBLE", "Pruned model's mean response NLL"),
        "prompt_tokens": ("BIGINT", "Prompt tokens"),
        "response_tokens": ("BIGINT", "Response tokens scored (incl. end of sequence)"),
        "truncated": ("BOOLEAN", "Whether the sample was cut to max_tokens"),
    },
    "degradation_scores": {
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
    "capability_degradation": {
        "variant": ("VARCHAR", "Pruned variant"),
        "cluster": ("BIGINT", "Cluster id"),
        "size": ("BIGINT", "Samples in the cluster"),
        "cds": ("DOUBLE", "Capability Degradation Score: mean JSD of the cluster's samples"),
        "jsd_std": ("DOUBLE", "Standard deviation of the samples' JSD"),
        "mean_ies": ("DOUBLE", "Mean Individual Efficiency Score"),
        "budget": ("BIGINT", "Samples the cluster may contribute to the selection"),
        "budget_share": ("DOUBLE", "budget / total budget"),
    },
    "sample_concepts": {
        "sample_id": ("VARCHAR", "Pool row"),
        "concepts": ("VARCHAR[]", "Stemmed keyphrases of instruction + input + output (top TF-IDF)"),
        "n_concepts": ("BIGINT", "Number of concepts"),
    },
    "selection": {
        "variant": ("VARCHAR", "Pruned variant"),
        "sample_id": ("VARCHAR", "Pool row"),
        "cluster": ("BIGINT", "Cluster id"),
        "rank": ("BIGINT", "Position in the cluster's IES order, 1 = highest IES"),
        "ies": ("DOUBLE", "Individual Efficiency Score"),
        "jsd": ("DOUBLE", "Mean JSD over the response tokens"),
        "decision": ("VARCHAR", "selected, concept_conflict or budget_full (never reached)"),
        "conflict_pairs": ("VARCHAR[]", "Concept pairs that were both in the graph but never co-occurred ('a | b')"),
        "conflict_share": ("DOUBLE", "Conflicting pairs / all concept pairs of the candidate"),
        "refill_round": ("BIGINT", "0 = first pass, n = n-th refill pass, -1 = never considered"),
    },
    "concept_graph": {
        "variant": ("VARCHAR", "Pruned variant"),
        "concept_a": ("VARCHAR", "A concept of a selected sample"),
        "concept_b": ("VARCHAR", "Another concept of the same selected sample (concept_a < concept_b)"),
        "cooccurrences": ("BIGINT", "Selected samples holding both concepts"),
    },
    "baseline_selection": {
        "variant": ("VARCHAR", "Pruned variant"),
        "method": ("VARCHAR", "random, uniform, top_jsd, ifd or paser_no_concepts"),
        "rank": ("BIGINT", "Order in which the method picked the sample"),
        "sample_id": ("VARCHAR", "Selected pool row"),
    },
    "heldout_nll": {
        "variant": ("VARCHAR", "Pruned variant"),
        "method": ("VARCHAR", "Selection method of the recovered model, or 'reference'"),
        "model": ("VARCHAR", "original, pruned or recovered"),
        "sample_id": ("VARCHAR", "Held-out pool row"),
        "nll": ("DOUBLE", "Mean NLL of the response tokens"),
    },
    "general_text_nll": {
        "variant": ("VARCHAR", "Pruned variant"),
        "method": ("VARCHAR", "Selection method of the recovered model, or 'reference'"),
        "model": ("VARCHAR", "original, pruned or recovered"),
        "mean_nll": ("DOUBLE", "Mean NLL per token of Python's standard-library documentation"),
        "perplexity": ("DOUBLE", "exp(mean_nll)"),
        "tokens": ("BIGINT", "Tokens scored"),
    },
    "recovery_comparison": {
        "variant": ("VARCHAR", "Pruned variant"),
        "method": ("VARCHAR", "original, pruned, or the selection method the pruned model was recovered with"),
        "cluster": ("BIGINT", "Cluster of the held-out samples; NULL for all of them"),
        "samples": ("BIGINT", "Held-out samples"),
        "heldout_nll": ("DOUBLE", "Mean response NLL on the held-out samples"),
        "heldout_ppl": ("DOUBLE", "exp(heldout_nll)"),
        "general_ppl": ("DOUBLE", "Perplexity on general text"),
    },
}


def column_schema(table: str) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(name, sql_type, description) for name, (sql_type, description) in TABLES[table].items()]
    )


def table_metadata(table: str, schema: str, row_count: int) -> dict[str, object]:
    """Standard metadata of a table asset: column schema, row count and where to query it."""
    return {
        "dagster/column_schema": column_schema(table),
        "dagster/row_count": dg.MetadataValue.int(row_count),
        "dagster/table_name": dg.MetadataValue.text(f"{schema}.{table}"),
    }
