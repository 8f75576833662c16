"""Scores of answer texts against reference answers (``segearth test`` for models that answer in words).

Both texts are normalised (lower case, punctuation and articles dropped, whitespace collapsed), as in SQuAD's
evaluation: ``answer_exact`` is the share of answers equal to their reference, ``answer_f1`` the mean token F1
(precision and recall of the answer's words against the reference's, counted with multiplicity).
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> list[str]:
    """The words of ``text`` after normalisation."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split()


def token_f1(answer: str, reference: str) -> float:
    """Token F1 of ``answer`` against ``reference`` (1 when both are empty after normalisation)."""
    said, wanted = normalise(answer), normalise(reference)
    if not said or not wanted:
        return float(said == wanted)
    common = sum((Counter(said) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(said), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def answer_scores(answers: list[str], references: list[str]) -> dict[str, float]:
    """``answer_exact`` and ``answer_f1`` over paired lists (and their count ``answer_n``)."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers for {len(references)} references")
    if not answers:
        return {}
    exact = [normalise(a) == normalise(r) for a, r in zip(answers, references, strict=True)]
    f1 = [token_f1(a, r) for a, r in zip(answers, references, strict=True)]
    return {"answer_exact": sum(exact) / len(exact), "answer_f1": sum(f1) / len(f1), "answer_n": float(len(exact))}
