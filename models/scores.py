"""Retrieval and generation metrics: pure functions over rankings and strings.

A ranking is a sequence of item ids, best first; `relevant` gives, per query, the ids that
count as a hit. Texts are compared after `normalise_text` (lower case, punctuation dropped,
whitespace collapsed), so a detokenised "a red circle ." matches "A red circle".
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence

import numpy as np

Rankings = Sequence[Sequence[int]] | np.ndarray  # per query, item ids best first (top_k's answer)

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row of a (queries, items) score matrix, the ids of the k best items, best first.

    Ties go to the lower id, so results are deterministic.
    """
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    # A stable sort of the negated scores keeps equal scores in id order.
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def recall_at_k(rankings: Rankings, relevant: Sequence[Collection[int]], k: int) -> float:
    """Share of queries with at least one relevant item among their first k results."""
    _check(rankings, relevant, k)
    if len(rankings) == 0:
        return 0.0
    return sum(any(i in rel for i in list(ranking)[:k]) for ranking, rel in zip(rankings, relevant)) / len(rankings)


def precision_at_k(rankings: Rankings, relevant: Sequence[Collection[int]], k: int) -> float:
    """Mean over queries of the share of the first k results that are relevant.

    A ranking shorter than k counts its missing places as misses.
    """
    _check(rankings, relevant, k)
    if len(rankings) == 0:
        return 0.0
    return sum(sum(i in rel for i in list(ranking)[:k]) / k for ranking, rel in zip(rankings, relevant)) / len(rankings)


def normalise_text(text: str) -> str:
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def exact_match(prediction: str, reference: str) -> bool:
    return normalise_text(prediction) == normalise_text(reference)


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the overlap between the two bags of words (SQuAD's token F1)."""
    predicted, wanted = normalise_text(prediction).split(), normalise_text(reference).split()
    if not predicted or not wanted:
        return float(predicted == wanted)
    common = sum((Counter(predicted) & Counter(wanted)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(wanted)
    return 2 * precision * recall / (precision + recall)


def accuracy_by_type(predictions: Sequence[str], answers: Sequence[str], types: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy per question type, plus "all" over every question."""
    if not len(predictions) == len(answers) == len(types):
        raise ValueError("predictions, answers and types must have the same length")
    hits: dict[str, list[bool]] = defaultdict(list)
    for prediction, answer, kind in zip(predictions, answers, types):
        hit = exact_match(prediction, answer)
        hits[kind].append(hit)
        hits["all"].append(hit)
    return {kind: sum(h) / len(h) for kind, h in sorted(hits.items())}


def _check(rankings: Rankings, relevant: Sequence[Collection[int]], k: int) -> None:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(rankings) != len(relevant):
        raise ValueError(f"{len(rankings)} rankings but {len(relevant)} relevance sets")
