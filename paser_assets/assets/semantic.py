"""The semantic branch: embeddings, manifold, clusters and cluster profiles.

None of these read a model under test, so re-pruning never makes them stale.
"""

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import numpy as np
import pandas as pd

from paser_assets import charts, report, storage
from paser_assets.assets.models import run_device
from paser_assets.core.clustering import spectral_clustering
from paser_assets.core.manifold import diffusion_map, umap_coordinates
from paser_assets.core.profiles import distinctive_terms, representative_indices
from paser_assets.models.checkpoints import CheckpointError, LoadOptions
from paser_assets.models.sentence import embed_texts, embedding_text
from paser_assets.progress import Progress
from paser_assets.resources import PaserConfig, PaserDuckDB
from paser_assets.settings import reads
from paser_assets.tables import table_metadata

SEMANTIC_GROUP = "semantic"
# Bump when embedding_text() changes, so cached vectors of the old recipe are not reused.
EMBEDDING_TEXT_VERSION = "instruction+input/1"


@contextmanager
def _limits_of_the_pool(rows: int) -> Iterator[None]:
    """A pool too small for the manifold or the clustering fails with the algorithm's reason, not a traceback."""
    try:
        yield
    except ValueError as error:
        raise dg.Failure(description=f"the pool has {rows} samples, too few: {error}; add data") from None


def _vectors(frame: pd.DataFrame, column: str) -> np.ndarray:
    return np.stack(frame[column].to_numpy()).astype(np.float32)


def _embedding_model_key(model: str) -> str:
    return f"{model}|{EMBEDDING_TEXT_VERSION}"


@dg.asset(
    deps=["recovery_pool"],
    group_name=SEMANTIC_GROUP,
    code_version="1",
    kinds={"duckdb", "sentence_transformers"},
    description="Sentence embedding of each sample's instruction + input; cached by sample_id.",
)
@reads(
    "semantic.embedding_model",
    "semantic.embedding_batch_size",
    "models.device",
    "models.allow_pickle",
    "models.trust_remote_code",
)
def instruction_embeddings(
    context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB
) -> dg.MaterializeResult:
    schema = duckdb.schema_name
    settings = paser.semantic
    model_key = _embedding_model_key(settings.embedding_model)
    with duckdb.get_connection() as conn:
        pool = storage.read_table(conn, "recovery_pool", "sample_id, instruction, input")
        cached = pd.DataFrame(columns=["sample_id", "embedding"])
        if storage.table_exists(conn, "embedding_cache"):
            cached = conn.execute(
                "SELECT sample_id, embedding FROM embedding_cache WHERE model_key = ?", [model_key]
            ).df()
    known = dict(zip(cached["sample_id"], cached["embedding"], strict=True))
    missing = pool[~pool["sample_id"].isin(known.keys())]
    context.log.info(f"{len(pool) - len(missing)} embeddings reused from the cache, {len(missing)} to compute")
    new_rows = pd.DataFrame(columns=["model_key", "sample_id", "embedding"])
    if len(missing):
        progress = Progress("embedding", len(missing), context.log.info)
        texts = [embedding_text(i, x) for i, x in zip(missing["instruction"], missing["input"], strict=True)]
        options = LoadOptions(allow_pickle=paser.models.allow_pickle, trust_remote_code=paser.models.trust_remote_code)
        try:
            vectors = embed_texts(
                settings.embedding_model,
                texts,
                settings.embedding_batch_size,
                progress.advance,
                device=str(run_device(paser)),
                options=options,
            )
        except CheckpointError as error:
            raise dg.Failure(description=f"PASER_EMBEDDING_MODEL={settings.embedding_model}: {error}") from None
        new_rows = pd.DataFrame(
            {"model_key": model_key, "sample_id": missing["sample_id"].to_numpy(), "embedding": list(vectors)}
        )
        known.update(zip(new_rows["sample_id"], new_rows["embedding"], strict=True))
    table = pd.DataFrame(
        {
            "sample_id": pool["sample_id"],
            "embedding": [np.asarray(known[s], dtype=np.float32) for s in pool["sample_id"]],
        }
    )
    with duckdb.write() as conn:
        if len(new_rows):
            storage.append_rows(conn, "embedding_cache", new_rows)
        storage.replace_table(conn, "instruction_embeddings", table)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(table)),
        metadata={
            **table_metadata("instruction_embeddings", schema, len(table)),
            "model": settings.embedding_model,
            "dimension": int(table["embedding"].iloc[0].shape[0]),
            "computed": len(missing),
            "reused_from_cache": len(pool) - len(missing),
        },
    )


