"""`xmodal index --ray`: the same build as indexer.build, with decoding and embedding spread over a Ray cluster.

The ordered record list is cut into parts (indexer.parts). Each part is a row of a Ray dataset: CPU tasks
read and decode its records with the project's safe decoding (build.decode_record: pixel budget, format
allowlist, EXIF, skip reasons), then a fixed pool of actors, each holding the model once (one GPU each when
the cluster has GPUs), embeds it (build.embed_batch) and writes it to the parts folder, which every node must
see (it lies in --out). The driver then runs the single-process build's reduce (build.publish_build): the
FAISS indexes over the memory-mapped parts (an IVF index filled by Ray tasks in pieces and merged:
indexer.parallel_fill), captions, manifest and atomic publish. Finished parts survive a
lost node or a killed driver; a rerun embeds only the missing ones. Ray is imported only on this path.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from xmodal.indexer.build import (
    BuildConfig,
    BuildError,
    BuildReport,
    decode_record,
    draft_size_for,
    embed_batch,
    prepare_build,
    publish_build,
    signature,
)
from xmodal.indexer.download import download_all, download_path
from xmodal.indexer.parallel_fill import RayFill
from xmodal.indexer.parts import Parts
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
    if config.update:
        raise BuildError("--ray --update is not supported yet; run --update without --ray")
    started = time.perf_counter()
    source, csv_captions, encoder = prepare_build(config, encoder)
    records = source.records
    parts = Parts.open(config.out, {**signature(config, source, encoder, None), "batch_size": options.part_size})
    count = -(-len(records) // options.part_size)
    done = parts.finished()
    todo = [k for k in range(count) if k not in done]

    embed_started = time.perf_counter()
    if todo:
        urls = [r.location for r in records if r.is_url]
        failed = download_all(urls, parts.downloads, config.download, config.progress) if urls else {}
        local = {r.key: str(download_path(parts.downloads, r.location)) for r in records if r.is_url}
        failures = {r.key: f"download failed: {failed[r.location]}" for r in records if r.location in failed}
        items = [
            {
                "part": k,
                "start": k * options.part_size,
                "records": json.dumps(
                    [
                        [r.key, local.get(r.key, r.location), failures.get(r.key)]
                        for r in records[k * options.part_size : (k + 1) * options.part_size]
                    ]
                ),
            }
            for k in todo
        ]
        _run(ray, options, config, encoder, parts, items, total=len(records))
    embed_seconds = time.perf_counter() - embed_started

    for k in range(count):
        if k not in parts.finished():
            raise BuildError(f"part {k} of {count} is missing in {parts.folder} after the Ray job")
        fingerprints = parts.fingerprints(k)
        if fingerprints != {encoder.fingerprint}:
            raise BuildError(
                f"part {k} in {parts.folder} was embedded by another model ({', '.join(sorted(fingerprints))}); "
                f"expected {encoder.fingerprint}"
            )
    counts = Counter(resumed=len(done))
    batches = functools.partial(_reduced_parts, parts, count, set(todo), counts)
    fill = RayFill(options.address)  # an IVF index is filled by Ray tasks (indexer.parallel_fill)
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


def _run(ray: Any, options: RayOptions, config: BuildConfig, encoder: Encoder, parts: Parts, items, total: int):
    """Decode (CPU tasks) and embed (actor pool) the parts `items`, each actor writing its parts."""
    try:
        if options.address == "local":
            ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(address=options.address, logging_level=logging.WARNING, log_to_driver=False)
    except ConnectionError as exc:
        raise BuildError(f"--ray {options.address}: no Ray cluster reachable ({exc})") from exc
    try:
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
                "folder": str(parts.folder),
                "batch_size": config.batch_size,
                "caption": config.caption,
            },
        )
        with tqdm(total=total, unit="img", desc="embedding images (ray)", disable=not config.progress) as bar:
            for row in embedded.iter_rows():
                bar.update(int(row["records"]))
    finally:
        ray.shutdown()


def _decode_part(item: dict, preprocess, max_pixels: int, draft_size: int | None) -> dict:
    """A CPU task: one part's records decoded; pixels as one float32 .npy blob, the rest as JSON."""
    decoded = [
        decode_record(Record(key, location), key, failure, None, preprocess, max_pixels, draft_size)
        for key, location, failure in json.loads(item["records"])
    ]
    pixels = [d.pop("pixels") for d in decoded]
    blob = io.BytesIO()
    present = [p.numpy() for p in pixels if p is not None]
    np.save(blob, np.stack(present) if present else np.zeros((0,), np.float32))
    return {"part": item["part"], "start": item["start"], "items": json.dumps(decoded), "pixels": blob.getvalue()}


class EmbedParts:
    """An actor of the embedding pool: loads the model once, embeds whole parts and writes them."""

    def __init__(self, model: str, device: str, int8_images: bool, folder: str, batch_size: int, caption: bool) -> None:
        from pathlib import Path

        self.encoder = Encoder.from_spec(model, device, int8_images=int8_images)
        self.parts = Parts(Path(folder))
        self.batch_size, self.caption = batch_size, caption

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sizes = []
        for part, start, items_json, blob in zip(batch["part"], batch["start"], batch["items"], batch["pixels"]):
            items = json.loads(items_json)
            pixels = iter(np.load(io.BytesIO(blob)))
            for item in items:
                item["pixels"] = None if item["reason"] is not None else torch.from_numpy(next(pixels))
            rows: list[dict] = []
            vectors: list[np.ndarray] = []
            seen: dict[str, str] = {}
            counts: Counter = Counter()
            for first in range(0, len(items), self.batch_size):
                chunk_rows, chunk_vectors = embed_batch(
                    items[first : first + self.batch_size], self.encoder, {}, seen, counts, self.caption
                )
                rows += chunk_rows
                vectors.append(chunk_vectors)
            self.parts.write(int(part), int(start), rows, np.concatenate(vectors), self.encoder.fingerprint)
            sizes.append(len(rows))
        return {"part": batch["part"], "records": np.array(sizes)}


def _reduced_parts(parts: Parts, count: int, fresh: set[int], counts: Counter) -> Iterator[tuple[list[dict], Any]]:
    """Every part's rows and vectors in record order, as the single-process journal holds them: a record whose
    sha256 an earlier part already embedded becomes a duplicate of it (parts are embedded independently)."""
    seen: dict[str, str] = {}
    for k in range(count):
        rows, vectors = parts.read(k)
        keep, position = [], 0
        for row in rows:
            if row["status"] == "embedded":
                if row["sha256"] in seen:
                    row.update(status="duplicate", duplicate_of=seen[row["sha256"]])
                else:
                    seen[row["sha256"]] = row["key"]
                    keep.append(position)
                position += 1
            if k in fresh:
                counts[row["status"]] += 1
        yield rows, vectors if len(keep) == len(vectors) else vectors[keep]
