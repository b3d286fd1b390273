"""Spectral clustering on a sparse neighbour graph, with an eigengap choice of k.

The graph is a symmetric k-nearest-neighbour graph with self-tuning Gaussian weights
(Zelnik-Manor & Perona, 2004). Instruction pools hold many near-duplicate islands (templated
tasks), which make a plain kNN graph fall apart into dozens of components; spectral clustering on
such a graph spends its clusters on the islands. The regularised normalised adjacency of Amini et
al. (2013) adds a rank-one term tau/n to every edge, which reconnects the graph without ever
forming a dense N x N matrix: it is applied as a linear operator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, eigsh
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors


def neighbour_graph(points: np.ndarray, n_neighbors: int, scale_neighbor: int = 7) -> sp.csr_matrix:
    """Symmetric kNN graph W_ij = exp(-d_ij^2 / (sigma_i sigma_j)), sigma_i = distance to the 7th neighbour of i.

    Exact duplicates of a point are not counted when looking for its 7th neighbour, so that a point
    with many copies keeps a positive scale (a zero scale would cut every edge to a distinct point).
    W is made symmetric with max(W, W^T), so an edge exists when either point lists the other.
    """
    n = points.shape[0]
    if n < 3:
        raise ValueError(f"need at least 3 points to build a neighbour graph, got {n}")
    n_neighbors = min(n_neighbors, n - 1)
    distances, indices = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(points).kneighbors(points)
    # Column 0 is the point itself for distinct points; duplicates may swap places, which is harmless.
    distances, indices = distances[:, 1:], indices[:, 1:]
    duplicates = (distances <= 0).sum(axis=1)  # distances are sorted, so the duplicates come first
    column = np.minimum(duplicates + min(scale_neighbor, n_neighbors) - 1, n_neighbors - 1)
    sigma = distances[np.arange(n), column]
    # A point whose listed neighbours are all its own copies takes the typical scale of the others.
    positive = sigma > 0
    sigma = np.where(positive, sigma, float(np.median(sigma[positive])) if positive.any() else 1.0)
    rows = np.repeat(np.arange(n), n_neighbors)
    cols = indices.ravel()
    weights = np.exp(-(distances.ravel() ** 2) / (sigma[rows] * sigma[cols]))
    graph = sp.csr_matrix((weights, (rows, cols)), shape=(n, n))
    graph = graph.maximum(graph.T).tocsr()
    graph.setdiag(0.0)
    graph.eliminate_zeros()
    return graph


def regularized_adjacency(graph: sp.csr_matrix, regularization: float) -> LinearOperator:
    """A_tau = D_tau^-1/2 (W + (tau/n) 1 1^T) D_tau^-1/2 with tau = regularization * mean degree, as an operator."""
    n = graph.shape[0]
    degree = np.asarray(graph.sum(axis=1)).ravel()
    tau = regularization * float(degree.mean())
    inv_sqrt = 1.0 / np.sqrt(degree + tau)

    def apply(block: np.ndarray) -> np.ndarray:
        scaled = inv_sqrt[:, None] * block
        return inv_sqrt[:, None] * (graph @ scaled + (tau / n) * scaled.sum(axis=0, keepdims=True))

    return LinearOperator(
        (n, n),
        matvec=lambda vector: apply(vector.reshape(n, 1)).ravel(),
        matmat=apply,
        dtype=np.float64,
    )


def leading_eigenpairs(operator: LinearOperator, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest eigenvalues (descending) and eigenvectors of a symmetric operator."""
    n = operator.shape[0]
    count = min(count, n - 1)
    start = np.random.default_rng(seed).random(n)
    values, vectors = eigsh(operator, k=count, which="LA", tol=1e-6, v0=start)
    order = np.argsort(-values)
    values, vectors = values[order], vectors[:, order]
    # eigsh returns eigenvectors up to sign; fix the sign so results do not depend on the solver.
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    return values, vectors * np.where(signs == 0, 1.0, signs)


def eigengap_k(eigenvalues: np.ndarray, k_min: int, k_max: int) -> int:
    """k = argmax_k (lambda_k - lambda_{k+1}) over k_min <= k <= k_max, eigenvalues of A_tau in descending order."""
    k_max = min(k_max, len(eigenvalues) - 1)
    if k_max < k_min:
        return max(min(k_min, len(eigenvalues)), 1)
    gaps = eigenvalues[k_min - 1 : k_max] - eigenvalues[k_min : k_max + 1]
    return int(k_min + np.argmax(gaps))


@dataclass(frozen=True)
class SpectralClustering:
    """Result of :func:`spectral_clustering`."""

    labels: np.ndarray
    n_clusters: int
    criterion: str
    eigenvalues: np.ndarray
    spectral_embedding: np.ndarray


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters 0..k-1 by decreasing size (ties by first appearance), so ids are stable."""
    unique, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(unique)), key=lambda i: (-counts[i], first[i]))
    mapping = np.empty(unique.max() + 1, dtype=np.int64)
    mapping[unique[order]] = np.arange(len(unique))
    return mapping[labels]


def spectral_clustering(
    points: np.ndarray,
    n_clusters: int | None = None,
    *,
    n_neighbors: int = 30,
    regularization: float = 0.05,
    max_clusters: int = 24,
    min_clusters: int = 2,
    seed: int = 0,
) -> SpectralClustering:
    """Normalised spectral clustering (Ng, Jordan & Weiss, 2002) on the regularised kNN graph.

    labels = k-means on the row-normalised top-k eigenvectors of A_tau. With ``n_clusters=None``
    k is chosen by the largest eigengap between ``min_clusters`` and ``max_clusters``.
    """
    n = points.shape[0]
    graph = neighbour_graph(points, n_neighbors)
    operator = regularized_adjacency(graph, regularization)
    if n_clusters is None:
        max_clusters = min(max_clusters, n - 2)  # eigsh needs k < n; tiny pools get fewer clusters
        min_clusters = min(min_clusters, max_clusters)
    wanted = n_clusters if n_clusters is not None else max_clusters
    if wanted >= n or wanted < 1:
        raise ValueError(f"cannot make {wanted} clusters from {n} points")
    values, vectors = leading_eigenpairs(operator, wanted + 1, seed)
    if n_clusters is None:
        k = eigengap_k(values, min_clusters, max_clusters)
        criterion = f"eigengap of the regularised normalised adjacency over k in [{min_clusters}, {max_clusters}]"
    else:
        k = n_clusters
        criterion = "fixed"
    embedding = vectors[:, :k]
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    embedding = embedding / np.where(norms == 0, 1.0, norms)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(embedding)
    return SpectralClustering(relabel_by_size(labels), k, criterion, values, embedding)
