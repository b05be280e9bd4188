"""Search re-ranking's own rules: which parts of a query are asked, and how the two scores make one order."""

from __future__ import annotations

import pytest

from xmodal.models.languages import language_prompts
from xmodal.models.rerank import COSINE_WEIGHT, query_parts, rerank_order


def test_a_query_is_asked_a_part_at_a_time():
    english, chinese = language_prompts("en"), language_prompts("zh")
    assert query_parts(english, "a red circle and a small star on the left") == [
        "a red circle",
        "a small star on the left",
    ]
    assert query_parts(english, " and a red circle and ") == ["a red circle"]
    assert query_parts(english, "a sandy beach") == ["a sandy beach"]
    assert query_parts(chinese, "一个红色圆形和左边一个星形") == ["一个红色圆形", "左边一个星形"]


def test_the_order_adds_the_weighted_cosine_to_the_match():
    assert COSINE_WEIGHT == 5.0
    # The second is likelier yes (-0.1 against -0.2), but the first's cosine is 0.1 higher: 0.5 > 0.1.
    assert rerank_order([-0.2, -0.1], [0.3, 0.2]) == [0, 1]
    assert rerank_order([-0.2, -0.1], [0.2, 0.2]) == [1, 0]
    assert rerank_order([-1.0, -1.0, 0.0], [0.2, 0.2, 0.0]) == [0, 1, 2]  # ties keep the given order
    with pytest.raises(ValueError):
        rerank_order([0.0], [0.1, 0.2])
