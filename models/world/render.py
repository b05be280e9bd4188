"""Draw a scene graph as an RGB image. Pure: the same graph always gives the same pixels."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from xmodal.models.world.scene import BACKGROUNDS, COLOURS, POSITION_CENTRES, SIZE_RADII, SceneGraph, SceneObject

DEFAULT_IMAGE_SIZE = 64
# Draw at twice the size and downsample: cheap anti-aliasing, so edges look like photos, not pixel art.
SUPERSAMPLE = 2


def render(graph: SceneGraph, size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
    side = size * SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUNDS[graph.background])
    draw = ImageDraw.Draw(image)
    for obj in graph.objects:
        _draw_object(draw, obj, side)
    return image.resize((size, size), Image.Resampling.BOX)


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, side: int) -> None:
    cx, cy = POSITION_CENTRES[obj.position]
    x, y = (cx + obj.dx) * side, (cy + obj.dy) * side
    r = (SIZE_RADII[obj.size] + obj.dr) * side
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif obj.shape == "square":
        h = r * 0.85  # a square of half-side r looks much bigger than a circle of radius r
        draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon(_regular_polygon(x, y + r * 0.15, r * 1.1, 3), fill=fill)
    elif obj.shape == "star":
        draw.polygon(_star(x, y, r * 1.1), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def _regular_polygon(x: float, y: float, r: float, sides: int) -> list[tuple[float, float]]:
    # First vertex points up.
    return [
        (x + r * math.sin(2 * math.pi * k / sides), y - r * math.cos(2 * math.pi * k / sides)) for k in range(sides)
    ]


def _star(x: float, y: float, r: float, points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    vertices = []
    for k in range(2 * points):
        radius = r if k % 2 == 0 else r * inner
        angle = math.pi * k / points
        vertices.append((x + radius * math.sin(angle), y - radius * math.cos(angle)))
    return vertices
