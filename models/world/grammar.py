"""The world's languages: which grammar renders a scene graph's text in each.

English (language.py) and Chinese (language_zh.py) render the same graph; `grammar(language)` picks
one, so the world, training examples and the evaluation ask for text in a language without knowing
either grammar. A query is data (query.py), rendered here in any language.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from xmodal.models.world import language, language_zh
from xmodal.models.world.language import QA
from xmodal.models.world.query import Query
from xmodal.models.world.scene import SceneGraph

LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class Grammar:
    language: str
    canonical_caption: Callable[[SceneGraph], str]
    captions: Callable[[SceneGraph, random.Random], tuple[str, ...]]
    questions: Callable[[SceneGraph, random.Random], tuple[QA, ...]]
    answers: dict[str, str]  # English answer -> this language's


GRAMMARS = {
    "en": Grammar(
        "en", language.canonical_caption, language.captions, language.questions, {a: a for a in language.ANSWERS}
    ),
    "zh": Grammar(
        "zh",
        language_zh.canonical_caption_zh,
        language_zh.captions_zh,
        language_zh.questions_zh,
        language_zh.ANSWERS_ZH,
    ),
}


def grammar(name: str) -> Grammar:
    if name not in GRAMMARS:
        raise ValueError(f"unknown world language {name!r}: use one of {', '.join(LANGUAGES)}")
    return GRAMMARS[name]


def query_text(query: Query, name: str = "en") -> str:
    """A query's text in a language: "a red circle and a large shape on the left" / "一个红色圆形和左边一个大的图形"."""
    if grammar(name).language == "en":
        return query.text
    return language_zh.query_text_zh(query)
