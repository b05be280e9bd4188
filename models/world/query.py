"""Attribute queries over scenes: ground truth for retrieval metrics such as precision@k.

A query is data, rendered to text with the caption grammar, so relevance never depends
on parsing free text.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from models.world.language import POSITION_PHRASES
from models.world.scene import COLOURS, POSITIONS, SHAPES, SIZES, SceneGraph, SceneObject


@dataclass(frozen=True)
class ObjectQuery:
    """One wanted object; None means any value of that attribute."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    position: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return all(
            want is None or want == have
            for want, have in (
                (self.shape, obj.shape),
                (self.colour, obj.colour),
                (self.size, obj.size),
                (self.position, obj.position),
            )
        )


@dataclass(frozen=True)
class Query:
    objects: tuple[ObjectQuery, ...]
    exact: bool = False  # True: the scene holds these objects and nothing else

    @property
    def text(self) -> str:
        return " and ".join(_object_text(o) for o in self.objects)


def satisfies(graph: SceneGraph, query: Query) -> bool:
    """Whether distinct objects of the scene match each object of the query."""
    if query.exact and len(graph.objects) != len(query.objects):
        return False
    if len(query.objects) > len(graph.objects):
        return False
    # At most 3 objects per scene, so trying every assignment is cheap and exact.
    return any(
        all(q.matches(o) for q, o in zip(query.objects, chosen))
        for chosen in itertools.permutations(graph.objects, len(query.objects))
    )


def scene_query(graph: SceneGraph) -> Query:
    """The query only scenes with this exact content satisfy; its text is the canonical caption."""
    return Query(
        objects=tuple(ObjectQuery(o.shape, o.colour, o.size, o.position) for o in graph.objects),
        exact=True,
    )


def random_query(rng: random.Random, max_objects: int = 2, keep_probability: float = 0.6) -> Query:
    """A partial query (e.g. 'a red circle and a large shape on the left') that many scenes satisfy."""
    positions = rng.sample(POSITIONS, rng.randint(1, max_objects))
    objects = []
    for position in positions:
        values = {
            "shape": rng.choice(SHAPES),
            "colour": rng.choice(tuple(COLOURS)),
            "size": rng.choice(SIZES),
            "position": position,
        }
        kept = {k: v for k, v in values.items() if rng.random() < keep_probability}
        if not kept:  # an object with no attribute would just mean "any shape"
            key = rng.choice(tuple(values))
            kept = {key: values[key]}
        objects.append(ObjectQuery(**kept))
    return Query(objects=tuple(objects))


def _object_text(q: ObjectQuery) -> str:
    words = ["a"] + [w for w in (q.size, q.colour) if w is not None] + [q.shape or "shape"]
    if q.position is not None:
        words.append(POSITION_PHRASES[q.position])
    return " ".join(words)
