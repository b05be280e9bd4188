"""Build an index bundle: decode and embed every record, write FAISS + metadata, publish.

Decoding and preprocessing run in DataLoader worker processes while the model encodes the
previous batch. Each finished batch goes to the journal, so a killed build resumes; `update`
reuses the vectors of unchanged files (same key, same sha256) from the published version.
Exact duplicates (same sha256) go through the model once and are recorded on the first item.
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
from indexer.download import DownloadConfig, download_all, download_path
from indexer.journal import Journal
from indexer.manifest import Manifest, ModelInfo, SkipCounts, VectorIndexInfo, package_version
from indexer.reader import OpenIndex
from indexer.sources import Record, Source, captions_for, open_source, read_captions, read_record_bytes
from models.encoders import Encoder
from models.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, ImageError, load_image
from models.specs import DEFAULT_SPEC

log = logging.getLogger(__name__)

FLAT = "Flat"
TEXT_BATCH = 256
ITEM_COLUMNS = ("id", "path", "location", "width", "height", "sha256", "captions", "duplicates")


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
    update: bool = False  # reuse unchanged vectors of the published version
    draft: bool = True  # JPEG DCT-scaled decoding down to the model's input size
    download: DownloadConfig = DownloadConfig()


@dataclass
class BuildReport:
    version: Path
    indexed: int
    skipped: dict[str, str]  # key -> reason
    ignored: list[str]  # entries without an image suffix, never opened
    texts: int
    seconds: float
    embed_seconds: float
    embedded: int = 0  # went through the model in this run (not resumed, reused or duplicate)
    reused: int = 0
    duplicates: int = 0
    resumed_batches: int = 0

    @property
    def images_per_s(self) -> float:
        return (self.indexed + len(self.skipped) + self.duplicates) / self.embed_seconds if self.embed_seconds else 0.0

    def summary(self) -> dict:
        return {
            "version": str(self.version), "indexed": self.indexed, "embedded": self.embedded, "reused": self.reused,
            "duplicates": self.duplicates, "skipped": len(self.skipped), "ignored": len(self.ignored),
            "captions": self.texts, "resumed_batches": self.resumed_batches, "seconds": round(self.seconds, 3),
            "embed_seconds": round(self.embed_seconds, 3), "images_per_s": round(self.images_per_s, 2),
            "skipped_files": self.skipped,
        }


class _Records(Dataset):
    """Reads, hashes, decodes and preprocesses one record per item, in a worker process."""

    def __init__(self, records, local, failures, previous_sha, preprocess, max_pixels, draft_size):
        self.records, self.local, self.failures = records, local, failures
        self.previous_sha, self.preprocess = previous_sha, preprocess
        self.max_pixels, self.draft_size = max_pixels, draft_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        item = {"key": record.key, "pixels": None, "reason": self.failures.get(record.key), "reused": False}
        if item["reason"]:
            return item
        try:
            data = read_record_bytes(self.local.get(record.key, record))
            item["sha256"] = hashlib.sha256(data).hexdigest()
            if self.previous_sha.get(record.key) == item["sha256"]:
                item["reused"] = True  # unchanged since the published version: no decode needed
                return item
            image = load_image(data, self.max_pixels, self.draft_size)
            item.update(pixels=self.preprocess(image), width=image.width, height=image.height)
        except ImageError as exc:
            item["reason"] = str(exc)
        except OSError as exc:
            item["reason"] = f"unreadable: {exc.strerror or exc}"
        return item


def _as_list(items: list[dict]) -> list[dict]:
    return items


def build_index(config: BuildConfig, encoder: Encoder | None = None) -> BuildReport:
    """Embed every image of config.source and publish a new version under config.out."""
    started = time.perf_counter()
    source = open_source(config.source)
    if not source.records:
        raise BuildError(f"no image files in {config.source} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    if source.ignored:
        log.info("ignored %d entries that are not images: %s", len(source.ignored), ", ".join(source.ignored[:10]))
    csv_captions = read_captions(config.captions) if config.captions else {}
    encoder = encoder or Encoder.from_spec(config.model, config.device)
    previous = _previous_version(config, encoder)

    journal = Journal.open(config.out, _signature(config, source, encoder, previous))
    embed_started = time.perf_counter()
    counts = _embed_into_journal(config, source, encoder, previous, journal)
    embed_seconds = time.perf_counter() - embed_started

    items, vectors, skipped, duplicates = _assemble(journal, source)
    if not items:
        raise BuildError(f"none of the {len(source.records)} images in {config.source} could be decoded; nothing to index")
    records = {record.key: record for record in source.records}
    for item in items:
        record = records[item["path"]]
        item["captions"] = list(record.captions) + captions_for(item["path"], csv_captions)
        item["location"] = record.location
        item["extra"] = record.extra

    writer = store.VersionWriter(config.out)
    try:
        manifest = Manifest(
            xmodal_version=package_version(),
            model=ModelInfo(spec=encoder.spec, fingerprint=encoder.fingerprint, embed_dim=encoder.embed_dim),
            source=source.root,
            source_kind=source.kind,
            images=_write_vectors(writer, "images", vectors),
            skipped=SkipCounts(total=len(skipped), by_reason=dict(Counter(_reason_kind(r) for r in skipped.values()))),
            ignored_files=len(source.ignored),
            duplicates=duplicates,
        )
        writer.write_table("items", _items_table(items))
        writer.write_table("skipped", pa.table({"path": list(skipped), "reason": list(skipped.values())}))
        text_rows = [(item["id"], text) for item in items for text in item["captions"]]
        if text_rows:
            manifest.texts = _write_texts(writer, encoder, text_rows, config.progress)
        manifest.timings_s = {"embed_images": round(embed_seconds, 3), "total": round(time.perf_counter() - started, 3)}
        version = writer.publish(manifest, keep=config.keep_versions)
    except BaseException:
        writer.abort()
        raise
    journal.remove()
    report = BuildReport(
        version, len(items), skipped, source.ignored, len(text_rows), time.perf_counter() - started, embed_seconds,
        embedded=counts["embedded"], reused=counts["reused"], duplicates=duplicates, resumed_batches=counts["resumed"],
    )
    log.info("indexed %d images (%d skipped, %d duplicates, %d captions) in %.1fs: %s",
             report.indexed, len(skipped), duplicates, report.texts, report.seconds, version)
    return report


def _previous_version(config: BuildConfig, encoder: Encoder) -> OpenIndex | None:
    if not config.update:
        return None
    try:
        previous = OpenIndex(config.out)
    except store.IndexNotFound:
        log.info("--update: no published version in %s yet; building from scratch", config.out)
        return None
    if previous.manifest.model.fingerprint != encoder.fingerprint:
        raise BuildError(
            f"--update needs the model that built {previous.version.name} ({previous.manifest.model.spec}); "
            f"got {encoder.spec}. Build without --update to re-embed everything."
        )
    return previous


def _signature(config: BuildConfig, source: Source, encoder: Encoder, previous: OpenIndex | None) -> dict:
    keys = hashlib.sha256("\n".join(r.key + "\t" + r.location for r in source.records).encode()).hexdigest()
    return {
        "source": source.root, "records": len(source.records), "keys_sha256": keys,
        "model": encoder.fingerprint, "batch_size": config.batch_size, "max_pixels": config.max_pixels,
        "draft": config.draft, "update_from": previous.version.name if previous else None,
    }


def _embed_into_journal(config, source: Source, encoder: Encoder, previous: OpenIndex | None, journal: Journal) -> dict:
    records = source.records
    urls = [r.location for r in records if r.is_url]
    failed = download_all(urls, journal.downloads, config.download, config.progress) if urls else {}
    local = {r.key: Record(r.key, str(download_path(journal.downloads, r.location))) for r in records if r.is_url}
    failures = {r.key: f"download failed: {failed[r.location]}" for r in records if r.location in failed}
    previous_rows = _previous_rows(previous)

    size = encoder.loaded.preprocess_cfg["size"]
    draft_size = (min(size) if isinstance(size, (tuple, list)) else size) if config.draft else None
    dataset = _Records(records, local, failures, {k: v["sha256"] for k, v in previous_rows.items()},
                       encoder.loaded.preprocess, config.max_pixels, draft_size)
    batch_size = config.batch_size
    total_batches = -(-len(records) // batch_size)
    done = journal.finished_batches()
    seen = {row["sha256"]: row["key"] for rows, _ in journal.read_batches() for row in rows if row["status"] in ("embedded", "reused")}
    loader = DataLoader(
        dataset,
        batch_sampler=[list(range(b * batch_size, min(len(records), (b + 1) * batch_size))) for b in range(done, total_batches)],
        num_workers=config.workers,
        collate_fn=_as_list,
        prefetch_factor=4 if config.workers else None,
    )
    counts = Counter(resumed=done)
    initial = min(len(records), done * batch_size)
    with tqdm(total=len(records), initial=initial, unit="img", desc="embedding images", disable=not config.progress) as bar:
        for number, batch in enumerate(loader, start=done):
            rows, vectors = _embed_batch(batch, encoder, previous_rows, seen, counts)
            journal.write_batch(number, rows, vectors)
            bar.update(len(batch))
            bar.set_postfix(skipped=counts["skipped"], duplicates=counts["duplicate"])
    return counts


def _embed_batch(batch: list[dict], encoder: Encoder, previous_rows: dict, seen: dict, counts: Counter):
    """One batch's journal rows and the float16 vectors of its embedded/reused rows, in row order."""
    rows, to_encode = [], []
    for item in batch:
        row = {"key": item["key"], "sha256": item.get("sha256")}
        if item["reason"] is not None:
            row.update(status="skipped", reason=item["reason"])
            log.warning("skipped %s: %s", item["key"], item["reason"])
        elif row["sha256"] in seen:
            row.update(status="duplicate", duplicate_of=seen[row["sha256"]])
        elif item["reused"]:
            old = previous_rows[item["key"]]
            row.update(status="reused", width=old["width"], height=old["height"], vector=old["vector"])
        else:
            row.update(status="embedded", width=item["width"], height=item["height"])
            to_encode.append((row, item["pixels"]))
        if row["status"] in ("embedded", "reused"):
            seen[row["sha256"]] = row["key"]
        counts[row["status"]] += 1
        rows.append(row)
    if to_encode:
        encoded = encoder.encode_images(torch.stack([pixels for _, pixels in to_encode]))
        for (row, _), vector in zip(to_encode, encoded):
            row["vector"] = vector
    vectors = [row.pop("vector") for row in rows if "vector" in row]
    dim = encoder.embed_dim
    return rows, np.stack(vectors).astype(np.float16) if vectors else np.zeros((0, dim), np.float16)


