"""Manifold learning of instruction embeddings: UMAP, or a sparse diffusion map."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

from paser_assets.core.clustering import neighbour_graph


def umap_coordinates(
    embeddings: np.ndarray, n_components: int, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0
) -> np.ndarray:
    """UMAP (McInnes et al., 2018) coordinates with cosine input metric; deterministic for a seed."""
    import umap  # slow to import (numba), so only when needed

    n = embeddings.shape[0]
    if n <= n_components + 1:
        raise ValueError(f"UMAP to {n_components} dimensions needs more than {n_components + 1} points, got {n}")
    reducer = umap.UMAP(
        n_components=n_components,
        n_neighbors=min(n_neighbors, n - 1),
        min_dist=min_dist,
        metric="cosine",
        random_state=seed,
        low_memory=True,
        # The spectral initialisation fails on tiny or disconnected inputs; random is robust there.
        init="spectral" if n > 4 * n_neighbors else "random",
    )
    with warnings.catch_warnings():
        # "n_jobs value 1 overridden to 1 by setting random_state" is expected: we want determinism.
        warnings.filterwarnings("ignore", message=".*n_jobs.*")
        warnings.filterwarnings("ignore", message=".*Graph is not fully connected.*")
        coordinates = reducer.fit_transform(embeddings)
    return np.asarray(coordinates, dtype=np.float32)


def diffusion_map(
    embeddings: np.ndarray, n_components: int, n_neighbors: int = 30, diffusion_time: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Diffusion map (Coifman & Lafon, 2006) on a sparse kNN kernel: psi_i = lambda_i^t phi_i / sqrt(d).

    The alpha = 1 normalisation K_1 = D^-1 K D^-1 removes the effect of sampling density. The
    eigenvectors come from the symmetric conjugate of the Markov matrix, so ``eigsh`` is valid.
    """
    n = embeddings.shape[0]
    if n <= n_components + 2:
        raise ValueError(f"a diffusion map to {n_components} dimensions needs more than {n_components + 2} points")
    kernel = neighbour_graph(embeddings, n_neighbors)
    kernel = kernel + sp.identity(n, format="csr")  # self-loops keep every degree positive
    degree = np.asarray(kernel.sum(axis=1)).ravel()
    inverse_degree = sp.diags(1.0 / degree)
    density_free = inverse_degree @ kernel @ inverse_degree
    degree_1 = np.asarray(density_free.sum(axis=1)).ravel()
    inv_sqrt = sp.diags(1.0 / np.sqrt(degree_1))
    symmetric = (inv_sqrt @ density_free @ inv_sqrt).tocsr()
    start = np.random.default_rng(seed).random(n)
    values, vectors = eigsh(symmetric, k=n_components + 1, which="LA", tol=1e-6, v0=start)
    order = np.argsort(-values)
    values, vectors = values[order], vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    right = vectors / np.sqrt(degree_1)[:, None]  # right eigenvectors of the Markov matrix
    coordinates = right[:, 1:] * np.clip(values[1:], 0.0, None) ** diffusion_time
    return coordinates.astype(np.float32)
