"""`xmodal index --ray`: the same build as indexer.build, with decoding and embedding spread over a Ray cluster.

The ordered record list is cut into parts (indexer.parts). Each part is a row of a Ray dataset: CPU tasks
read and decode its records with the project's safe decoding (build.decode_record: pixel budget, format
allowlist, EXIF, skip reasons), then a fixed pool of actors, each holding the model once (one GPU each when
the cluster has GPUs), embeds it (build.embed_batch) and writes it to the parts folder, which every node must
see (it lies in --out). The driver then runs the single-process build's reduce (build.publish_build): the
FAISS indexes over the memory-mapped parts (on a cluster, an IVF index is filled by Ray tasks in pieces
and merged: indexer.parallel_fill), captions, manifest and atomic publish. Finished parts survive a
lost node or a killed driver; a rerun embeds only the missing ones. With --update a file unchanged since the
published version is not decoded, and its actor copies the stored vector, as the single build does. The
driver loads its model while Ray starts (that start is mostly waiting). Ray is imported only on this path.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from xmodal.indexer import store
from xmodal.indexer.build import (
    BuildConfig,
    BuildError,
    BuildReport,
    decode_record,
    draft_size_for,
    embed_batch,
    prepare_build,
    previous_version,
    publish_build,
    read_previous_rows,
    signature,
)
from xmodal.indexer.download import download_all, download_path
from xmodal.indexer.parallel_fill import RayFill
from xmodal.indexer.parts import Parts
from xmodal.indexer.reader import OpenIndex
from xmodal.indexer.rows import StoredRows
from xmodal.indexer.sources import Record
from xmodal.models.encoders import Encoder

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with: pip install 'xmodal[ray]'"
DECODE_MEMORY = 256 * 1024 * 1024  # bytes reserved per decode task: a 50 MP picture decodes to 150 MB of RGB


class RayNotInstalled(BuildError):
    pass


@dataclass(frozen=True)
class RayOptions:
    address: str = "local"  # "local": start a cluster on this machine; "auto": join the running one; or its address
    actors: int = 1  # embedding actors, each with its own copy of the model (and one GPU when there are GPUs)
    part_size: int = 256  # records per part: the unit of work, of writing and of resuming


def build_index_on_ray(config: BuildConfig, options: RayOptions, encoder: Encoder | None = None) -> BuildReport:
    """Embed every image of config.source on a Ray cluster and publish a new version under config.out."""
    ray = _import_ray()
    started = time.perf_counter()
    # Starting or joining the cluster is mostly waiting for its processes: the model loads meanwhile.
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(prepare_build, config, encoder)
        _connect(ray, options)
        try:
            source, csv_captions, encoder = loading.result()
            records = source.records
            previous = previous_version(config, encoder)
            signed = {**signature(config, source, encoder, previous), "batch_size": options.part_size}
            parts = Parts.open(config.out, signed)
            count = -(-len(records) // options.part_size)
            done = parts.finished()
            todo = [k for k in range(count) if k not in done]
            embed_started = time.perf_counter()
            if todo:
                items = _work_items(config, records, parts, previous, todo, options.part_size)
                _run(ray, options, config, encoder, parts, items, previous, total=len(records))
            embed_seconds = time.perf_counter() - embed_started
        finally:
            ray.shutdown()

    missing = sorted(set(range(count)) - parts.finished())  # one listing of the folder, not one per part
    if missing:
        raise BuildError(f"{len(missing)} of {count} parts (first: {missing[0]}) are missing in {parts.folder}")
    counts = Counter(resumed=len(done))
    batches = functools.partial(_reduced_parts, parts, count, set(todo), counts, encoder.fingerprint)
    # On a cluster an IVF index is filled by Ray tasks (indexer.parallel_fill); a local cluster is this
    # machine, where --fill-workers processes do the same without starting Ray again.
    fill = None if options.address == "local" else RayFill(options.address)
    report = publish_build(config, source, encoder, csv_captions, batches, counts, started, embed_seconds, fill)
    parts.remove()
    return report


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayNotInstalled(f"--ray needs Ray ({exc}); {INSTALL_HINT}") from exc
    return ray


def _connect(ray: Any, options: RayOptions) -> None:
    try:
        if options.address == "local":
            ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(address=options.address, logging_level=logging.WARNING, log_to_driver=False)
    except ConnectionError as exc:
        raise BuildError(f"--ray {options.address}: no Ray cluster reachable ({exc})") from exc


def _work_items(
    config: BuildConfig, records: list[Record], parts: Parts, previous: OpenIndex | None, todo: list[int], size: int
) -> list[dict]:
    """One dataset row per part to do: its records as [key, local path, download failure, published row]."""
    urls = [r.location for r in records if r.is_url]
    failed = download_all(urls, parts.downloads, config.download, config.progress) if urls else {}
    local = {r.key: str(download_path(parts.downloads, r.location)) for r in records if r.is_url}
    failures = {r.key: f"download failed: {failed[r.location]}" for r in records if r.location in failed}
    # --update: what the published version holds of each key; an unchanged file (same sha256) is not
    # decoded, and its actor copies the stored vector (build.embed_batch) from the version's shards.
    old = {key: {k: v for k, v in row.items() if k != "vectors"} for key, row in read_previous_rows(previous).items()}
    return [
        {
            "part": k,
            "start": k * size,
            "records": json.dumps(
                [
                    [r.key, local.get(r.key, r.location), failures.get(r.key), old.get(r.key)]
                    for r in records[k * size : (k + 1) * size]
                ]
            ),
        }
        for k in todo
    ]


def _run(
    ray: Any,
    options: RayOptions,
    config: BuildConfig,
    encoder: Encoder,
    parts: Parts,
    items: list[dict],
    previous: OpenIndex | None,
    total: int,
) -> None:
    """Decode (CPU tasks) and embed (actor pool) the parts `items`, each actor writing its parts."""
    gpus = ray.cluster_resources().get("GPU", 0) > 0
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    decode = functools.partial(
        _decode_part,
        preprocess=encoder.loaded.preprocess,
        max_pixels=config.max_pixels,
        draft_size=draft_size_for(encoder, config.draft),
    )
    # Decoding reserves memory for a large picture; that request also keeps the decode tasks a separate
    # operator from the actors (Ray Data fuses operators with equal resource requests), so decoding
    # runs on any node's CPUs while the actors embed. Ray Data retries tasks lost with a node.
    dataset = ray.data.from_items(items, override_num_blocks=len(items)).map(decode, memory=DECODE_MEMORY)
    embedded = dataset.map_batches(
        EmbedParts,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_gpus=1 if gpus else 0,
        fn_constructor_kwargs={
            "model": config.model,
            "device": ("cuda" if gpus else "cpu") if config.device == "auto" else config.device,
            "int8_images": config.int8_images,
            "precision": config.precision,
            "folder": str(parts.folder),
            "batch_size": config.batch_size,
            "caption": config.caption,
            "previous": None if previous is None else str(previous.version),
            "previous_shards": None if previous is None else previous.manifest.images.embeddings,
        },
    )
    with tqdm(total=total, unit="img", desc="embedding images (ray)", disable=not config.progress) as bar:
        for row in embedded.iter_rows():
            bar.update(int(row["records"]))


def _decode_part(item: dict, preprocess, max_pixels: int, draft_size: int | None) -> dict:
    """A CPU task: one part's records decoded; pixels as one float32 .npy blob, the rest as JSON."""
    decode_args = (preprocess, max_pixels, draft_size)
    decoded = []
    for key, location, failure, old in json.loads(item["records"]):
        decoded.append(decode_record(Record(key, location), key, failure, old and old["sha256"], *decode_args))
        if decoded[-1]["reused"]:
            decoded[-1]["previous"] = old  # where the actor finds the stored vector, and its size and caption
    pixels = [d.pop("pixels") for d in decoded]
    blob = io.BytesIO()
    present = [p.numpy() for p in pixels if p is not None]
    np.save(blob, np.stack(present) if present else np.zeros((0,), np.float32))
    return {"part": item["part"], "start": item["start"], "items": json.dumps(decoded), "pixels": blob.getvalue()}


