"""Benchmark: this project's clustering against k-means and the paper's dense diffusion clustering.

What is measured
----------------
The pool is the real instruction data in ``<repo>/../shared/data`` (``--data DIR`` overrides it):
four Alpaca-format JSON files, 22,827 rows in all. The file a row came from is its ground-truth label.
Every row is embedded once with all-MiniLM-L6-v2 (``paser_assets.models.sentence``) on
``instruction + input``; the embeddings are cached under ``bench/.cache`` and embedding time is not
part of any measurement. On those embeddings, with the same k, we run side by side:

(a) ``paser``: ``paser_assets.core.clustering.spectral_clustering`` with the ``PaserConfig`` defaults
    (``n_neighbors``, ``graph_regularization``) and ``seed=0``;
(b) ``kmeans``: scikit-learn ``KMeans(n_init=10, random_state=0)`` on the L2-normalised embeddings;
(c) ``dense_diffusion``: a dense diffusion-kernel + NMF clustering written from the PASER paper's
    description (see :func:`dense_diffusion_labels`), on at most 8,000 rows (null above that).

Also timed, for transparency, is ``manifold_umap_2d``: ``paser_assets.core.manifold.umap_coordinates``
to 2 dimensions, the map the pipeline also computes; it is not part of (a).

For each method we report wall time (seconds), peak memory (GB) and, for the clusterings, the
normalised mutual information and homogeneity of the labels against the source file. Each method
runs in a fresh child process started with the ``spawn`` method, which loads the embeddings from a
``.npy`` file, so methods do not share or inflate each other's memory. Time covers the method call
only (not imports or loading). Peak memory is the child's peak resident set size as a whole
(interpreter, libraries, the loaded embeddings and the method). It is read from ``VmHWM`` in
``/proc/self/status``: on Linux ``getrusage(RUSAGE_SELF).ru_maxrss`` of a spawned child starts at the
*parent's* high-water mark (``execve`` records the outgoing address space's peak), so it would
report the parent's peak whenever the child stays below it. Where ``/proc`` is missing we fall back
to ``ru_maxrss``. The readable table also shows the child's resident memory just before the call
("base GB"), i.e. what imports and loading alone take.

``--rows N`` below the pool size samples N rows without replacement (seed 0); above it, the pool is
kept whole and topped up with copies of randomly chosen rows whose embeddings get Gaussian noise of
standard deviation 0.01 and are re-normalised (labels copied).

Targets
-------
* k=10 on all 22,827 rows: (a) beats (b) on both NMI and homogeneity, in <= 90 s and <= 2 GB peak.
* k=10 on 100,000 (replicated) rows: (a) takes <= 10 min and <= 6 GB peak.

Output: progress on stderr, a readable table on stdout and, as the last stdout line, one JSON object
``{"rows": N, "k": K, "methods": {...}, "manifold_umap_2d": {"seconds": s, "peak_gb": g}}``.

Usage::

    .venv/bin/python bench/clustering.py [--rows N] [--k K] [--data DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import resource
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from shared_data import DATA_FILES  # bench/ is on sys.path when a bench runs as a script

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
CACHE_DIR = BENCH_DIR / ".cache"
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DENSE_MAX_ROWS = 8_000
SAMPLE_SEED = 0
NOISE_STD = 0.01
CLUSTER_METHODS = ("paser", "kmeans", "dense_diffusion")


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Pool:
    texts: list[str]
    labels: np.ndarray  # index into ``sources``
    sources: tuple[str, ...]


def load_pool(data_dir: Path) -> Pool:
    """Rows of the four files in order; the text is what the pipeline embeds (instruction + input)."""
    from paser_assets.models.sentence import embedding_text

    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(DATA_FILES):
        rows = json.loads((data_dir / name).read_text(encoding="utf-8"))
        # Only instruction and input are embedded; the answer field (``output``, or ``response`` in
        # gpteacher_codegen.json) is not needed here.
        texts.extend(embedding_text(row["instruction"], row.get("input") or "") for row in rows)
        labels.extend([label] * len(rows))
        log(f"{name}: {len(rows):,} rows")
    return Pool(texts, np.asarray(labels, dtype=np.int64), DATA_FILES)


def cache_path(data_dir: Path) -> Path:
    """``bench/.cache/embeddings-<hash>.npy``, the hash taken over the data files' names and sizes."""
    key = "\n".join(f"{name}:{(data_dir / name).stat().st_size}" for name in DATA_FILES)
    return CACHE_DIR / f"embeddings-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"


def _embed_child(texts: list[str], target: str) -> None:
    """Runs in a child process, so the parent never loads torch."""
    from paser_assets.models.sentence import embed_texts

    done = 0
    started = time.perf_counter()

    def progress(count: int) -> None:
        nonlocal done
        done += count
        log(f"embedded {done:,}/{len(texts):,} ({time.perf_counter() - started:.0f} s)")

    vectors = embed_texts(EMBEDDING_MODEL, texts, on_batch=progress)
    partial = Path(target).with_suffix(".partial")
    with partial.open("wb") as handle:
        np.save(handle, vectors)
    partial.replace(target)


