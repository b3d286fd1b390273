"""Describe clusters for people: distinctive terms and representative examples."""

from __future__ import annotations

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer


def distinctive_terms(texts: list[str], labels: np.ndarray, top_n: int = 6) -> dict[int, list[str]]:
    """Top terms per cluster by class-based TF-IDF: tf_{t,c} * log(1 + mean_words_per_class / f_t).

    The weighting follows c-TF-IDF (Grootendorst, 2022): each cluster is one document, so a term
    scores high when it is frequent in the cluster and rare in the others.
    """
    clusters = np.unique(labels)
    documents = [" ".join(texts[i] for i in np.flatnonzero(labels == c)) for c in clusters]
    vectorizer = CountVectorizer(
        stop_words=list(ENGLISH_STOP_WORDS), ngram_range=(1, 2), token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b", min_df=1
    )
    try:
        counts = vectorizer.fit_transform(documents).toarray().astype(np.float64)
    except ValueError:  # no usable term at all (e.g. only digits)
        return {int(c): [] for c in clusters}
    term_frequency = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)
    mean_words = counts.sum() / len(clusters)
    idf = np.log1p(mean_words / np.maximum(counts.sum(axis=0), 1.0))
    scores = term_frequency * idf
    vocabulary = np.array(vectorizer.get_feature_names_out())
    result = {}
    for row, cluster in enumerate(clusters):
        best = np.argsort(-scores[row], kind="stable")[:top_n]
        result[int(cluster)] = [str(vocabulary[i]) for i in best if scores[row, i] > 0]
    return result


def representative_indices(points: np.ndarray, labels: np.ndarray, per_cluster: int = 3) -> dict[int, list[int]]:
    """Per cluster, the rows nearest to the cluster's mean point (cosine for normalised embeddings)."""
    result = {}
    for cluster in np.unique(labels):
        members = np.flatnonzero(labels == cluster)
        centre = points[members].mean(axis=0)
        distances = np.linalg.norm(points[members] - centre, axis=1)
        result[int(cluster)] = [int(members[i]) for i in np.argsort(distances, kind="stable")[:per_cluster]]
    return result
