"""Evaluation metrics on hand-made retrievals and predictions whose right answer is obvious."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal.indexer.caption_recall import recall_from_embeddings
from xmodal.models import scores


def test_top_k_ranks_best_first_and_breaks_ties_by_id():
    similarities = np.array([[0.1, 0.9, 0.5, 0.9], [1.0, 0.0, 0.0, 0.0]])
    assert scores.top_k(similarities, 3).tolist() == [[1, 3, 2], [0, 1, 2]]
    assert scores.top_k(similarities, 10).shape == (2, 4)  # k beyond the items: all of them


def test_perfect_and_wrong_retrievals():
    perfect = [[0, 1, 2], [1, 0, 2], [2, 0, 1]]
    wrong = [[1, 2, 0], [2, 1, 0], [0, 1, 2]]
    relevant = [{0}, {1}, {2}]
    assert scores.recall_at_k(perfect, relevant, 1) == 1.0
    assert scores.recall_at_k(wrong, relevant, 1) == 0.0
    assert scores.recall_at_k(wrong, relevant, 2) == pytest.approx(1 / 3)  # only query 1 finds 1 by rank 2
    assert scores.recall_at_k(wrong, relevant, 3) == 1.0


def test_precision_counts_every_relevant_result():
    rankings = [[0, 1, 2, 3], [3, 2, 1, 0]]
    relevant = [{0, 1}, {0}]
    assert scores.precision_at_k(rankings, relevant, 1) == 0.5  # query 0 hit, query 1 miss
    assert scores.precision_at_k(rankings, relevant, 2) == 0.5  # 2/2 and 0/2
    assert scores.precision_at_k(rankings, relevant, 4) == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert scores.precision_at_k([[0]], [{0}], 5) == 0.2  # missing places are misses


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        scores.recall_at_k([[0]], [{0}, {1}], 1)
    with pytest.raises(ValueError):
        scores.precision_at_k([[0]], [{0}], 0)
    assert scores.recall_at_k([], [], 1) == 0.0


def test_caption_exact_match_and_token_f1():
    assert scores.exact_match("A red circle .", "a red circle")
    assert not scores.exact_match("a red circle on the left", "a red circle")
    assert scores.token_f1("a red circle", "a red circle") == 1.0
    assert scores.token_f1("blue square", "a red circle") == 0.0
    # 2 of 3 predicted words are right, 2 of 4 wanted words are found: P=2/3, R=1/2
    assert scores.token_f1("a red star", "a red large circle") == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert scores.token_f1("", "") == 1.0 and scores.token_f1("", "red") == 0.0


def test_accuracy_by_type():
    accuracy = scores.accuracy_by_type(
        ["red", "2", "no", "Yes"], ["red", "3", "no", "yes"], ["colour", "count", "presence", "presence"]
    )
    assert accuracy == {"all": 0.75, "colour": 1.0, "count": 0.0, "presence": 1.0}
    with pytest.raises(ValueError):
        scores.accuracy_by_type(["red"], [], [])


def test_index_recall_both_ways_from_embeddings():
    images = np.eye(3, dtype=np.float32)
    # Two captions per image; caption 5 (of image 2) points at image 0 instead.
    texts = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.1, 0.9, 0], [0, 0, 1], [1, 0, 0]], np.float32)
    owner = np.array([0, 0, 1, 1, 2, 2])
    result = recall_from_embeddings(images, texts, owner, ks=(1, 3))
    assert result["t2i_r@1"] == pytest.approx(5 / 6)
    assert result["t2i_r@3"] == 1.0
    assert result["i2t_r@1"] == 1.0  # image 2 still finds caption 4 first
    assert result["images"] == 3 and result["texts"] == 6

    shuffled = recall_from_embeddings(images, texts, np.array([1, 2, 0, 2, 0, 1]), ks=(1,))
    assert shuffled["t2i_r@1"] == 0.0 and shuffled["i2t_r@1"] == 0.0
