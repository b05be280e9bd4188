"""The Chinese world: every English text has a Chinese twin from the same graph, answers agree."""

from __future__ import annotations

import random

import pytest

from xmodal.models.languages import language_prompts
from xmodal.models.rerank import query_parts
from xmodal.models.world import LANGUAGES, ObjectQuery, Query, World, grammar, partial_query, query_text
from xmodal.models.world.language_zh import ANSWERS_ZH, COLOURS_ZH, POSITIONS_ZH, SHAPES_ZH, SIZES_ZH


@pytest.fixture(scope="module")
def twins():
    english, chinese = World(seed=3), World(seed=3, language="zh")
    return [(english.scene(i), chinese.scene(i)) for i in range(200)]


def test_twins_share_graph_split_and_text_counts(twins):
    for en, zh in twins:
        assert (zh.graph, zh.split, zh.id, zh.language) == (en.graph, en.split, en.id, "zh")
        assert len(zh.captions) == len(en.captions)
        assert [q.type for q in zh.questions] == [q.type for q in en.questions]
        assert [q.where for q in zh.questions] == [q.where for q in en.questions]


def test_answers_agree_through_the_mapping(twins):
    for en, zh in twins:
        assert [ANSWERS_ZH[q.answer] for q in en.questions] == [q.answer for q in zh.questions]


def test_canonical_caption_names_every_object_in_reading_order():
    scene = World(seed=3, language="zh").scene(0)
    parts = scene.caption.split("，")
    assert len(parts) == len(scene.graph.objects)
    for part, obj in zip(parts, scene.graph.objects):
        assert (
            part
            == f"{POSITIONS_ZH[obj.position]}一个{SIZES_ZH[obj.size]}的{COLOURS_ZH[obj.colour]}{SHAPES_ZH[obj.shape]}"
        )
    assert scene.caption == grammar("zh").canonical_caption(scene.graph)
    assert not any(c.isascii() for c in "".join(scene.captions))


def test_chinese_text_is_deterministic_and_seeded():
    assert World(seed=3, language="zh").scene(5) == World(seed=3, language="zh").scene(5)
    assert World(seed=3, language="zh").scene(5).captions != World(seed=4, language="zh").scene(5).captions


def test_questions_ask_about_objects_the_caption_names(twins):
    en, zh = twins[0]
    question = next(q for q in zh.questions if q.type == "shape")
    assert question.question.endswith("是什么形状？") and question.answer in SHAPES_ZH.values()


def test_query_text_in_both_languages():
    scene = World(seed=3).scene(1)
    query = partial_query(scene.graph, random.Random(0))
    assert query_text(query, "en") == query.text
    text = query_text(query, "zh")
    assert text and not any(c.isascii() for c in text)
    assert text.count("一个") == len(query.objects)


def test_re_ranking_splits_a_query_into_its_objects_in_both_languages():
    """The world joins a query's objects with each language's conjunction, the one re-ranking splits at."""
    query = Query((ObjectQuery(shape="circle", colour="red"), ObjectQuery(size="small", position="left")))
    for language in LANGUAGES:
        parts = query_parts(language_prompts(language), query_text(query, language))
        assert parts == [query_text(Query((o,)), language) for o in query.objects]


def test_unknown_language_is_refused():
    assert LANGUAGES == ("en", "zh")
    with pytest.raises(ValueError, match="unknown world language"):
        World(language="fr")
