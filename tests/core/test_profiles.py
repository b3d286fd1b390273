"""Distinctive terms and representative members of clusters (paser_assets.core.profiles)."""

from __future__ import annotations

import numpy as np

from paser_assets.core.profiles import distinctive_terms, representative_indices

CAPITALS = [
    "What is the capital city of France?",
    "Name the capital city of Japan.",
    "Which city is the capital of Peru?",
    "Tell me the capital city of Kenya.",
    "What is the capital of Norway? Give the city.",
]
SORTING = [
    "Sort these numbers in ascending order: 5, 3, 9.",
    "Sort the following numbers from smallest to largest: 12, 4, 7.",
    "Please sort numbers 8, 1, 6 in ascending order.",
    "Sort these numbers descending: 2, 10, 4.",
]


def test_distinctive_terms_pick_the_words_that_set_clusters_apart():
    texts = CAPITALS + SORTING
    labels = np.array([0] * len(CAPITALS) + [1] * len(SORTING))
    terms = distinctive_terms(texts, labels, top_n=6)
    assert set(terms) == {0, 1}
    assert {"capital", "city", "capital city"} <= set(terms[0])
    assert {"sort", "numbers"} <= set(terms[1])
    assert not {"sort", "numbers", "ascending"} & set(terms[0])
    assert not {"capital", "city"} & set(terms[1])
    assert all(len(found) <= 6 for found in terms.values())
    # Stop words and numbers are never terms.
    for found in terms.values():
        assert not {"the", "what", "these", "of"} & set(found)
        assert all(not any(ch.isdigit() for ch in term) for term in found)


def test_distinctive_terms_rank_frequent_cluster_words_first():
    texts = CAPITALS + SORTING
    labels = np.array([0] * len(CAPITALS) + [1] * len(SORTING))
    terms = distinctive_terms(texts, labels, top_n=2)
    # The words of every member outrank the words of one member (France, ascending, ...).
    assert set(terms[0]) == {"capital", "city"}
    assert set(terms[1]) == {"sort", "numbers"}
    # Equal scores keep the vocabulary's (alphabetical) order, so the result is deterministic.
    assert terms == distinctive_terms(list(texts), labels.copy(), top_n=2)
    assert terms[1] == ["numbers", "sort"]


def test_distinctive_terms_keep_arbitrary_label_ids_and_interleaved_rows():
    texts = [text for pair in zip(CAPITALS, SORTING, strict=False) for text in pair] + [CAPITALS[-1]]
    labels = np.array([7, 3] * len(SORTING) + [7])
    terms = distinctive_terms(texts, labels, top_n=3)
    assert set(terms) == {3, 7}
    assert "capital" in terms[7] and "sort" in terms[3]


def test_distinctive_terms_without_usable_words():
    terms = distinctive_terms(["123 456", "7 8 9", "42"], np.array([0, 1, 1]))
    assert terms == {0: [], 1: []}


def test_distinctive_terms_score_zero_terms_are_left_out():
    # A cluster of only stop words and digits has no term, while the other still has its own.
    terms = distinctive_terms(["the of and 12", "capital city capital"], np.array([0, 1]))
    assert terms[0] == []
    assert terms[1][:2] == ["capital", "capital city"]


def test_representative_indices_are_the_members_nearest_the_mean():
    points = np.array(
        [
            [0.0, 0.0],  # 0: cluster 0, at its mean
            [10.0, 10.0],  # 1: cluster 1
            [2.0, 0.0],  # 2: cluster 0, distance 2
            [-3.0, 0.0],  # 3: cluster 0, distance 3 (with 6: mean stays at 0)
            [11.0, 10.0],  # 4: cluster 1
            [0.0, 1.0],  # 5: cluster 0, distance 1
            [1.0, -1.0],  # 6: cluster 0, distance sqrt 2
            [40.0, 10.0],  # 7: cluster 1, an outlier
        ]
    )
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 1])
    assert points[labels == 0].mean(axis=0).tolist() == [0.0, 0.0]
    result = representative_indices(points, labels, per_cluster=3)
    assert result[0] == [0, 5, 6]
    # Cluster 1's mean is (20.33, 10): the two close points are nearer than the outlier.
    assert result[1] == [4, 1, 7]
    assert representative_indices(points, labels, per_cluster=1) == {0: [0], 1: [4]}


def test_representative_indices_with_small_clusters_and_ties():
    points = np.array([[1.0, 0.0], [-1.0, 0.0], [5.0, 5.0]])
    result = representative_indices(points, np.array([4, 4, 9]), per_cluster=5)
    # Equal distances keep the row order; a cluster smaller than per_cluster returns all members.
    assert result == {4: [0, 1], 9: [2]}


def test_representative_indices_on_normalised_embeddings():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    members = centre + 0.3 * rng.normal(size=(20, 16))
    members /= np.linalg.norm(members, axis=1, keepdims=True)
    result = representative_indices(members, np.zeros(20, dtype=int), per_cluster=4)
    mean = members.mean(axis=0)
    cosine = members @ mean / np.linalg.norm(mean)
    # For unit vectors, the nearest to the mean are the most cosine-similar to it.
    assert result[0] == np.argsort(-cosine, kind="stable")[:4].tolist()
