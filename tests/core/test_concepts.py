"""Keyphrase concepts of a sample: candidate phrases and pool-wide TF-IDF (paser_assets.core.concepts)."""

from __future__ import annotations

import math

import pytest

from paser_assets.core.concepts import STOP_WORDS, candidate_phrases, extract_concepts

# -- candidate_phrases


def test_stop_words_are_removed_and_words_stemmed() -> None:
    assert candidate_phrases("Sort these numbers in ascending order") == [
        "sort",
        "number",
        "ascend",
        "ascend order",
        "order",
    ]


@pytest.mark.parametrize(
    ("word", "stem"),
    [("numbers", "number"), ("running", "run"), ("cities", "citi"), ("reverses", "revers"), ("sorted", "sort")],
)
def test_words_are_snowball_stemmed(word: str, stem: str) -> None:
    assert candidate_phrases(word) == [stem]


def test_bigrams_only_join_adjacent_content_words() -> None:
    phrases = candidate_phrases("Translate the French poem into English prose")
    unigrams = [p for p in phrases if " " not in p]
    bigrams = [p for p in phrases if " " in p]
    assert unigrams == ["translat", "french", "poem", "english", "prose"]
    # "the" and "into" close the runs: no bigram crosses a stop word
    assert bigrams == ["french poem", "english prose"]
    assert "translat french" not in phrases and "poem english" not in phrases


def test_a_run_of_three_words_gives_two_bigrams_not_a_trigram() -> None:
    assert candidate_phrases("binary search tree") == [
        "binari",
        "binari search",
        "search",
        "search tree",
        "tree",
    ]


def test_case_does_not_matter_and_numbers_inside_words_stay() -> None:
    assert candidate_phrases("PYTHON Code") == candidate_phrases("python code") == ["python", "python code", "code"]
    assert "mp3" in candidate_phrases("Convert the mp3 file")


@pytest.mark.parametrize(
    ("text", "crossing"),
    [
        ("apples, oranges", "appl orang"),
        ("Reverse the linked list. Print results", "list print"),
        ("Sort numbers; output ascending", "number output"),
        ("Sort numbers\nApples pears", "number appl"),  # instruction and input are joined by a line break
        ("Rate (movie review)", "rate movi"),
    ],
)
def test_punctuation_and_line_breaks_end_a_run(text: str, crossing: str) -> None:
    phrases = candidate_phrases(text)
    assert crossing not in phrases
    assert all(word in phrases for word in crossing.split())


@pytest.mark.parametrize(
    "text",
    [
        "Don't do it",
        "It doesn't, isn't, didn't and won't",
        "You shouldn't, couldn't or wouldn't",
        "They weren't, aren't, hasn't, wasn't, hadn't, haven't",
        "We mustn't and needn't; it ain't so",
        "I'm sure we'll go, they've said they're here, she'd say it's so",
        "Don\u2019t panic, it\u2019s fine",  # typographic apostrophes
    ],
)
def test_apostrophe_fragments_never_become_concepts(text: str) -> None:
    phrases = candidate_phrases(text)
    fragments = {"don", "doesn", "isn", "didn", "won", "shouldn", "couldn", "wouldn", "weren", "aren"}
    fragments |= {"hasn", "wasn", "hadn", "haven", "mustn", "needn", "ain", "t", "s", "m", "ll", "ve", "re", "d"}
    assert not any(word in fragments for phrase in phrases for word in phrase.split()), phrases


def test_contractions_break_runs_like_stop_words() -> None:
    assert candidate_phrases("Panic doesn't help") == ["panic", "help"]
    assert candidate_phrases("Don\u2019t panic, it\u2019s fine") == ["panic", "fine"]


def test_text_without_content_words_gives_nothing() -> None:
    assert candidate_phrases("") == []
    assert candidate_phrases("the of and to a I") == []
    assert candidate_phrases("!!! ... 42 7") == []  # tokens must start with a letter


def test_every_phrase_word_is_a_stemmed_content_word() -> None:
    text = "Summarize the following article about renewable energy policies in three sentences."
    for phrase in candidate_phrases(text):
        words = phrase.split()
        assert 1 <= len(words) <= 2
        assert not set(words) & STOP_WORDS


# -- extract_concepts

POOL = [
    "Write a Python function that reverses a linked list.",
    "Write a haiku about autumn leaves falling in the forest.",
    "Write a SQL query that counts the orders per customer.",
    "Explain photosynthesis to a ten year old child.",
    "Translate the sentence into French: the cat sleeps on the warm windowsill.",
    "Write a short story about a dragon guarding a library of forgotten books.",
]