@dg.asset(
    deps=["instruction_embeddings"],
    group_name=SEMANTIC_GROUP,
    code_version="1",
    kinds={"duckdb", "umap"},
    description="Low-dimensional manifold of the embeddings (UMAP or diffusion map) and 2-D map coordinates.",
)
@reads("semantic.manifold", "semantic.manifold_dims", "semantic.n_neighbors", "seed")
def manifold(context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB) -> dg.MaterializeResult:
    settings = paser.semantic
    neighbors = settings.n_neighbors  # the diffusion map's graph; read up front like every declared setting
    embeddings = duckdb.read("instruction_embeddings")
    points = _vectors(embeddings, "embedding")
    context.log.info(f"learning a {settings.manifold_dims}-D {settings.manifold} manifold of {len(points)} embeddings")
    with _limits_of_the_pool(len(points)):
        if settings.manifold == "umap":
            coordinates = umap_coordinates(points, settings.manifold_dims, seed=paser.seed)
            picture = coordinates if settings.manifold_dims == 2 else umap_coordinates(points, 2, seed=paser.seed)
        else:
            dims = max(settings.manifold_dims, 2)
            coordinates = diffusion_map(points, dims, n_neighbors=neighbors, seed=paser.seed)
            picture = coordinates[:, :2]
    table = pd.DataFrame(
        {
            "sample_id": embeddings["sample_id"],
            "coordinates": list(coordinates.astype(np.float32)),
            "map_x": picture[:, 0].astype(np.float32),
            "map_y": picture[:, 1].astype(np.float32),
        }
    )
    with duckdb.write() as conn:
        storage.replace_table(conn, "manifold", table)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(storage.content_hash(table)),
        metadata={
            **table_metadata("manifold", duckdb.schema_name, len(table)),
            "method": settings.manifold,
            "dimensions": int(coordinates.shape[1]),
        },
    )


def spectrum_table(eigenvalues: np.ndarray, k: int, criterion: str) -> pd.DataFrame:
    """The rows of cluster_spectrum: the leading eigenvalues, the gap after each and the k chosen."""
    values = np.asarray(eigenvalues, dtype=np.float64)
    gaps = np.append(values[:-1] - values[1:], np.nan)  # no gap after the last eigenvalue computed
    positions = np.arange(1, len(values) + 1, dtype=np.int64)
    return pd.DataFrame(
        {"k": positions, "eigenvalue": values, "eigengap": gaps, "chosen": positions == k, "criterion": criterion}
    )


def _cluster_space(space: str, embeddings: pd.DataFrame, manifold_table: pd.DataFrame) -> np.ndarray:
    if space == "manifold":
        return _vectors(manifold_table, "coordinates")
    return _vectors(embeddings, "embedding")


