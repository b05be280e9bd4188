"""Write scenes to disk in the project's dataset layout.

    <out>/images/<scene id>.png
    <out>/captions.csv   image,caption                 (all captions, canonical first)
    <out>/questions.csv  image,question,answer,type
    <out>/scenes.jsonl   one scene graph per line      (ground truth for evaluation)

`captions.csv` has the layout of /work/shared/data/flickr8k-1k: `image` is a file name
under `images/`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

from xmodal.models.world.generate import Scene
from xmodal.models.world.render import DEFAULT_IMAGE_SIZE
from xmodal.models.world.scene import SceneGraph, SceneObject


def write_scenes(scenes: Iterable[Scene], out_dir: Path, image_size: int = DEFAULT_IMAGE_SIZE) -> int:
    """Write scenes under out_dir (created if missing); returns how many were written."""
    out_dir = Path(out_dir)
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    with (
        open(out_dir / "captions.csv", "w", newline="", encoding="utf-8") as captions_file,
        open(out_dir / "questions.csv", "w", newline="", encoding="utf-8") as questions_file,
        open(out_dir / "scenes.jsonl", "w", encoding="utf-8") as scenes_file,
    ):
        captions_csv = csv.writer(captions_file)
        questions_csv = csv.writer(questions_file)
        captions_csv.writerow(["image", "caption"])
        questions_csv.writerow(["image", "question", "answer", "type"])
        for scene in scenes:
            name = f"{scene.id}.png"
            scene.image(image_size).save(image_dir / name)
            captions_csv.writerows([name, c] for c in scene.captions)
            questions_csv.writerows([name, qa.question, qa.answer, qa.type] for qa in scene.questions)
            record = {"image": name, "split": scene.split, **dataclasses.asdict(scene.graph)}
            scenes_file.write(json.dumps(record) + "\n")
            count += 1
    return count


def read_graphs(out_dir: Path) -> dict[str, SceneGraph]:
    """Scene graphs by image file name, as written by write_scenes."""
    graphs = {}
    with open(Path(out_dir) / "scenes.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            objects = tuple(SceneObject(**o) for o in record["objects"])
            graphs[record["image"]] = SceneGraph(objects=objects, background=record["background"])
    return graphs
