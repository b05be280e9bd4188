"""Rebuild the FAISS indexes of the published version from its stored float16 embeddings.

No image is decoded and nothing is re-encoded: the new version takes every other file of the current
one unchanged (hard links where possible), gets indexes chosen for the memory budget and tuned to the
recall target (indexer.tuning), and is published like any build, so CURRENT switches atomically. The
stored shards are read memory-mapped, a chunk at a time: memory is the new index plus its training
sample, not all vectors (bench/bench_build_memory.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from xmodal.indexer import store
from xmodal.indexer.faiss_build import BuiltIndex, build_vector_index
from xmodal.indexer.manifest import Manifest, VectorIndexInfo, package_version
from xmodal.indexer.parallel_fill import ProcessFill
from xmodal.indexer.rows import StoredRows
from xmodal.indexer.selection import DEFAULT_LATENCY_MS, split_budget

log = logging.getLogger(__name__)

NAMES = ("images", "texts")


@dataclass
class ReindexReport:
    version: Path
    source_version: Path
    built: dict[str, BuiltIndex] = field(default_factory=dict)
    index_bytes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def reindex(
    path: str | Path,
    budget_bytes: int | None = None,
    recall: float = 0.95,
    *,
    latency_ms: float | None = DEFAULT_LATENCY_MS,
    key: str | None = None,
    keep: int = 3,
    fill_workers: int = 1,
) -> ReindexReport:
    """Rebuild the indexes of the version `path` names (an index folder with CURRENT, or a version
    folder inside one) and publish the result as a new version of that index folder. `fill_workers` > 1:
    an IVF index is filled by that many processes in pieces and merged (indexer.parallel_fill: same index)."""
    started = time.perf_counter()
    source = store.resolve_version(path)
    root = source.parent
    manifest = store.read_manifest(source)
    infos = {name: getattr(manifest, name) for name in NAMES if getattr(manifest, name) is not None}
    budgets = split_budget(budget_bytes, {name: info.count for name, info in infos.items()})
    report = ReindexReport(version=source, source_version=source)
    writer = store.VersionWriter(root)
    # pieces go to the new version's folder: the source version is published, never written
    fill = ProcessFill(fill_workers, scratch=writer.tmp) if fill_workers > 1 else None
    try:
        updates: dict[str, VectorIndexInfo] = {}
        steps: dict[str, float] = {}  # train, add (fill), tune seconds per index
        for name, info in infos.items():
            # the shards memory-mapped, read a chunk at a time: never all rows in RAM (indexer.rows.StoredRows)
            vectors = StoredRows(store.map_vectors(source, info.embeddings), file_reads=True)
            built = build_vector_index(vectors, budgets[name], recall, latency_ms=latency_ms, key=key, fill=fill)
            size = writer.write_index(name, built.index)
            report.built[name], report.index_bytes[name] = built, size
            steps.update({f"reindex_{name}_{step}": seconds for step, seconds in built.seconds.items()})
            updates[name] = info.model_copy(
                update={**built.manifest_fields(), "file": f"{name}.faiss", "index_bytes": size}
            )
            del vectors, built
        rebuilt = {info.file for info in infos.values()}
        for filename in store.version_files(source):
            if filename != store.MANIFEST and filename not in rebuilt:
                writer.copy_file(source, filename)
        timings = {**manifest.timings_s, **steps, "reindex": round(time.perf_counter() - started, 3)}
        new_manifest = Manifest.model_validate(
            {
                **manifest.model_dump(),
                **{name: info.model_dump() for name, info in updates.items()},
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "xmodal_version": package_version(),
                "timings_s": timings,
                "reindexed_from": source.name,
            }
        )
        report.version = writer.publish(new_manifest, keep=keep)
    except BaseException:
        writer.abort()
        raise
    report.seconds = time.perf_counter() - started
    log.info("reindexed %s into %s in %.1fs", source.name, report.version.name, report.seconds)
    return report
