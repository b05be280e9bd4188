"""The index's stored vectors by id (for /v1/rank and search `dedup`), and near-duplicate removal."""

from __future__ import annotations

import threading
import weakref

import numpy as np

from xmodal.indexer import store
from xmodal.indexer.reader import OpenIndex
from xmodal.indexer.rows import StoredRows

_cache: weakref.WeakKeyDictionary[OpenIndex, dict[str, StoredRows]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def stored_rows(index: OpenIndex, target: str = "images") -> StoredRows:
    """The stored unit vectors of one opened version (row i = id i), memory-mapped float16 shards:
    `.take(ids)` reads just those rows as float32. A request used to load every vector as float32 first
    (2 GB at 1M x 512, held for the version's life).

    The cache is keyed by the OpenIndex object, so a hot swap maps the new version's shards and the old
    mapping goes with the old version."""
    with _lock:
        per_index = _cache.setdefault(index, {})
        if target not in per_index:
            info = index.manifest.images if target == "images" else index.manifest.texts
            if info is None:
                raise LookupError(f"this index has no {target} vectors")
            per_index[target] = StoredRows(store.map_vectors(index.version, info.embeddings))
        return per_index[target]


def dedup(vectors: np.ndarray, threshold: float) -> list[int]:
    """Positions to keep from a ranked list of unit vectors: a vector is dropped when its cosine with an
    already kept (higher-ranked) one is >= threshold. Order is preserved; the first is always kept."""
    vectors = np.asarray(vectors, dtype=np.float32)
    kept: list[int] = []
    for position, vector in enumerate(vectors):
        if kept and float(np.max(vectors[kept] @ vector)) >= threshold:
            continue
        kept.append(position)
    return kept
