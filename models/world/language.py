"""Captions and question/answer pairs rendered from a scene graph.

Everything here reads the graph only, so the text agrees with the image by construction.
The canonical caption has no punctuation, so a decoder's detokenised output can match it
exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xmodal.models.languages import language_prompts
from xmodal.models.world.scene import COLOURS, POSITIONS, SHAPES, SIZES, SceneGraph, SceneObject

if TYPE_CHECKING:
    from xmodal.models.world.query import Query

POSITION_PHRASES = {
    "top": "at the top",
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
    "bottom": "at the bottom",
}
NUMBER_WORDS = ("zero", "one", "two", "three")
# The place of an answer about no object: the background, where no object ever is.
NOWHERE = "nowhere"
QUESTION_TYPES = ("colour", "shape", "size", "position", "count", "presence")
# Every answer is one word from this closed set.
ANSWERS = frozenset((*SHAPES, *COLOURS, *SIZES, *POSITIONS, "yes", "no", "0", "1", "2", "3"))


@dataclass(frozen=True)
class QA:
    question: str
    answer: str
    type: str  # one of QUESTION_TYPES
    # Where the answer is read from (a "where to look" for training): the positions of the objects it
    # is about, or (NOWHERE,) when no object is (an absent one, a count of 0).
    where: tuple[str, ...] = ()


def object_phrase(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.colour} {obj.shape} {POSITION_PHRASES[obj.position]}"


def canonical_caption(graph: SceneGraph) -> str:
    """The one caption a captioner should produce: objects in reading order, joined by 'and'."""
    return " and ".join(object_phrase(o) for o in graph.objects)


def captions(graph: SceneGraph, rng: random.Random) -> tuple[str, ...]:
    """The canonical caption first, then paraphrases (other orders and templates)."""

    def shuffled() -> list[SceneObject]:
        return rng.sample(graph.objects, len(graph.objects))

    n = len(graph.objects)
    count = f"{NUMBER_WORDS[n]} shape{'s' if n > 1 else ''}"
    return (
        canonical_caption(graph),
        " and ".join(object_phrase(o) for o in shuffled()),
        "there is " + " and ".join(object_phrase(o) for o in shuffled()),
        " and ".join(f"{POSITION_PHRASES[o.position]} a {o.size} {o.colour} {o.shape}" for o in shuffled()),
        f"{count}: " + ", ".join(f"{o.size} {o.colour} {o.shape} {POSITION_PHRASES[o.position]}" for o in shuffled()),
    )


def questions(graph: SceneGraph, rng: random.Random) -> tuple[QA, ...]:
    """Questions with unambiguous answers: every referring expression picks out exactly one object."""
    qas: list[QA] = []
    for obj in graph.objects:
        ref = _reference(graph, obj, omit="colour")
        here = (obj.position,)
        qas.append(QA(f"what colour is {ref}?", obj.colour, "colour", here))
        qas.append(QA(f"what shape is {POSITION_PHRASES[obj.position]}?", obj.shape, "shape", here))
        ref = _reference(graph, obj, omit="size")
        qas.append(QA(f"what size is {ref}?", obj.size, "size", here))
        ref = _reference(graph, obj, omit="position")
        if ref is not None:  # two identical objects: "where is the ..." has no single answer
            qas.append(QA(f"where is {ref}?", obj.position, "position", here))

    shape = rng.choice(SHAPES)
    qas.append(QA(f"how many {shape}s are there?", str(graph.count(shape=shape)), "count", places(graph, shape)))
    colour = rng.choice(tuple(COLOURS))
    counted = places(graph, colour=colour)
    qas.append(QA(f"how many {colour} shapes are there?", str(graph.count(colour=colour)), "count", counted))
    qas.append(QA("how many shapes are there?", str(len(graph.objects)), "count", places(graph)))

    present, absent = presence_queries(graph, rng)
    asked = language_prompts("en").presence_question
    qas.append(QA(asked.format(query=present.text), "yes", "presence", query_places(graph, present)))
    if absent is not None:
        qas.append(QA(asked.format(query=absent.text), "no", "presence", (NOWHERE,)))
    return tuple(qas)


def presence_queries(graph: SceneGraph, rng: random.Random) -> tuple[Query, Query | None]:
    """What the presence questions ask about: a one-object partial query the scene satisfies, and one it does
    not (None when none was found). Search re-ranking asks about a query one object at a time
    (models/rerank.py): asked whole, two-object questions stayed near chance (0.57) in the training budget."""
    from xmodal.models.world.query import absent_query, partial_query  # query.py renders text with this module

    return partial_query(graph, rng, max_objects=1), absent_query(graph, rng, max_objects=1)


def query_places(graph: SceneGraph, query: Query) -> tuple[str, ...]:
    """The positions of the objects that match an object of the query, or (NOWHERE,) when none does."""
    return tuple(o.position for o in graph.objects if any(q.matches(o) for q in query.objects)) or (NOWHERE,)


def places(graph: SceneGraph, shape: str | None = None, colour: str | None = None) -> tuple[str, ...]:
    """The positions of the objects of this shape and colour (None: any), or (NOWHERE,) when none is."""
    return tuple(o.position for o in graph.matching(shape, colour)) or (NOWHERE,)


# Referring expressions, shortest first; the position form always succeeds (positions are unique).
_REFERENCE_FIELDS = (
    ("shape",),
    ("colour", "shape"),
    ("size", "shape"),
    ("size", "colour", "shape"),
    ("shape", "position"),
)


def _reference(graph: SceneGraph, obj: SceneObject, omit: str) -> str | None:
    """The shortest 'the ...' phrase naming obj alone, without the attribute being asked about."""
    fields = _matching_fields(graph, obj, omit)
    if fields is None:
        return None
    phrase = "the " + " ".join(getattr(obj, f) for f in fields if f != "position")
    if "position" in fields:
        phrase += " " + POSITION_PHRASES[obj.position]
    return phrase


def _matching_fields(graph: SceneGraph, obj: SceneObject, omit: str) -> tuple[str, ...] | None:
    """The first of _REFERENCE_FIELDS, without `omit`, that only obj matches (None: none does).
    Every language's grammar names the object by these fields, so the references agree."""
    for fields in _REFERENCE_FIELDS:
        if omit in fields:
            continue
        matches = [o for o in graph.objects if all(getattr(o, f) == getattr(obj, f) for f in fields)]
        if len(matches) == 1:
            return fields
    return None