@pytest.mark.parametrize("per_sample", [1, 2, 3, 6, 50])
def test_per_sample_is_respected(per_sample: int) -> None:
    concepts = extract_concepts(POOL, per_sample=per_sample)
    assert len(concepts) == len(POOL)
    for text, row in zip(POOL, concepts, strict=True):
        assert len(row) <= per_sample
        assert len(row) == len(set(row)), row
        assert row == sorted(row)
        assert set(row) <= set(candidate_phrases(text))
    if per_sample <= 3:  # every text has at least three distinctive phrases
        assert all(len(row) == per_sample for row in concepts)


def test_extraction_is_deterministic_and_independent_of_text_order() -> None:
    first = extract_concepts(POOL, per_sample=4)
    assert extract_concepts(list(POOL), per_sample=4) == first
    reversed_pool = extract_concepts(POOL[::-1], per_sample=4)
    assert reversed_pool[::-1] == first


def test_a_word_in_every_text_is_never_picked_over_rarer_ones() -> None:
    # "widget" is repeated (high term frequency) but occurs in every text: it is not distinctive
    texts = ["widget widget widget, alpha", "widget widget widget, beta", "widget widget widget, gamma"]
    assert extract_concepts(texts, per_sample=1) == [["alpha"], ["beta"], ["gamma"]]
    for row in extract_concepts(texts, per_sample=5):
        assert "widget" not in row


def test_instruction_boilerplate_loses_to_topic_words() -> None:
    # "write" opens four of six instructions; the topic words are rarer
    concepts = extract_concepts(POOL, per_sample=2)
    assert all(row and "write" not in row for row in concepts)
    # the rest of the first text's phrases occur once in the pool: equal scores, alphabetical order
    assert concepts[0] == ["function", "link"]
    # each row holds phrases of its own text only
    for text, row in zip(POOL, concepts, strict=True):
        assert set(row) <= set(candidate_phrases(text)) - {"write"}


def test_rarer_phrases_rank_higher_at_equal_term_frequency() -> None:
    # "apple" is in two texts, "kiwi" in one: in the first text kiwi is the more distinctive word
    texts = ["apple, kiwi", "apple, mango", "plum, pear"]
    assert extract_concepts(texts, per_sample=1)[0] == ["kiwi"]


def test_repeated_words_outscore_single_mentions_with_sublinear_tf() -> None:
    texts = ["alpha, alpha, alpha, alpha, beta", "gamma", "delta"]
    assert extract_concepts(texts, per_sample=1)[0] == ["alpha"]


def test_scores_follow_the_documented_formula() -> None:
    # tfidf = (1 + ln tf) * ln((1 + n) / (1 + df)): "rare" (tf 1, df 1) scores ln 2 = 0.69; "common" (tf 3, df 2)
    # scores (1 + ln 3) * ln(4 / 3) = 0.60, so the rarer word wins despite its lower term frequency
    assert (1 + math.log(3)) * math.log(4 / 3) < math.log(2)
    texts = ["common, common, common, rare", "common", "other"]  # commas: no "common common" bigram
    assert extract_concepts(texts, per_sample=1)[0] == ["rare"]
    # with tf 4 the common word scores (1 + ln 4) * ln(4 / 3) = 0.68, still below ln 2; with tf 5 it wins
    assert extract_concepts(["common, " * 5 + "rare", "common", "other"], 1)[0] == ["common"]


def test_ties_are_broken_alphabetically() -> None:
    texts = ["zeta, alpha, mu", "omega", "kappa"]
    assert extract_concepts(texts, per_sample=2)[0] == ["alpha", "mu"]


def test_texts_without_content_give_empty_lists() -> None:
    assert extract_concepts([], per_sample=3) == []
    assert extract_concepts(["", "the of and", "!!!"], per_sample=3) == [[], [], []]
    concepts = extract_concepts(["", "Compile the kernel module", "the of and"], per_sample=3)
    assert concepts[0] == [] and concepts[2] == []
    assert concepts[1] and all(phrase in candidate_phrases("Compile the kernel module") for phrase in concepts[1])


@pytest.mark.parametrize("per_sample", [0, -1])
def test_per_sample_below_one_raises(per_sample: int) -> None:
    with pytest.raises(ValueError, match="per_sample"):
        extract_concepts(POOL, per_sample=per_sample)
