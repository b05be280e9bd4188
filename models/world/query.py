"""Attribute queries over scenes: ground truth for retrieval metrics such as precision@k.

A query is data, rendered to text with the caption grammar, so relevance never depends
on parsing free text.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace

from xmodal.models.languages import language_prompts
from xmodal.models.world.language import POSITION_PHRASES
from xmodal.models.world.scene import COLOURS, POSITIONS, SHAPES, SIZES, SceneGraph, SceneObject


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
        return language_prompts("en").conjunction.join(_object_text(o) for o in self.objects)


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


def partial_query(graph: SceneGraph, rng: random.Random, max_objects: int = 2, keep_probability: float = 0.6) -> Query:
    """A partial query this scene satisfies: some of its objects, some of their attributes.

    The same shape of query as random_query (objects in any order, each attribute kept with
    keep_probability, at least one per object), but drawn from the scene, so it always holds.
    """
    chosen = rng.sample(graph.objects, rng.randint(1, min(max_objects, len(graph.objects))))
    objects = []
    for obj in chosen:
        values = {"shape": obj.shape, "colour": obj.colour, "size": obj.size, "position": obj.position}
        kept = {k: v for k, v in values.items() if rng.random() < keep_probability}
        if not kept:
            key = rng.choice(tuple(values))
            kept = {key: values[key]}
        objects.append(ObjectQuery(**kept))
    return Query(objects=tuple(objects))


_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "size": SIZES,
    "position": POSITIONS,
}


def absent_query(graph: SceneGraph, rng: random.Random, tries: int = 10, max_objects: int = 2) -> Query | None:
    """A partial query the scene does not satisfy, one attribute away from one it does.

    Half the time the new value is one another object of the scene holds, so every word of the
    query is in the scene, bound to the wrong object ("a red circle" beside a red square and a blue
    circle): the misses a search ranks first. None when `tries` draws all still hold.
    """
    for _ in range(tries):
        query = partial_query(graph, rng, max_objects)
        index = rng.randrange(len(query.objects))
        wanted = query.objects[index]
        attribute = rng.choice([a for a in _VALUES if getattr(wanted, a) is not None])
        value = getattr(wanted, attribute)
        held = sorted({getattr(o, attribute) for o in graph.objects} - {value})
        others = held if held and rng.random() < 0.5 else [v for v in _VALUES[attribute] if v != value]
        changed = replace(wanted, **{attribute: rng.choice(others)})
        candidate = Query(objects=(*query.objects[:index], changed, *query.objects[index + 1 :]))
        if not satisfies(graph, candidate):
            return candidate
    return None


def near_miss(graph: SceneGraph, rng: random.Random) -> SceneGraph:
    """The scene with one attribute of one object changed: a hard negative for its captions.

    The attribute is the shape, colour, size or (when a position is free) the position of a
    random object; the result never has the same content as `graph`.
    """
    index = rng.randrange(len(graph.objects))
    obj = graph.objects[index]
    free = [p for p in POSITIONS if graph.at(p) is None]
    attribute = rng.choice(("shape", "colour", "size", "position") if free else ("shape", "colour", "size"))
    choices = {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES, "position": free}[attribute]
    value = rng.choice([v for v in choices if v != getattr(obj, attribute)])
    changed: SceneObject = replace(obj, **{attribute: value})  # type: ignore[arg-type]  # attribute names a str field
    objects = [*graph.objects[:index], changed, *graph.objects[index + 1 :]]
    objects.sort(key=lambda o: POSITIONS.index(o.position))  # reading order, as sample_graph keeps it
    return SceneGraph(objects=tuple(objects), background=graph.background)


def swap_attribute(graph: SceneGraph, rng: random.Random) -> SceneGraph | None:
    """The scene with one attribute swapped between two of its objects: a binding negative.

    "a red circle on the left and a blue square on the right" becomes "a blue circle on the left
    and a red square on the right": every word of the caption stays, only which object holds
    which value changes. Swapping positions moves the objects. None when no two objects differ
    (a scene of one object, or of identical ones).
    """
    swaps = [
        (attribute, i, j)
        for attribute in ("shape", "colour", "size", "position")
        for i, j in itertools.combinations(range(len(graph.objects)), 2)
        if getattr(graph.objects[i], attribute) != getattr(graph.objects[j], attribute)
        and (attribute != "position" or graph.objects[i].attributes[:3] != graph.objects[j].attributes[:3])
    ]
    if not swaps:
        return None
    attribute, i, j = rng.choice(swaps)
    objects = list(graph.objects)
    first, second = objects[i], objects[j]
    objects[i] = replace(first, **{attribute: getattr(second, attribute)})
    objects[j] = replace(second, **{attribute: getattr(first, attribute)})
    objects.sort(key=lambda o: POSITIONS.index(o.position))  # reading order, as sample_graph keeps it
    return SceneGraph(objects=tuple(objects), background=graph.background)


def _object_text(q: ObjectQuery) -> str:
    words = ["a"] + [w for w in (q.size, q.colour) if w is not None] + [q.shape or "shape"]
    if q.position is not None:
        words.append(POSITION_PHRASES[q.position])
    return " ".join(words)