class EmbedParts:
    """An actor of the embedding pool: loads the model once, embeds whole parts and writes them."""

    def __init__(
        self,
        model: str,
        device: str,
        int8_images: bool,
        folder: str,
        batch_size: int,
        caption: bool,
        previous: str | None,
        previous_shards: list[str] | None,
        precision: str = "auto",
    ) -> None:
        # The single-process build's precision rule (models.precision): fp16 on the actor's GPU under auto.
        self.encoder = Encoder.from_spec(model, device, int8_images=int8_images, precision=precision)
        self.parts = Parts(Path(folder))
        self.batch_size, self.caption = batch_size, caption
        # --update: the published version's vectors (memory-mapped on the shared storage), copied for reused rows
        self.previous = StoredRows(store.map_vectors(Path(previous), previous_shards or [])) if previous else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes = []
        for part, start, items_json, blob in zip(batch["part"], batch["start"], batch["items"], batch["pixels"]):
            items = json.loads(items_json)
            pixels = iter(np.load(io.BytesIO(blob)))
            for item in items:
                has_pixels = item["reason"] is None and not item["reused"]
                item["pixels"] = torch.from_numpy(next(pixels)) if has_pixels else None
            previous_rows = {
                item["key"]: {**item["previous"], "vectors": self.previous} for item in items if item["reused"]
            }
            rows: list[dict] = []
            vectors: list[np.ndarray] = []
            seen: dict[str, str] = {}
            counts: Counter = Counter()
            for first in range(0, len(items), self.batch_size):
                chunk_rows, chunk_vectors = embed_batch(
                    items[first : first + self.batch_size], self.encoder, previous_rows, seen, counts, self.caption
                )
                rows += chunk_rows
                vectors.append(chunk_vectors)
            self.parts.write(int(part), int(start), rows, np.concatenate(vectors), self.encoder.fingerprint)
            sizes.append(len(rows))
        return {"part": batch["part"], "records": np.array(sizes)}


