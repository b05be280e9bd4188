"""Build an index bundle: decode and embed every image, write FAISS + metadata, publish.

Decoding and preprocessing run in DataLoader worker processes while the model
encodes the previous batch; undecodable files are skipped with a logged reason.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from indexer import store
from indexer.manifest import Manifest, ModelInfo, SkipCounts, VectorIndexInfo, package_version
from indexer.sources import captions_for, find_files, read_captions
from models.encoders import Encoder
from models.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageError, load_image
from models.specs import DEFAULT_SPEC

log = logging.getLogger(__name__)

FLAT = "Flat"
TEXT_BATCH = 256


class BuildError(RuntimeError):
    pass


def default_workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores - 1))


@dataclass(frozen=True)
class BuildConfig:
    source: Path
    out: Path
    model: str = DEFAULT_SPEC
    captions: Path | None = None
    batch_size: int = 64
    workers: int = field(default_factory=default_workers)
    device: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    keep_versions: int = 3
    progress: bool = True


@dataclass
class BuildReport:
    version: Path
    indexed: int
    skipped: dict[str, str]  # relative path -> reason
    ignored: list[str]  # files without an image suffix, never opened
    texts: int
    seconds: float
    embed_seconds: float

    @property
    def images_per_s(self) -> float:
        return (self.indexed + len(self.skipped)) / self.embed_seconds if self.embed_seconds else 0.0


class _ImageFiles(Dataset):
    """Reads, hashes, decodes and preprocesses one file per item, in a worker process."""

    def __init__(self, root: Path, paths: list[Path], preprocess, max_pixels: int):
        self.root, self.paths, self.preprocess, self.max_pixels = root, paths, preprocess, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        path = self.paths[i]
        item = {"path": path.relative_to(self.root).as_posix(), "pixels": None, "reason": None}
        try:
            data = path.read_bytes()
            image = load_image(data, self.max_pixels)
            item.update(
                pixels=self.preprocess(image),
                width=image.width,
                height=image.height,
                sha256=hashlib.sha256(data).hexdigest(),
            )
        except ImageError as exc:
            item["reason"] = str(exc)
        except OSError as exc:
            item["reason"] = f"unreadable file: {exc.strerror or exc}"
        return item


def _keep_as_list(items: list[dict]) -> list[dict]:
    return items


def build_index(config: BuildConfig, encoder: Encoder | None = None) -> BuildReport:
    """Embed every image under config.source and publish a new version under config.out."""
    started = time.perf_counter()
    source = Path(config.source).resolve()
    paths, others = find_files(source)
    if not paths:
        raise BuildError(f"no image files under {source} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    captions = read_captions(config.captions) if config.captions else {}
    encoder = encoder or Encoder.from_spec(config.model, config.device)

    embed_started = time.perf_counter()
    ignored = [path.relative_to(source).as_posix() for path in others]
    if ignored:
        log.info("ignored %d files that are not images by suffix: %s", len(ignored), ", ".join(ignored[:10]))
    rows, vectors, skipped = _embed_images(source, paths, encoder, config)
    embed_seconds = time.perf_counter() - embed_started
    if not rows:
        raise BuildError(f"none of the {len(paths)} files under {source} could be decoded; nothing to index")
    for row in rows:
        row["captions"] = captions_for(row["path"], captions)

    writer = store.VersionWriter(config.out)
    try:
        image_vectors = _rounded(np.concatenate(vectors))
        manifest = Manifest(
            xmodal_version=package_version(),
            model=ModelInfo(spec=encoder.spec, fingerprint=encoder.fingerprint, embed_dim=encoder.embed_dim),
            source=str(source),
            images=_write_vectors(writer, "images", image_vectors),
            skipped=SkipCounts(total=len(skipped), by_reason=dict(Counter(_reason_kind(r) for r in skipped.values()))),
            ignored_files=len(ignored),
        )
        writer.write_table("items", _items_table(rows))
        writer.write_table("skipped", pa.table({"path": list(skipped), "reason": list(skipped.values())}))
        text_rows = [(row["id"], text) for row in rows for text in row["captions"]]
        if text_rows:
            manifest.texts = _write_texts(writer, encoder, text_rows, config.progress)
        manifest.timings_s = {"embed_images": round(embed_seconds, 3), "total": round(time.perf_counter() - started, 3)}
        version = writer.publish(manifest, keep=config.keep_versions)
    except BaseException:
        writer.abort()
        raise
    report = BuildReport(version, len(rows), skipped, ignored, len(text_rows), time.perf_counter() - started, embed_seconds)
    log.info(
        "indexed %d images (%d skipped, %d captions) in %.1fs: %s",
        report.indexed, len(skipped), report.texts, report.seconds, version,
    )
    return report


def _embed_images(source: Path, paths: list[Path], encoder: Encoder, config: BuildConfig):
    dataset = _ImageFiles(source, paths, encoder.loaded.preprocess, config.max_pixels)
    loader = DataLoader(
        dataset,
        batch_size=config.batch_size,
        num_workers=config.workers,
        collate_fn=_keep_as_list,
        prefetch_factor=4 if config.workers else None,
        persistent_workers=False,
    )
    rows, vectors, skipped = [], [], {}
    with tqdm(total=len(paths), unit="img", desc="embedding images", disable=not config.progress) as bar:
        for batch in loader:
            good = [item for item in batch if item["pixels"] is not None]
            for item in batch:
                if item["reason"] is not None:
                    skipped[item["path"]] = item["reason"]
                    log.warning("skipped %s: %s", item["path"], item["reason"])
            if good:
                vectors.append(encoder.encode_images(torch.stack([item["pixels"] for item in good])))
                for item in good:
                    del item["pixels"]
                    rows.append({"id": len(rows), **{k: item[k] for k in ("path", "width", "height", "sha256")}})
            bar.update(len(batch))
            bar.set_postfix(skipped=len(skipped))
    return rows, vectors, skipped


def _write_texts(writer: store.VersionWriter, encoder: Encoder, text_rows, progress: bool) -> VectorIndexInfo:
    texts = [text for _, text in text_rows]
    chunks = []
    for start in tqdm(range(0, len(texts), TEXT_BATCH), desc="embedding captions", unit="batch", disable=not progress):
        chunks.append(encoder.encode_texts(texts[start : start + TEXT_BATCH]))
    info = _write_vectors(writer, "texts", _rounded(np.concatenate(chunks)))
    writer.write_table(
        "texts",
        pa.table({
            "id": pa.array(range(len(texts)), pa.int64()),
            "image_id": pa.array([image_id for image_id, _ in text_rows], pa.int64()),
            "text": pa.array(texts, pa.string()),
        }),
    )
    return info


def _write_vectors(writer: store.VersionWriter, name: str, vectors: np.ndarray) -> VectorIndexInfo:
    index = faiss.index_factory(vectors.shape[1], FLAT, faiss.METRIC_INNER_PRODUCT)
    index.add(vectors)
    shards = writer.write_vectors(name, vectors, index)
    return VectorIndexInfo(file=f"{name}.faiss", embeddings=shards, count=len(vectors), index_key=FLAT)


def _rounded(vectors: np.ndarray) -> np.ndarray:
    """Index exactly the float16 vectors we store, so a rebuild from shards is identical."""
    return np.ascontiguousarray(vectors.astype(np.float16).astype(np.float32))


def _items_table(rows: list[dict]) -> pa.Table:
    return pa.table({
        "id": pa.array([r["id"] for r in rows], pa.int64()),
        "path": pa.array([r["path"] for r in rows], pa.string()),
        "width": pa.array([r["width"] for r in rows], pa.int32()),
        "height": pa.array([r["height"] for r in rows], pa.int32()),
        "sha256": pa.array([r["sha256"] for r in rows], pa.string()),
        "captions": pa.array([r["captions"] for r in rows], pa.list_(pa.string())),
    })


def _reason_kind(reason: str) -> str:
    """A short bucket for counting skip reasons in the manifest."""
    return reason.split(":", 1)[0].split(" (", 1)[0][:60]
