"""Where training images and their texts come from: the generated world or a user's CSV."""

from __future__ import annotations

import csv
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from xmodal.models.training.config import CsvData, WorldData
from xmodal.models.world import Scene, SceneGraph, World, near_miss, split_of, swap_attribute
from xmodal.models.world.grammar import grammar

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageTexts:
    captions: tuple[str, ...]  # contrastive texts
    decoder_captions: tuple[str, ...]  # caption targets for the decoder
    questions: tuple[tuple[str, str], ...]  # (question, answer)
    graph: SceneGraph | None = None  # the generated world's ground truth; None for a user's CSV
    language: str = "en"  # of the texts (world data; a user's CSV is taken as written)
    question_types: tuple[str, ...] = ()  # per question, its type (world data only)
    question_where: tuple[tuple[str, ...], ...] = ()  # per question, where its answer is (world.QA.where)


class WorldSource:
    """The train split of the generated world; scenes are regenerated on demand, not stored.

    With several languages, position i is scene i % scenes in language i // scenes: each scene
    appears once per epoch in each language, and batches mix the languages.
    """

    def __init__(self, spec: WorldData):
        self.worlds = [
            World(seed=spec.seed, heldout_fraction=spec.heldout_fraction, language=x) for x in spec.languages
        ]
        self.image_size = spec.image_size
        self.indices = self.worlds[0].split_indices(spec.scenes, "train")  # splits are the same in every language

    def __len__(self) -> int:
        return len(self.indices) * len(self.worlds)

    def load(self, i: int) -> tuple[Image.Image, ImageTexts]:
        language, i = divmod(i, len(self.indices))
        return self._image_texts(self.worlds[language].scene(self.indices[i]))

    def twin(self, i: int, rng: random.Random) -> tuple[Image.Image, ImageTexts]:
        """Scene i with one attribute swapped between two of its objects (swap_attribute; a scene
        of one object gets one attribute changed instead, near_miss), or scene i itself when the
        twin's content is held out. In scene i's language, as load() reads it."""
        language, i = divmod(i, len(self.indices))
        world = self.worlds[language]
        scene = world.scene(self.indices[i])
        graph = swap_attribute(scene.graph, rng) or near_miss(scene.graph, rng)
        if split_of(graph, world.heldout_fraction) != "train":
            return self._image_texts(scene)
        words = grammar(world.language)
        twin = Scene(
            scene.id,
            scene.index,
            graph,
            words.captions(graph, rng),
            words.questions(graph, rng),
            "train",
            world.language,
        )
        return self._image_texts(twin)

    def _image_texts(self, scene: Scene) -> tuple[Image.Image, ImageTexts]:
        texts = ImageTexts(
            captions=scene.captions,
            # Only the canonical caption: a captioner trained on paraphrases would spread its
            # probability over word orders and never reproduce the canonical one exactly.
            decoder_captions=(scene.caption,),
            questions=tuple((qa.question, qa.answer) for qa in scene.questions),
            graph=scene.graph,
            language=scene.language,
            question_types=tuple(qa.type for qa in scene.questions),
            question_where=tuple(qa.where for qa in scene.questions),
        )
        return scene.image(self.image_size), texts


class CsvSource:
    """Images named in CSV rows, grouped so each image appears once per epoch."""

    def __init__(self, spec: CsvData):
        captions: dict[str, list[str]] = {}
        questions: dict[str, list[tuple[str, str]]] = {}
        for path in (spec.captions_csv, spec.questions_csv):
            if path is None:
                continue
            with open(path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    image = row["image"]
                    if row.get("caption"):
                        captions.setdefault(image, []).append(row["caption"])
                    if row.get("question"):
                        questions.setdefault(image, []).append((row["question"], row.get("answer") or ""))
        orphans = sum(len(v) for k, v in questions.items() if k not in captions)
        if orphans:
            logger.warning("ignoring %d question rows for images without a caption", orphans)
        if not captions:
            raise ValueError(f"no caption rows in {spec.captions_csv}")
        root = Path(spec.image_root) if spec.image_root else _default_image_root(Path(spec.captions_csv))
        self.paths = [root / name for name in captions]
        self.texts = [ImageTexts(tuple(c), tuple(c), tuple(questions.get(name, ()))) for name, c in captions.items()]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, i: int) -> tuple[Image.Image, ImageTexts]:
        with Image.open(self.paths[i]) as image:
            return image.convert("RGB"), self.texts[i]


def _default_image_root(captions_csv: Path) -> Path:
    images = captions_csv.parent / "images"
    return images if images.is_dir() else captions_csv.parent


def build_source(spec: WorldData | CsvData) -> WorldSource | CsvSource:
    return WorldSource(spec) if isinstance(spec, WorldData) else CsvSource(spec)
