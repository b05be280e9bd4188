"""The Chinese grammar: the same scene graph rendered as 中文 captions, questions and answers.

Every function mirrors its English twin in language.py and draws from the random generator in
the same order, so `captions_zh(graph, rng)` followed by `questions_zh(graph, rng)` asks the same
questions about the same objects as the English pair would from an equal generator: the two
languages are twins, scene for scene, and ANSWERS_ZH maps each English answer to its Chinese one.
The canonical caption uses Chinese punctuation ("，" between objects), which a world tokenizer
decodes back exactly (docs/decisions/bilingual-world.md).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from xmodal.models.languages import language_prompts
from xmodal.models.world.language import NOWHERE, QA, _matching_fields, places, presence_queries, query_places
from xmodal.models.world.scene import COLOURS, SHAPES, SceneGraph, SceneObject

if TYPE_CHECKING:
    from xmodal.models.world.query import Query

COLOURS_ZH = {"red": "红色", "orange": "橙色", "yellow": "黄色", "green": "绿色", "blue": "蓝色", "purple": "紫色"}
SHAPES_ZH = {"circle": "圆形", "square": "方形", "triangle": "三角形", "star": "星形"}
SIZES_ZH = {"small": "小", "large": "大"}
POSITIONS_ZH = {"top": "上面", "left": "左边", "centre": "中间", "right": "右边", "bottom": "下面"}
COUNTS_ZH = ("零个", "一个", "两个", "三个")
ANY_SHAPE_ZH = "图形"
# Every English answer's Chinese twin; the Chinese answers are a closed set too.
ANSWERS_ZH: dict[str, str] = {
    **COLOURS_ZH,
    **SHAPES_ZH,
    **SIZES_ZH,
    **POSITIONS_ZH,
    "yes": language_prompts("zh").presence_answers[0],
    "no": language_prompts("zh").presence_answers[1],
    **{str(n): word for n, word in enumerate(COUNTS_ZH)},
}

# Every word the grammar writes, so a tokenizer can segment its text (Chinese has no spaces).
WORDS_ZH: tuple[str, ...] = tuple(
    dict.fromkeys(
        (
            *COLOURS_ZH.values(),
            *SHAPES_ZH.values(),
            *SIZES_ZH.values(),
            *POSITIONS_ZH.values(),
            *COUNTS_ZH,
            ANY_SHAPE_ZH,
            *("一个", "有", "没有", "在", "的", "是", "什么", "颜色", "形状", "还是", "哪里", "几个", "一共", "吗"),
        )
    )
)


def object_phrase_zh(obj: SceneObject) -> str:
    """ "左边一个大的红色圆形": where, then what."""
    return f"{POSITIONS_ZH[obj.position]}一个{_described(obj.size, obj.colour, obj.shape)}"


def canonical_caption_zh(graph: SceneGraph) -> str:
    """Objects in reading order, joined by "，"; the twin of language.canonical_caption."""
    return "，".join(object_phrase_zh(o) for o in graph.objects)


def captions_zh(graph: SceneGraph, rng: random.Random) -> tuple[str, ...]:
    """The canonical caption first, then paraphrases; the same draws as language.captions."""

    def shuffled() -> list[SceneObject]:
        return rng.sample(graph.objects, len(graph.objects))

    n = len(graph.objects)
    return (
        canonical_caption_zh(graph),
        "，".join(object_phrase_zh(o) for o in shuffled()),
        "，".join(f"{POSITIONS_ZH[o.position]}有一个{_described(o.size, o.colour, o.shape)}" for o in shuffled()),
        "，".join(f"一个{_described(o.size, o.colour, o.shape)}在{POSITIONS_ZH[o.position]}" for o in shuffled()),
        f"{COUNTS_ZH[n]}图形："
        + "、".join(f"{POSITIONS_ZH[o.position]}的{_described(o.size, o.colour, o.shape)}" for o in shuffled()),
    )


def questions_zh(graph: SceneGraph, rng: random.Random) -> tuple[QA, ...]:
    """The twins of language.questions, in the same order, with Chinese answers."""
    qas: list[QA] = []
    for obj in graph.objects:
        ref = _reference_zh(graph, obj, omit="colour")
        here = (obj.position,)
        qas.append(QA(f"{ref}是什么颜色？", COLOURS_ZH[obj.colour], "colour", here))
        qas.append(QA(f"{POSITIONS_ZH[obj.position]}是什么形状？", SHAPES_ZH[obj.shape], "shape", here))
        ref = _reference_zh(graph, obj, omit="size")
        qas.append(QA(f"{ref}是大还是小？", SIZES_ZH[obj.size], "size", here))
        ref = _reference_zh(graph, obj, omit="position")
        if ref is not None:
            qas.append(QA(f"{ref}在哪里？", POSITIONS_ZH[obj.position], "position", here))

    shape = rng.choice(SHAPES)
    qas.append(QA(f"有几个{SHAPES_ZH[shape]}？", COUNTS_ZH[graph.count(shape=shape)], "count", places(graph, shape)))
    colour = rng.choice(tuple(COLOURS))
    counted = places(graph, colour=colour)
    qas.append(QA(f"有几个{COLOURS_ZH[colour]}的图形？", COUNTS_ZH[graph.count(colour=colour)], "count", counted))
    qas.append(QA("一共有几个图形？", COUNTS_ZH[len(graph.objects)], "count", places(graph)))

    present, absent = presence_queries(graph, rng)
    prompts = language_prompts("zh")
    asked, (yes, no) = prompts.presence_question, prompts.presence_answers
    qas.append(QA(asked.format(query=query_text_zh(present)), yes, "presence", query_places(graph, present)))
    if absent is not None:
        qas.append(QA(asked.format(query=query_text_zh(absent)), no, "presence", (NOWHERE,)))
    return tuple(qas)


def query_text_zh(query: Query) -> str:
    """A partial query in Chinese: "一个红色圆形和左边一个大的图形"."""
    return language_prompts("zh").conjunction.join(
        query_object_zh(o.shape, o.colour, o.size, o.position) for o in query.objects
    )


def query_object_zh(shape: str | None, colour: str | None, size: str | None, position: str | None) -> str:
    """One object of a partial query: "左边一个大的图形", "一个红色圆形"."""
    where = POSITIONS_ZH[position] if position is not None else ""
    return f"{where}一个{_described(size, colour, shape)}"


def _described(size: str | None, colour: str | None, shape: str | None) -> str:
    """ "大的红色圆形", "红色圆形", "大的图形": size with 的, then colour, then the shape (or 图形)."""
    words = f"{SIZES_ZH[size]}的" if size is not None else ""
    if colour is not None:
        words += COLOURS_ZH[colour]
    return words + (SHAPES_ZH[shape] if shape is not None else ANY_SHAPE_ZH)


def _reference_zh(graph: SceneGraph, obj: SceneObject, omit: str) -> str | None:
    """The shortest phrase naming obj alone ("红色的三角形", "左边的三角形"), as language._reference picks it."""
    fields = _matching_fields(graph, obj, omit)
    if fields is None:
        return None
    where = f"{POSITIONS_ZH[obj.position]}的" if "position" in fields else ""
    size = f"{SIZES_ZH[obj.size]}的" if "size" in fields else ""
    colour = COLOURS_ZH[obj.colour] + ("" if size else "的") if "colour" in fields else ""
    return where + size + colour + SHAPES_ZH[obj.shape]