def _previous_rows(previous: OpenIndex | None) -> dict[str, dict]:
    """key -> {sha256, width, height, vector} of the published version (for --update)."""
    if previous is None:
        return {}
    vectors = store.read_vectors(previous.version, previous.manifest.images.embeddings)
    columns = previous.items.select(["path", "sha256", "width", "height"]).to_pydict()
    return {
        key: {"sha256": sha, "width": w, "height": h, "vector": vectors[i]}
        for i, (key, sha, w, h) in enumerate(zip(columns["path"], columns["sha256"], columns["width"], columns["height"]))
    }


def _assemble(journal: Journal, source: Source):
    """Items (ids in record order), their vectors, skips and the duplicate count, from the journal."""
    items, chunks, skipped, by_key, duplicates = [], [], {}, {}, 0
    for rows, vectors in journal.read_batches():
        chunks.append(vectors)
        for row in rows:
            if row["status"] == "skipped":
                skipped[row["key"]] = row["reason"]
            elif row["status"] == "duplicate":
                by_key[row["duplicate_of"]]["duplicates"].append(row["key"])
                duplicates += 1
            else:
                item = {"id": len(items), "path": row["key"], "width": row["width"], "height": row["height"],
                        "sha256": row["sha256"], "duplicates": []}
                items.append(item)
                by_key[row["key"]] = item
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float16)
    return items, np.ascontiguousarray(vectors.astype(np.float32)), skipped, duplicates


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


def _items_table(items: list[dict]) -> pa.Table:
    columns = {
        "id": pa.array([r["id"] for r in items], pa.int64()),
        "path": pa.array([r["path"] for r in items], pa.string()),
        "location": pa.array([r["location"] for r in items], pa.string()),
        "width": pa.array([r["width"] for r in items], pa.int32()),
        "height": pa.array([r["height"] for r in items], pa.int32()),
        "sha256": pa.array([r["sha256"] for r in items], pa.string()),
        "captions": pa.array([r["captions"] for r in items], pa.list_(pa.string())),
        "duplicates": pa.array([r["duplicates"] for r in items], pa.list_(pa.string())),
    }
    for name in sorted({key for r in items for key in r["extra"]}):
        values = [r["extra"].get(name) for r in items]
        column = name if name not in columns else f"meta_{name}"
        try:
            columns[column] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types across rows: keep them as text
            columns[column] = pa.array([None if v is None else str(v) for v in values], pa.string())
    return pa.table(columns)


def _reason_kind(reason: str) -> str:
    """A short bucket for counting skip reasons in the manifest."""
    return reason.split(":", 1)[0].split(" (", 1)[0][:60]