def load_embeddings(pool: Pool, data_dir: Path) -> np.ndarray:
    path = cache_path(data_dir)
    if path.exists():
        embeddings = np.load(path)
        if embeddings.shape[0] == len(pool.texts):
            log(f"embeddings from cache {path}")
            return embeddings
        log(f"cache {path} has {embeddings.shape[0]} rows, pool has {len(pool.texts)}; re-embedding")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    log(f"embedding {len(pool.texts):,} rows with {EMBEDDING_MODEL} (once; cached to {path})")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as executor:
        executor.submit(_embed_child, pool.texts, str(path)).result()
    return np.load(path)


def select_rows(embeddings: np.ndarray, labels: np.ndarray, rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    """All rows, a deterministic sample of ``rows``, or the pool topped up with perturbed copies."""
    size = embeddings.shape[0]
    if rows is None or rows == size:
        return embeddings, labels
    rng = np.random.default_rng(SAMPLE_SEED)
    if rows < size:
        chosen = np.sort(rng.choice(size, rows, replace=False))
        return embeddings[chosen], labels[chosen]
    extra = rows - size
    copies = -(-extra // size)
    source = np.concatenate([rng.permutation(size) for _ in range(copies)])[:extra]
    noisy = embeddings[source] + rng.normal(0.0, NOISE_STD, size=(extra, embeddings.shape[1])).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    return np.concatenate([embeddings, noisy]), np.concatenate([labels, labels[source]])


# ------------------------------------------------------------------------------------------ methods


def dense_diffusion_labels(points: np.ndarray, n_clusters: int, diffusion_time: int = 1) -> np.ndarray:
    """Dense diffusion-kernel clustering with NMF, following the PASER paper's description.

    He et al., "PASER: Post-Training Data Selection for Efficient Pruned Large Language Model
    Recovery" (2025, arXiv 2502.12594) cluster instruction embeddings with a diffusion kernel and
    non-negative matrix factorisation. Written here from that description, as a baseline:

    1. Gaussian kernel K_ij = exp(-||x_i - x_j||^2 / eps), eps = median squared pairwise distance;
    2. Markov normalisation P = D^-1 K, D = diag(row sums of K);
    3. diffusion-map coordinates psi_j = lambda_j^t D^-1/2 v_j from a dense eigendecomposition
       (``numpy.linalg.eigh``) of the symmetric conjugate S = D^-1/2 K D^-1/2 (same eigenvalues as P);
    4. NMF with ``n_clusters`` components on the non-negative matrix P, P ~ W H; the cluster of row
       i is argmax_j W_ij.

    The diffusion coordinates of step 3 are computed, as described, but the labels come from the NMF
    of step 4. Every step holds dense N x N matrices: O(N^2) memory and O(N^3) time (the
    eigendecomposition), which is why the benchmark runs it on at most 8,000 rows.
    """
    from sklearn.decomposition import NMF

    x = points.astype(np.float64)
    n = x.shape[0]
    squared_norms = np.einsum("ij,ij->i", x, x)
    kernel = squared_norms[:, None] + squared_norms[None, :] - 2.0 * (x @ x.T)
    np.maximum(kernel, 0.0, out=kernel)  # now the squared distances
    upper = np.concatenate([kernel[i, i + 1 :] for i in range(n - 1)])
    eps = float(np.median(upper))
    del upper
    kernel /= -eps
    np.exp(kernel, out=kernel)  # K
    degree = kernel.sum(axis=1)
    markov = kernel / degree[:, None]  # P = D^-1 K
    inv_sqrt = 1.0 / np.sqrt(degree)
    symmetric = inv_sqrt[:, None] * kernel * inv_sqrt[None, :]  # D^-1/2 K D^-1/2
    del kernel
    values, vectors = np.linalg.eigh(symmetric)
    del symmetric
    order = np.argsort(-values)[: n_clusters + 1]
    # Skip the trivial first eigenvector (eigenvalue 1); keep the next n_clusters coordinates.
    _diffusion_coordinates = (vectors[:, order[1:]] * inv_sqrt[:, None]) * values[order[1:]] ** diffusion_time
    del vectors
    weights = NMF(n_components=n_clusters, random_state=0).fit_transform(markov)
    return weights.argmax(axis=1)


def _peak_rss_gb() -> float:
    """This process's peak resident set size in GB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KB on Linux


def _current_rss_gb() -> float:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def _run_method(method: str, points_path: str, k: int, params: dict[str, Any]) -> dict[str, Any]:
    """Runs in a fresh spawned child: load the points, import what the method needs, time the call."""
    points = np.load(points_path)
    if method == "paser":
        from paser_assets.core.clustering import spectral_clustering

        def call() -> np.ndarray:
            return spectral_clustering(
                points,
                n_clusters=k,
                n_neighbors=params["n_neighbors"],
                regularization=params["regularization"],
                seed=0,
            ).labels

    elif method == "kmeans":
        from sklearn.cluster import KMeans

        def call() -> np.ndarray:
            norms = np.linalg.norm(points, axis=1, keepdims=True)
            normalised = points / np.where(norms == 0, 1.0, norms)
            return KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(normalised)

    elif method == "dense_diffusion":
        import sklearn.decomposition  # noqa: F401  (imported before the clock starts)

        def call() -> np.ndarray:
            return dense_diffusion_labels(points, k)

    elif method == "manifold_umap_2d":
        import umap  # noqa: F401  (numba import before the clock starts; JIT compilation is timed)

        from paser_assets.core.manifold import umap_coordinates

        def call() -> np.ndarray:
            return umap_coordinates(points, 2, seed=0)

    else:
        raise ValueError(f"unknown method {method!r}")
    base_gb = _current_rss_gb()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        result = call()
    seconds = time.perf_counter() - started
    labels = None if method == "manifold_umap_2d" else np.asarray(result)
    return {"seconds": seconds, "peak_gb": _peak_rss_gb(), "base_gb": base_gb, "labels": labels}


def measure(method: str, points_path: Path, k: int, params: dict[str, Any]) -> dict[str, Any]:
    log(f"{method}: running in a fresh process")
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as executor:
        outcome = executor.submit(_run_method, method, str(points_path), k, params).result()
    log(f"{method}: {outcome['seconds']:.1f} s, peak {outcome['peak_gb']:.2f} GB")
    return outcome


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=None, help="rows to cluster (default: the whole pool)")
    parser.add_argument("--k", type=int, default=10, help="number of clusters (default: 10)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"data folder (default: {DEFAULT_DATA})")
    args = parser.parse_args(argv)
    if args.rows is not None and args.rows < 3:
        parser.error("--rows must be at least 3")
    if args.k < 2:
        parser.error("--k must be at least 2")
    return args


def format_table(rows: int, k: int, results: dict[str, dict[str, Any] | None]) -> str:
    header = f"{'method':<18} {'seconds':>9} {'peak GB':>8} {'base GB':>8} {'NMI':>7} {'homog.':>7}"
    lines = [f"clustering benchmark: {rows:,} rows, k={k}", header, "-" * len(header)]
    for method, outcome in results.items():
        if outcome is None:
            lines.append(f"{method:<18} {'skipped (rows > ' + format(DENSE_MAX_ROWS, ',') + ')':>41}")
            continue
        nmi = f"{outcome['nmi']:.4f}" if "nmi" in outcome else "-"
        homogeneity = f"{outcome['homogeneity']:.4f}" if "homogeneity" in outcome else "-"
        lines.append(
            f"{method:<18} {outcome['seconds']:>9.2f} {outcome['peak_gb']:>8.3f} {outcome['base_gb']:>8.3f} "
            f"{nmi:>7} {homogeneity:>7}"
        )
    lines.append("peak GB: the child process's peak RSS; base GB: its RSS after imports and loading, before the call")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from sklearn.metrics import homogeneity_score, normalized_mutual_info_score

    from paser_assets.resources import PaserConfig

    args = parse_args(argv)
    config = PaserConfig()
    params = {"n_neighbors": config.semantic.n_neighbors, "regularization": config.semantic.graph_regularization}
    log(f"data: {args.data}")
    pool = load_pool(args.data)
    embeddings = load_embeddings(pool, args.data)
    points, labels = select_rows(embeddings, pool.labels, args.rows)
    rows = points.shape[0]
    log(f"{rows:,} rows, k={args.k}, paser parameters {params}")

    results: dict[str, dict[str, Any] | None] = {}
    with tempfile.TemporaryDirectory(prefix="paser-bench-") as folder:
        points_path = Path(folder) / "points.npy"
        np.save(points_path, np.ascontiguousarray(points, dtype=np.float32))
        for method in (*CLUSTER_METHODS, "manifold_umap_2d"):
            if method == "dense_diffusion" and rows > DENSE_MAX_ROWS:
                log(f"{method}: skipped, {rows:,} rows > {DENSE_MAX_ROWS:,}")
                results[method] = None
                continue
            outcome = measure(method, points_path, args.k, params)
            predicted = outcome.pop("labels")
            if predicted is not None:
                outcome["nmi"] = float(normalized_mutual_info_score(labels, predicted))
                outcome["homogeneity"] = float(homogeneity_score(labels, predicted))
            results[method] = outcome

    print(format_table(rows, args.k, results))

    def summary(outcome: dict[str, Any] | None, quality: bool) -> dict[str, float] | None:
        if outcome is None:
            return None
        entry = {"seconds": round(outcome["seconds"], 3), "peak_gb": round(outcome["peak_gb"], 3)}
        if quality:
            entry |= {"nmi": round(outcome["nmi"], 4), "homogeneity": round(outcome["homogeneity"], 4)}
        return entry

    report = {
        "rows": rows,
        "k": args.k,
        "methods": {method: summary(results[method], quality=True) for method in CLUSTER_METHODS},
        "manifold_umap_2d": summary(results["manifold_umap_2d"], quality=False),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
