"""A generated world of shapes with exact ground truth, for training and evaluation.

world = World(seed=0)
train = world.scenes(50_000, "train")      # graph, captions, questions per scene
heldout = world.scenes(1_000, "heldout")   # disjoint by content, evaluation only
World(seed=0, language="zh").scene(7)      # scene 7 again, its text in Chinese
write_scenes(heldout, Path("out/world-heldout"))
satisfies(scene.graph, Query(objects=(ObjectQuery(shape="circle", colour="red"),)))
"""

from xmodal.models.world.generate import Scene, Split, World, split_of
from xmodal.models.world.grammar import LANGUAGES, grammar, query_text
from xmodal.models.world.language import ANSWERS, NOWHERE, QA, QUESTION_TYPES, canonical_caption
from xmodal.models.world.query import (
    ObjectQuery,
    Query,
    absent_query,
    near_miss,
    partial_query,
    random_query,
    satisfies,
    scene_query,
    swap_attribute,
)
from xmodal.models.world.render import DEFAULT_IMAGE_SIZE, render
from xmodal.models.world.scene import COLOURS, POSITIONS, SHAPES, SIZES, SceneGraph, SceneObject
from xmodal.models.world.scene_files import read_graphs, write_scenes

__all__ = [
    "ANSWERS",
    "COLOURS",
    "DEFAULT_IMAGE_SIZE",
    "LANGUAGES",
    "NOWHERE",
    "POSITIONS",
    "QA",
    "QUESTION_TYPES",
    "SHAPES",
    "SIZES",
    "ObjectQuery",
    "Query",
    "Scene",
    "SceneGraph",
    "SceneObject",
    "Split",
    "World",
    "canonical_caption",
    "grammar",
    "absent_query",
    "near_miss",
    "partial_query",
    "query_text",
    "random_query",
    "read_graphs",
    "render",
    "satisfies",
    "scene_query",
    "split_of",
    "swap_attribute",
    "write_scenes",
]