def _reduced_parts(
    parts: Parts, count: int, fresh: set[int], counts: Counter, fingerprint: str
) -> Iterator[tuple[list[dict], Any]]:
    """Every part's rows and vectors in record order, as the single-process journal holds them: a record whose
    sha256 an earlier part already embedded (or reused) becomes a duplicate of it, and so do the records the
    part had made duplicates of that one (parts are embedded independently). A part embedded by another
    model fails the build (checked here, in the one pass over the parts, before anything is published)."""
    seen: dict[str, str] = {}
    renamed: dict[str, str] = {}  # key of a part's first copy -> key of the earlier part's first copy
    for k in range(count):
        rows, vectors = parts.read(k)
        others = {row["fingerprint"] for row in rows} - {fingerprint}
        if others:
            raise BuildError(
                f"part {k} in {parts.folder} was embedded by another model ({', '.join(sorted(others))}); "
                f"expected {fingerprint}"
            )
        keep, position = [], 0
        for row in rows:
            if row["status"] in ("embedded", "reused"):
                if row["sha256"] in seen:
                    renamed[row["key"]] = seen[row["sha256"]]
                    row.update(status="duplicate", duplicate_of=seen[row["sha256"]])
                else:
                    seen[row["sha256"]] = row["key"]
                    keep.append(position)
                position += 1
            elif row["status"] == "duplicate":
                row["duplicate_of"] = renamed.get(row["duplicate_of"], row["duplicate_of"])
            if k in fresh:
                counts[row["status"]] += 1
        yield rows, vectors if len(keep) == len(vectors) else vectors[keep]
