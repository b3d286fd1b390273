"""Concepts of a sample: its most distinctive keyphrases, normalised.

Keyphrases are the uni- and bigrams of content words (runs of words between stop words, as in
RAKE, Rose et al. 2010), stemmed with the Snowball English stemmer and scored by TF-IDF over the
whole pool, so that words every instruction uses ("write", "following") do not count as concepts.
Everything needed ships with scikit-learn and snowballstemmer: nothing is downloaded at run time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import snowballstemmer
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

# Words, and the punctuation that ends a phrase (RAKE splits at phrase delimiters as at stop words);
# a delimiter is one character long, so it closes the current run like a stop word.
_WORD = re.compile(r"[a-z][a-z0-9]*|[.,;:!?()\[\]{}\"|\n]")
_STEMMER = snowballstemmer.stemmer("english")
# Words that carry no concept in instruction data, on top of scikit-learn's English stop words.
_EXTRA_STOP_WORDS = frozenset(
    {"let", "ll", "ve", "re", "use", "using", "given", "make"}
    # what the tokenizer leaves of "n't" contractions ("shouldn't" -> "shouldn", "t")
    | {"ain", "aren", "can", "couldn", "didn", "doesn", "don", "hadn", "hasn", "haven", "isn", "mightn"}
    | {"mustn", "needn", "shan", "shouldn", "wasn", "weren", "won", "wouldn"}
)
STOP_WORDS = frozenset(ENGLISH_STOP_WORDS) | _EXTRA_STOP_WORDS


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    return _STEMMER.stemWord(word)


def candidate_phrases(text: str) -> list[str]:
    """Stemmed unigrams and bigrams inside runs of content words: 'Sort these numbers' -> ['sort', 'number'].

    Runs end at stop words and at punctuation or line breaks, so no bigram crosses a comma or a sentence.
    """
    phrases: list[str] = []
    run: list[str] = []
    for word in [*_WORD.findall(text.lower()), "the"]:  # the trailing stop word closes the last run
        if word in STOP_WORDS or len(word) < 2:
            for index, stem in enumerate(run):
                phrases.append(stem)
                if index + 1 < len(run):
                    phrases.append(f"{stem} {run[index + 1]}")
            run = []
        else:
            run.append(_stem(word))
    return phrases


def extract_concepts(texts: Sequence[str], per_sample: int = 6, min_df: int = 1) -> list[list[str]]:
    """The ``per_sample`` highest TF-IDF keyphrases of each text: tfidf(t, d) = (1 + log tf) * log((1 + n) / (1 + df)).

    Ties are broken alphabetically, so the result is deterministic.
    """
    if per_sample < 1:
        raise ValueError(f"per_sample must be at least 1, got {per_sample}")
    # scikit-learn's TfidfVectorizer adds 1 to every idf, so a phrase in every text would still score
    # (1 + log tf) and could beat a distinctive one; the documented idf, log((1 + n) / (1 + df)), is
    # computed here instead, and phrases of every text (idf 0) are dropped.
    vectorizer = CountVectorizer(analyzer=candidate_phrases, min_df=min_df, dtype=np.float64)
    try:
        matrix = vectorizer.fit_transform(texts).tocsr()
    except ValueError:  # no text holds any content word
        return [[] for _ in texts]
    document_frequency = np.bincount(matrix.indices, minlength=matrix.shape[1])
    idf = np.log((1.0 + matrix.shape[0]) / (1.0 + document_frequency))
    matrix.data = (1.0 + np.log(matrix.data)) * idf[matrix.indices]
    matrix.eliminate_zeros()
    vocabulary = np.asarray(vectorizer.get_feature_names_out())
    concepts = []
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        columns, scores = matrix.indices[start:end], matrix.data[start:end]
        terms = vocabulary[columns]
        order = np.lexsort((terms, -scores))[:per_sample]
        concepts.append(sorted(str(term) for term in terms[order]))
    return concepts
