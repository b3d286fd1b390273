"""UMAP coordinates and the sparse diffusion map (paser_assets.core.manifold)."""

from __future__ import annotations

import numpy as np
import pytest

from paser_assets.core.manifold import diffusion_map, umap_coordinates


def two_blobs(per_blob: int = 60, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    offset = np.zeros(dim)
    offset[0] = 12.0
    points = np.concatenate([rng.normal(size=(per_blob, dim)), offset + rng.normal(size=(per_blob, dim))])
    return points, np.repeat([0, 1], per_blob)


def cosine_blobs(per_blob: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two blobs in different directions from the origin (UMAP here uses the cosine metric)."""
    rng = np.random.default_rng(seed)
    first, second = np.zeros(dim), np.zeros(dim)
    first[0] = second[1] = 10.0
    points = np.concatenate([first + rng.normal(size=(per_blob, dim)), second + rng.normal(size=(per_blob, dim))])
    return points, np.repeat([0, 1], per_blob)


def separates_perfectly(values: np.ndarray, truth: np.ndarray) -> bool:
    """True when one threshold on ``values`` splits the two groups without error."""
    first, second = values[truth == 0], values[truth == 1]
    return bool(first.max() < second.min() or second.max() < first.min())


# -- umap_coordinates


@pytest.fixture(scope="module")
def umap_pair():
    points, truth = cosine_blobs(per_blob=40, dim=8, seed=1)
    return points, truth, umap_coordinates(points, 2, seed=7), umap_coordinates(points.copy(), 2, seed=7)


def test_umap_shape_dtype_and_determinism(umap_pair):
    points, truth, first, second = umap_pair
    assert first.shape == (len(points), 2)
    assert first.dtype == np.float32
    assert np.all(np.isfinite(first))
    assert np.array_equal(first, second)
    # Two far apart blobs stay apart on the map: a threshold along the line between their means splits them.
    direction = first[truth == 1].mean(axis=0) - first[truth == 0].mean(axis=0)
    assert separates_perfectly(first @ direction, truth)


def test_umap_other_dimensions():
    points = np.random.default_rng(2).normal(size=(30, 5))
    coordinates = umap_coordinates(points, 3, n_neighbors=10, seed=0)
    assert coordinates.shape == (30, 3) and coordinates.dtype == np.float32
    assert np.all(np.isfinite(coordinates))


@pytest.mark.parametrize(("n", "components"), [(3, 2), (2, 2), (4, 3)])
def test_umap_rejects_too_few_points(n, components):
    with pytest.raises(ValueError, match="needs more than"):
        umap_coordinates(np.random.default_rng(3).normal(size=(n, 5)), components)


# -- diffusion_map


def test_diffusion_map_shape_dtype_and_determinism():
    points, _ = two_blobs(seed=4)
    first = diffusion_map(points, 3, n_neighbors=15, seed=5)
    second = diffusion_map(points.copy(), 3, n_neighbors=15, seed=5)
    assert first.shape == (len(points), 3)
    assert first.dtype == np.float32
    assert np.all(np.isfinite(first))
    assert np.array_equal(first, second)


def test_diffusion_map_first_coordinate_separates_two_blobs():
    points, truth = two_blobs(seed=6)
    order = np.random.default_rng(7).permutation(len(truth))  # row order carries no information
    points, truth = points[order], truth[order]
    coordinates = diffusion_map(points, 2, n_neighbors=15)
    first = coordinates[:, 0]
    assert separates_perfectly(first, truth)
    # The split is the dominant structure: the first coordinate's between-blob gap dwarfs its spread within.
    means = [first[truth == label].mean() for label in (0, 1)]
    spread = max(first[truth == label].std() for label in (0, 1))
    assert abs(means[0] - means[1]) > 10 * spread


def test_diffusion_time_scales_coordinates_by_eigenvalue_powers():
    points, _ = two_blobs(seed=8)
    once = diffusion_map(points, 2, n_neighbors=15, diffusion_time=1.0).astype(np.float64)
    twice = diffusion_map(points, 2, n_neighbors=15, diffusion_time=2.0).astype(np.float64)
    # psi_t = lambda^t phi: the ratio twice/once is lambda for every row of a column.
    for column in range(2):
        ratio = twice[:, column] / once[:, column]
        assert np.allclose(ratio, np.median(ratio), rtol=1e-4)
        assert 0.0 < np.median(ratio) <= 1.0 + 1e-6


@pytest.mark.parametrize(("n", "components"), [(4, 2), (3, 1), (5, 3)])
def test_diffusion_map_rejects_too_few_points(n, components):
    with pytest.raises(ValueError, match="needs more than"):
        diffusion_map(np.random.default_rng(9).normal(size=(n, 4)), components)
