"""Neighbour graph, regularised spectral clustering and the eigengap (paser_assets.core.clustering)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from paser_assets.core.clustering import (
    eigengap_k,
    neighbour_graph,
    regularized_adjacency,
    relabel_by_size,
    spectral_clustering,
)
from paser_assets.resources import PaserConfig


def gaussian_blobs(per_blob: int, blobs: int, dim: int, seed: int, separation: float = 10.0):
    """Well separated isotropic blobs (unit spread, centres about separation * sqrt(2 dim) apart)."""
    rng = np.random.default_rng(seed)
    centres = separation * rng.normal(size=(blobs, dim))
    points = np.concatenate([centre + rng.normal(size=(per_blob, dim)) for centre in centres])
    return points, np.repeat(np.arange(blobs), per_blob), centres


def blobs_with_duplicate_islands(seed: int = 1):
    """5 blobs in 10-D, each with 15 distinct points and 3 points copied 10 times (templated tasks)."""
    _, _, centres = gaussian_blobs(1, 5, 10, seed=0)
    rng = np.random.default_rng(seed)
    parts, truth = [], []
    for label, centre in enumerate(centres):
        parts.append(centre + rng.normal(size=(15, 10)))
        parts.append(np.repeat(centre + rng.normal(size=(3, 10)), 10, axis=0))
        truth += [label] * 45
    order = rng.permutation(len(truth))  # interleave, so row order carries no information
    return np.concatenate(parts)[order], np.array(truth)[order]


# -- neighbour_graph


@pytest.mark.parametrize(("n", "k"), [(60, 5), (200, 20), (25, 30)])
def test_neighbour_graph_structure(n, k):
    points = np.random.default_rng(n).normal(size=(n, 6))
    graph = neighbour_graph(points, k)
    assert sp.issparse(graph) and graph.shape == (n, n)
    assert abs(graph - graph.T).max() == 0.0
    assert graph.nnz <= 2 * n * min(k, n - 1)
    assert np.all(graph.diagonal() == 0.0)
    assert np.all(graph.data > 0.0) and np.all(graph.data <= 1.0)
    # Every point keeps at least its own k neighbours (edges are only added by symmetrisation).
    assert np.all(np.diff(graph.indptr) >= min(k, n - 1))


def test_neighbour_graph_weights_follow_the_self_tuning_kernel():
    points = np.random.default_rng(3).normal(size=(40, 3))
    graph = neighbour_graph(points, 10).toarray()
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    sigma = np.sort(distances, axis=1)[:, 7]  # the 7th neighbour (column 0 is the point itself)
    kernel = np.exp(-(distances**2) / np.outer(sigma, sigma))
    rows, cols = np.nonzero(graph)
    assert np.allclose(graph[rows, cols], kernel[rows, cols], rtol=1e-10, atol=0.0)
    # The edges are exactly the kNN pairs, in either direction.
    nearest = np.argsort(distances, axis=1)[:, 1:11]
    listed = np.zeros((40, 40), dtype=bool)
    listed[np.repeat(np.arange(40), 10), nearest.ravel()] = True
    assert np.array_equal(graph > 0, listed | listed.T)


def test_neighbour_graph_needs_three_points():
    with pytest.raises(ValueError, match="at least 3 points"):
        neighbour_graph(np.zeros((2, 4)), 5)


def test_neighbour_graph_keeps_duplicate_islands_attached():
    points, truth = blobs_with_duplicate_islands()
    graph = neighbour_graph(points, 20)
    assert np.all(graph.data > 0.0) and np.all(graph.data <= 1.0)
    # Copies of a point are joined with weight 1 ...
    _, inverse, counts = np.unique(points, axis=0, return_inverse=True, return_counts=True)
    copies = np.flatnonzero(inverse.ravel() == np.argmax(counts))
    assert len(copies) == 10
    assert np.all(graph[copies[0], copies[1:]].toarray() == 1.0)
    # ... and the islands stay connected to the rest of their blob: one component per blob.
    count, components = connected_components(graph, directed=False)
    assert count == 5
    assert adjusted_rand_score(truth, components) == 1.0


def test_neighbour_graph_of_identical_points():
    graph = neighbour_graph(np.ones((12, 3)), 5)
    assert np.all(np.isfinite(graph.data)) and np.all(graph.data == 1.0)
    assert np.all(graph.diagonal() == 0.0)


# -- regularized_adjacency


def test_regularized_adjacency_equals_the_dense_formula():
    n, regularization = 30, 0.3
    graph = neighbour_graph(np.random.default_rng(5).normal(size=(n, 4)), 5)
    weights = graph.toarray()
    degree = weights.sum(axis=1)
    tau = regularization * degree.mean()
    regularized = weights + tau / n * np.ones((n, n))
    d_tau = np.diag(1.0 / np.sqrt(regularized.sum(axis=1)))  # the degrees of W + tau/n 1 1^T
    dense = d_tau @ regularized @ d_tau
    assert np.allclose(regularized.sum(axis=1), degree + tau)

    operator = regularized_adjacency(graph, regularization)
    assert operator.shape == (n, n)
    assert np.allclose(operator @ np.eye(n), dense, rtol=1e-12, atol=1e-14)
    vector = np.random.default_rng(6).normal(size=n)
    assert np.allclose(operator.matvec(vector), dense @ vector, rtol=1e-12, atol=1e-14)
    block = np.random.default_rng(7).normal(size=(n, 4))
    assert np.allclose(operator.matmat(block), dense @ block, rtol=1e-12, atol=1e-14)
    # A normalised adjacency: symmetric, top eigenvalue 1 with eigenvector sqrt(degree + tau).
    assert np.allclose(dense, dense.T)
    top = np.sqrt(degree + tau)
    assert np.allclose(operator.matvec(top), top)
    assert np.isclose(np.linalg.eigvalsh(dense).max(), 1.0)


def test_regularized_adjacency_without_regularization_is_the_normalized_adjacency():
    n = 20
    graph = neighbour_graph(np.random.default_rng(8).normal(size=(n, 3)), 4)
    weights = graph.toarray()
    inv_sqrt = 1.0 / np.sqrt(weights.sum(axis=1))
    expected = inv_sqrt[:, None] * weights * inv_sqrt[None, :]
    assert np.allclose(regularized_adjacency(graph, 0.0) @ np.eye(n), expected, rtol=1e-12, atol=1e-14)


def test_regularization_reconnects_a_disconnected_graph():
    # Two cliques with no edge between them: eigenvalue 1 twice without tau, a gap with it.
    clique = np.ones((5, 5)) - np.eye(5)
    graph = sp.csr_matrix(sp.block_diag([clique, clique]))
    plain = np.sort(np.linalg.eigvalsh(regularized_adjacency(graph, 0.0) @ np.eye(10)))[::-1]
    regular = np.sort(np.linalg.eigvalsh(regularized_adjacency(graph, 0.5) @ np.eye(10)))[::-1]
    assert np.allclose(plain[:2], 1.0)
    assert np.isclose(regular[0], 1.0) and regular[1] < 1.0 - 1e-3


# -- eigengap_k


def test_eigengap_picks_the_largest_gap():
    values = np.array([1.0, 0.99, 0.98, 0.5, 0.4, 0.3])
    # gaps for k = 2..5: 0.01, 0.48, 0.1, 0.1
    assert eigengap_k(values, 2, 5) == 3
    assert eigengap_k(values, 2, 24) == 3  # k_max is clipped to len - 1
    # Equal gaps (exact in binary): the smallest k wins.
    assert eigengap_k(np.array([1.0, 0.75, 0.5, 0.25]), 1, 3) == 1
    assert eigengap_k(np.array([1.0, 0.75, 0.5, 0.25]), 2, 3) == 2


def test_eigengap_ignores_gaps_below_k_min():
    values = np.array([1.0, 0.2, 0.19, 0.1, 0.09])
    assert eigengap_k(values, 1, 4) == 1
    assert eigengap_k(values, 2, 4) == 3


def test_eigengap_with_too_few_eigenvalues():
    assert eigengap_k(np.array([1.0, 0.5]), 2, 10) == 2
    assert eigengap_k(np.array([1.0]), 2, 10) == 1


# -- relabel_by_size


def test_relabel_by_size_orders_by_decreasing_size():
    labels = np.array([5, 5, 2, 2, 2, 9])
    assert relabel_by_size(labels).tolist() == [1, 1, 0, 0, 0, 2]


def test_relabel_by_size_breaks_ties_by_first_appearance():
    assert relabel_by_size(np.array([3, 3, 1, 1])).tolist() == [0, 0, 1, 1]
    assert relabel_by_size(np.array([1, 3, 3, 1, 7])).tolist() == [0, 1, 1, 0, 2]


def test_relabel_by_size_keeps_the_partition():
    labels = np.random.default_rng(9).integers(0, 12, size=500)
    relabelled = relabel_by_size(labels)
    assert adjusted_rand_score(labels, relabelled) == 1.0
    assert sorted(np.unique(relabelled)) == list(range(len(np.unique(labels))))
    sizes = np.bincount(relabelled)
    assert np.all(np.diff(sizes) <= 0)
    assert np.array_equal(relabel_by_size(relabelled), relabelled)


# -- spectral_clustering


def test_spectral_clustering_recovers_well_separated_blobs():
    points, truth, _ = gaussian_blobs(40, 5, 10, seed=0)
    result = spectral_clustering(points, n_neighbors=20, regularization=0.1)
    assert result.n_clusters == 5
    assert "eigengap" in result.criterion
    assert adjusted_rand_score(truth, result.labels) == 1.0
    assert result.labels.shape == (200,)
    assert np.all(np.diff(np.bincount(result.labels)) <= 0)  # ids ordered by size
    assert result.spectral_embedding.shape == (200, 5)
    assert np.allclose(np.linalg.norm(result.spectral_embedding, axis=1), 1.0)
    # Eigenvalues in descending order with the largest drop after the 5th.
    assert np.all(np.diff(result.eigenvalues) <= 1e-12)
    assert np.isclose(result.eigenvalues[0], 1.0)
    gaps = result.eigenvalues[1:-1] - result.eigenvalues[2:]
    assert np.argmax(gaps) + 2 == 5


@pytest.mark.parametrize("k", [3, 5, 7])
def test_spectral_clustering_with_a_fixed_k(k):
    points, truth, _ = gaussian_blobs(30, 5, 10, seed=2)
    result = spectral_clustering(points, k, n_neighbors=20, regularization=0.1)
    assert result.n_clusters == k and result.criterion == "fixed"
    assert len(np.unique(result.labels)) == k
    if k == 5:
        assert adjusted_rand_score(truth, result.labels) == 1.0
    else:
        # Too few clusters merge whole blobs; too many split blobs, but never mix two blobs.
        contingency = np.zeros((5, k), dtype=int)
        np.add.at(contingency, (truth, result.labels), 1)
        if k < 5:
            assert np.all((contingency > 0).sum(axis=1) == 1)
        else:
            assert np.all((contingency > 0).sum(axis=0) == 1)


def test_spectral_clustering_is_deterministic_for_a_seed():
    points, _, _ = gaussian_blobs(40, 5, 10, seed=4)
    noisy = points + 4.0 * np.random.default_rng(5).normal(size=points.shape)  # overlapping: a harder case
    first = spectral_clustering(noisy, n_neighbors=20, seed=3)
    second = spectral_clustering(noisy.copy(), n_neighbors=20, seed=3)
    assert first.n_clusters == second.n_clusters
    assert np.array_equal(first.labels, second.labels)
    assert np.array_equal(first.eigenvalues, second.eigenvalues)
    assert np.array_equal(first.spectral_embedding, second.spectral_embedding)


def test_spectral_clustering_rejects_too_few_points():
    with pytest.raises(ValueError, match="at least 3 points"):
        spectral_clustering(np.zeros((2, 3)))
    points = np.random.default_rng(6).normal(size=(10, 3))
    with pytest.raises(ValueError, match="cannot make 12 clusters from 10 points"):
        spectral_clustering(points, n_clusters=12)


def test_automatic_k_is_capped_for_tiny_pools():
    points = np.random.default_rng(6).normal(size=(10, 3))
    result = spectral_clustering(points, max_clusters=24)
    assert 1 <= result.n_clusters <= 8
    assert "[2, 8]" in result.criterion
    with pytest.raises(ValueError, match="cannot make 10 clusters from 10 points"):
        spectral_clustering(points, 10)


def test_spectral_clustering_survives_duplicate_islands():
    points, truth = blobs_with_duplicate_islands()
    config = PaserConfig().semantic
    result = spectral_clustering(
        points, n_neighbors=config.n_neighbors, regularization=config.graph_regularization, max_clusters=24
    )
    assert result.n_clusters == 5
    assert adjusted_rand_score(truth, result.labels) == 1.0
    # Copies of a point always share a cluster.
    _, inverse = np.unique(points, axis=0, return_inverse=True)
    for group in np.unique(inverse):
        assert len(np.unique(result.labels[inverse.ravel() == group])) == 1


# -- the demo pool: clustering recovers the task families


@pytest.fixture(scope="module")
def demo_embeddings():
    from paser_assets.models.sentence import embed_texts, embedding_text
    from paser_assets.pool import load_pool

    pool = load_pool(None).accepted
    texts = [
        embedding_text(instruction, input_text)
        for instruction, input_text in zip(pool.instruction, pool.input, strict=True)
    ]
    embeddings = embed_texts("sentence-transformers/all-MiniLM-L6-v2", texts)
    return embeddings, pool["family"].to_numpy()


@pytest.mark.system
@pytest.mark.parametrize("automatic", [True, False], ids=["automatic-k", "k-families"])
def test_demo_pool_clustering_recovers_families(demo_embeddings, automatic):
    embeddings, families = demo_embeddings
    config = PaserConfig().semantic
    assert config.n_clusters is None
    n_families = len(np.unique(families))
    result = spectral_clustering(
        embeddings,
        None if automatic else n_families,
        n_neighbors=config.n_neighbors,
        regularization=config.graph_regularization,
        max_clusters=config.max_clusters,
        seed=PaserConfig().seed,
    )
    score = normalized_mutual_info_score(families, result.labels)
    print(f"demo pool NMI ({'automatic' if automatic else 'fixed'} k={result.n_clusters}): {score:.4f}")
    assert embeddings.shape == (len(families), 384)
    if not automatic:
        assert result.n_clusters == n_families
    assert 2 <= result.n_clusters <= config.max_clusters
    assert score >= 0.8
