"""The scene graph: what a generated scene contains, and how one is sampled.

Attribute vocabularies are plain tuples so captions, questions, queries and the
renderer all draw from one source of truth.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SHAPES = ("circle", "square", "triangle", "star")
SIZES = ("small", "large")
# Saturated colours that stay distinct from each other and from every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "purple": (150, 60, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "grey": (120, 120, 120),
    "white": (240, 240, 240),
}
# Reading order: the canonical caption lists objects in this order.
POSITIONS = ("top", "left", "centre", "right", "bottom")
# Centre of each position as a fraction of the image side (x, y).
POSITION_CENTRES: dict[str, tuple[float, float]] = {
    "top": (0.5, 0.17),
    "left": (0.17, 0.5),
    "centre": (0.5, 0.5),
    "right": (0.83, 0.5),
    "bottom": (0.5, 0.83),
}
# Radius as a fraction of the image side; the gap between sizes survives the jitter.
SIZE_RADII = {"small": 0.07, "large": 0.13}
MAX_OBJECTS = 3
# 1-object scenes are few (240 contents), so most scenes hold 2 or 3 objects.
OBJECT_COUNT_WEIGHTS = (0.2, 0.4, 0.4)
# Position and radius jitter, fractions of the side: a large star (drawn at 1.1 r) at the
# left edge of its slot still ends before a large star in the centre begins.
JITTER = 0.015
RADIUS_JITTER = 0.005


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    position: str
    # Rendering jitter (fractions of the image side): varies pixels, never attributes.
    dx: float = 0.0
    dy: float = 0.0
    dr: float = 0.0

    @property
    def attributes(self) -> tuple[str, str, str, str]:
        return (self.shape, self.colour, self.size, self.position)


@dataclass(frozen=True)
class SceneGraph:
    objects: tuple[SceneObject, ...]  # in reading order of their positions
    background: str

    def matching(self, shape: str | None = None, colour: str | None = None) -> tuple[SceneObject, ...]:
        """The objects of this shape and colour (None: any), in reading order."""
        return tuple(o for o in self.objects if shape in (None, o.shape) and colour in (None, o.colour))

    def count(self, shape: str | None = None, colour: str | None = None) -> int:
        return len(self.matching(shape, colour))

    def at(self, position: str) -> SceneObject | None:
        return next((o for o in self.objects if o.position == position), None)


def sample_graph(rng: random.Random) -> SceneGraph:
    """Draw a scene: 1 to 3 objects in distinct positions, on a random background."""
    n = rng.choices(range(1, MAX_OBJECTS + 1), weights=OBJECT_COUNT_WEIGHTS)[0]
    positions = sorted(rng.sample(POSITIONS, n), key=POSITIONS.index)
    objects = tuple(
        SceneObject(
            shape=rng.choice(SHAPES),
            colour=rng.choice(tuple(COLOURS)),
            size=rng.choice(SIZES),
            position=position,
            dx=rng.uniform(-JITTER, JITTER),
            dy=rng.uniform(-JITTER, JITTER),
            dr=rng.uniform(-RADIUS_JITTER, RADIUS_JITTER),
        )
        for position in positions
    )
    return SceneGraph(objects=objects, background=rng.choice(tuple(BACKGROUNDS)))
