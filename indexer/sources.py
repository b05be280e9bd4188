"""What to index: image files under a folder, and captions from a CSV."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

from models.images import is_image_path


def find_files(root: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under `root`, recursively, in a stable order; hidden entries left out."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"image source {root} is not a folder")
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    return [p for p in files if is_image_path(p)], [p for p in files if not is_image_path(p)]


def read_captions(csv_path: Path) -> dict[str, list[str]]:
    """`image,caption` rows → {image name: [captions]}; other columns are ignored."""
    captions: dict[str, list[str]] = defaultdict(list)
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = {"image", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path} needs the columns image,caption (missing: {', '.join(sorted(missing))})")
        for row in reader:
            text = (row["caption"] or "").strip()
            if row["image"] and text:
                captions[row["image"].strip()].append(text)
    return dict(captions)


def captions_for(relative_path: str, captions: dict[str, list[str]]) -> list[str]:
    """Captions keyed by the path relative to the source folder, or by the file name alone."""
    return captions.get(relative_path) or captions.get(Path(relative_path).name) or []
