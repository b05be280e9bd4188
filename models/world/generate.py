"""Seeded, random-access scene generation with a held-out split disjoint by content.

Scene i of a world depends only on (seed, i), so any scene can be regenerated alone,
in any order, in any process. A scene's split depends only on its content (the
canonical caption), so two scenes showing the same objects always share a split.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from xmodal.models.world.grammar import grammar
from xmodal.models.world.language import QA, canonical_caption
from xmodal.models.world.render import DEFAULT_IMAGE_SIZE, render
from xmodal.models.world.scene import SceneGraph, sample_graph

Split = Literal["train", "heldout"]


@dataclass(frozen=True)
class Scene:
    id: str  # filesystem-safe, e.g. "w0-0000123"
    index: int  # World.scene(index) regenerates this scene
    graph: SceneGraph
    captions: tuple[str, ...]  # captions[0] is the canonical caption
    questions: tuple[QA, ...]
    split: Split
    language: str = "en"  # of the captions and questions; the graph, id and split are the same in every language

    @property
    def caption(self) -> str:
        return self.captions[0]

    def image(self, size: int = DEFAULT_IMAGE_SIZE) -> Image.Image:
        return render(self.graph, size)


def split_of(graph: SceneGraph, heldout_fraction: float) -> Split:
    digest = hashlib.blake2b(canonical_caption(graph).encode(), digest_size=8).digest()
    return "heldout" if int.from_bytes(digest, "big") / 2**64 < heldout_fraction else "train"


@dataclass(frozen=True)
class World:
    seed: int = 0
    heldout_fraction: float = 0.1
    # The language scenes' texts are written in (models.world.grammar). Scene i of World(seed, language="zh")
    # is the twin of scene i of World(seed): the same graph, image and split, its text in Chinese.
    language: str = "en"

    def __post_init__(self) -> None:
        grammar(self.language)  # an unknown language fails here, not at the first scene
        # Both splits must be non-empty, or scenes() of the empty one would never return.
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError("heldout_fraction must be strictly between 0 and 1")

    def scene(self, index: int) -> Scene:
        rng, graph = self._graph(index)
        return self._scene(index, rng, graph, split_of(graph, self.heldout_fraction))

    def scenes(self, count: int, split: Split = "train") -> list[Scene]:
        """The first `count` scenes of a split, in index order."""
        found = self._iter_graphs(split)
        return [self._scene(index, rng, graph, split) for index, rng, graph in itertools.islice(found, count)]

    def split_indices(self, count: int, split: Split = "train") -> list[int]:
        """Indices of the first `count` scenes of a split; cheaper than scenes() (no text)."""
        return [index for index, _, _ in itertools.islice(self._iter_graphs(split), count)]

    def _iter_graphs(self, split: Split) -> Iterator[tuple[int, random.Random, SceneGraph]]:
        # Decide the split from the graph alone: text is built only for the scenes kept.
        for index in itertools.count():
            rng, graph = self._graph(index)
            if split_of(graph, self.heldout_fraction) == split:
                yield index, rng, graph

    def _graph(self, index: int) -> tuple[random.Random, SceneGraph]:
        # A string seed is hashed with SHA-512 by `random`, so it is stable across runs and processes.
        rng = random.Random(f"xmodal-world:{self.seed}:{index}")
        return rng, sample_graph(rng)

    def _scene(self, index: int, rng: random.Random, graph: SceneGraph, split: Split) -> Scene:
        words = grammar(self.language)
        return Scene(
            id=f"w{self.seed}-{index:07d}",
            index=index,
            graph=graph,
            captions=words.captions(graph, rng),
            questions=words.questions(graph, rng),
            split=split,
            language=self.language,
        )
