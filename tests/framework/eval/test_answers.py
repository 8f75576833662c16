"""Answer-text scores: normalisation, token F1 with multiplicity, exact match."""

from __future__ import annotations

import pytest

from framework.eval.answers import answer_scores, normalise, token_f1


def test_normalise_drops_case_punctuation_and_articles() -> None:
    assert normalise("The two fields, in the TOP of an image.") == ["two", "fields", "in", "top", "of", "image"]


def test_token_f1_counts_words_with_multiplicity() -> None:
    assert token_f1("The lake in the north.", "the lake in the north") == 1.0
    # said: lake lake north (3), wanted: lake north east (3), common: lake + north = 2
    assert token_f1("lake lake north", "lake north east") == pytest.approx(2 / 3)
    assert token_f1("roads", "the lake") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("the", "lake") == 0.0


def test_answer_scores_average_over_pairs() -> None:
    scores = answer_scores(["The lake.", "two roads", "a field"], ["the lake", "two roads here", "forest"])
    assert scores["answer_exact"] == pytest.approx(1 / 3) and scores["answer_n"] == 3
    assert scores["answer_f1"] == pytest.approx((1 + 0.8 + 0) / 3)
    assert answer_scores([], []) == {}
    with pytest.raises(ValueError, match="2 answers for 1 references"):
        answer_scores(["a", "b"], ["a"])