@dg.asset(
    deps=["instruction_embeddings", "manifold"],
    group_name=SEMANTIC_GROUP,
    code_version="2",  # 2: also writes cluster_spectrum
    kinds={"duckdb", "scikitlearn"},
    description="Spectral clustering on a sparse, regularised neighbour graph; k fixed or by eigengap.",
)
@reads(
    "semantic.n_clusters",
    "semantic.n_neighbors",
    "semantic.graph_regularization",
    "semantic.max_clusters",
    "semantic.cluster_space",
    "semantic.manifold",
    "seed",
)
def clusters(context: dg.AssetExecutionContext, paser: PaserConfig, duckdb: PaserDuckDB) -> dg.MaterializeResult:
    settings = paser.semantic
    with duckdb.get_connection() as conn:
        embeddings = storage.read_table(conn, "instruction_embeddings")
        manifold_table = storage.read_table(conn, "manifold")
        pool = storage.read_table(conn, "recovery_pool", "sample_id, family")
    if not embeddings["sample_id"].equals(manifold_table["sample_id"]):
        raise dg.Failure("the manifold is out of date with the embeddings: materialize `manifold` again")
    points = _cluster_space(settings.cluster_space, embeddings, manifold_table)
    with _limits_of_the_pool(len(points)):
        result = spectral_clustering(
            points,
            settings.n_clusters,
            n_neighbors=settings.n_neighbors,
            regularization=settings.graph_regularization,
            max_clusters=settings.max_clusters,
            seed=paser.seed,
        )
    context.log.info(f"{result.n_clusters} clusters ({result.criterion})")
    table = pd.DataFrame(
        {
            "sample_id": embeddings["sample_id"],
            "cluster": result.labels.astype(np.int64),
            "map_x": manifold_table["map_x"],
            "map_y": manifold_table["map_y"],
        }
    )
    spectrum = spectrum_table(result.eigenvalues, result.n_clusters, result.criterion)
    with duckdb.write() as conn:
        storage.replace_table(conn, "clusters", table)
        storage.replace_table(conn, "cluster_spectrum", spectrum)
    sizes = np.bincount(result.labels)
    metadata: dict[str, object] = {
        **table_metadata("clusters", duckdb.schema_name, len(table)),
        "n_clusters": result.n_clusters,
        "k_criterion": result.criterion,
        "cluster_space": settings.cluster_space,
        "leading_eigenvalues": dg.MetadataValue.json([round(float(v), 5) for v in result.eigenvalues[:30]]),
        "cluster_sizes": dg.MetadataValue.json({str(c): int(s) for c, s in enumerate(sizes)}),
        "cluster_map": dg.MetadataValue.md(
            charts.cluster_map(
                table["map_x"].to_numpy(),
                table["map_y"].to_numpy(),
                result.labels,
                f"{result.n_clusters} clusters of {len(table)} instructions ({settings.manifold} map)",
            )
        ),
        "eigengap": dg.MetadataValue.md(charts.markdown(report.eigengap_chart(spectrum), "eigengap")),
    }
    families = pool.set_index("sample_id").loc[table["sample_id"], "family"]
    if families.notna().all():
        from sklearn.metrics import homogeneity_score, normalized_mutual_info_score

        metadata["nmi_vs_family"] = float(normalized_mutual_info_score(families, result.labels))
        metadata["homogeneity_vs_family"] = float(homogeneity_score(families, result.labels))
    return dg.MaterializeResult(data_version=dg.DataVersion(storage.content_hash(table)), metadata=metadata)


@dg.asset(
    deps=["clusters", "recovery_pool", "instruction_embeddings"],
    group_name=SEMANTIC_GROUP,
    code_version="1",
    kinds={"duckdb"},
    description="Per cluster: size, distinctive keyphrases and the most typical instructions.",
)
@reads()
def cluster_profiles(duckdb: PaserDuckDB) -> dg.MaterializeResult:
    schema = duckdb.schema_name
    with duckdb.get_connection() as conn:
        frame = conn.execute(
            """
            SELECT c.sample_id, c.cluster, c.map_x, c.map_y, p.instruction, p.input, p.family, e.embedding
            FROM clusters c
            JOIN recovery_pool p USING (sample_id)
            JOIN instruction_embeddings e USING (sample_id)
            ORDER BY c.cluster, c.sample_id
            """
        ).df()
    labels = frame["cluster"].to_numpy()
    texts = [embedding_text(i, x) for i, x in zip(frame["instruction"], frame["input"], strict=True)]
    terms = distinctive_terms(texts, labels)
    examples = representative_indices(_vectors(frame, "embedding"), labels)
    rows = []
    for cluster in sorted(terms):
        members = frame[frame["cluster"] == cluster]
        family_counts = members["family"].value_counts()
        rows.append(
            {
                "cluster": cluster,
                "size": len(members),
                "top_keyphrases": terms[cluster],
                "examples": [frame["instruction"].iloc[i][:300] for i in examples[cluster]],
                "main_family": str(family_counts.index[0]) if len(family_counts) else None,
                "family_share": float(family_counts.iloc[0] / len(members)) if len(family_counts) else None,
            }
        )
    table = pd.DataFrame(rows).astype({"cluster": "int64", "size": "int64"})
    with duckdb.write() as conn:
        storage.replace_table(conn, "cluster_profiles", table)
    # The map again, now that each cluster has keyphrases to be labelled by (clusters only knows ids).
    names = report.cluster_names(table, frame)
    picture = charts.cluster_map(
        frame["map_x"].to_numpy(),
        frame["map_y"].to_numpy(),
        labels,
        f"{len(table)} clusters by their keyphrases",
        names,
    )
    overview = table[["cluster", "size", "main_family", "top_keyphrases"]].copy()
    overview["top_keyphrases"] = overview["top_keyphrases"].map(lambda terms: ", ".join(terms[:4]))
    digest = hashlib.sha256(table.to_json().encode()).hexdigest()[:24]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(digest),
        metadata={
            **table_metadata("cluster_profiles", schema, len(table)),
            "profiles": dg.MetadataValue.md(overview.to_markdown(index=False)),
            "cluster_map": dg.MetadataValue.md(picture),
        },
    )
