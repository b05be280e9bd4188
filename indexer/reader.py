"""An opened index version: FAISS search plus metadata look-ups, read-only."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from xmodal.indexer import store
from xmodal.indexer.filters import matching_ids
from xmodal.indexer.manifest import Manifest, VectorIndexInfo
from xmodal.indexer.rows import StoredRows
from xmodal.indexer.searcher import Searcher, SearchParams, read_flags
from xmodal.indexer.sources import Record, read_record_bytes

_PUBLIC = ("id", "path", "width", "height", "sha256", "captions", "duplicates")
_PRIVATE = ["location", "generated_caption"]  # server-side paths; the generated caption is also in `captions`


class OpenIndex:
    """One published version, loaded into memory (IVF inverted lists stay memory-mapped), searched with
    the manifest's search parameters. Safe to search from several threads."""

    def __init__(self, path: str | Path):
        self.version = store.resolve_version(path)
        self.manifest: Manifest = store.read_manifest(self.version)
        self.source = Path(self.manifest.source)
        self.image_index = store.read_index(self.version, "images", read_flags(self.manifest.images.index_key))
        self._image_searcher = _searcher(self.version, self.manifest.images, self.image_index)
        # One chunk per column: Table.take over Parquet's many chunks costs O(rows) (23 ms for 10 rows
        # of a 1M-item index, bench/bench_latency.py), over one chunk it is O(k). A mapped Arrow file
        # already is one chunk: combining copies nothing.
        self.items: pa.Table = store.read_table(self.version, "items").combine_chunks()
        self.text_index: faiss.Index | None = None
        self.texts: pa.Table | None = None
        if self.manifest.texts is not None:
            self.text_index = store.read_index(self.version, "texts", read_flags(self.manifest.texts.index_key))
            self._text_searcher = _searcher(self.version, self.manifest.texts, self.text_index)
            self.texts = store.read_table(self.version, "texts").combine_chunks()

    @property
    def has_texts(self) -> bool:
        return self.text_index is not None

    def search_images(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> list[list[tuple[int, float]]]:
        """Top-k (id, score) per query; with `allowed`, only among those ids (a FAISS id selector,
        so the k results are the best allowed ones, not a post-filtered few)."""
        return _search(self._image_searcher, queries, k, allowed)

    def matching_ids(self, filters: dict) -> np.ndarray:
        return matching_ids(self.items, filters)

    def search_texts(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        if self.text_index is None:
            raise LookupError("this index has no text index (build it with --captions)")
        return _search(self._text_searcher, queries, k)

    def item_rows(self, ids: list[int]) -> list[dict]:
        """Public rows for item ids (ids are row numbers): the fixed fields, plus the source's
        own columns (from list files or webdataset .json) under "metadata"."""
        if not ids:
            return []
        rows = self.items.take(pa.array(ids, pa.int64())).drop_columns(_PRIVATE).to_pylist()
        return [{**{k: row.pop(k) for k in _PUBLIC if k in row}, "metadata": row} for row in rows]

    def text_rows(self, ids: list[int]) -> list[dict]:
        return self.texts.take(pa.array(ids, pa.int64())).to_pylist() if ids and self.texts is not None else []

    def item(self, item_id: int) -> dict | None:
        return self.item_rows([item_id])[0] if 0 <= item_id < self.items.num_rows else None

    def item_content(self, item_id: int) -> Path | str | bytes | None:
        """Where an item's image is: a local Path, an http(s) URL, or the bytes of a tar member.
        Only the index's own records are looked up: no path ever comes from a request."""
        if not 0 <= item_id < self.items.num_rows:
            return None
        location = self.items.column("location")[item_id].as_py()
        if location.startswith(("http://", "https://")):
            return location
        try:
            if "::" in location:
                return read_record_bytes(Record("", location))
            path = Path(location)
            return path if path.is_file() else None
        except OSError:
            return None


def _searcher(version: Path, info: VectorIndexInfo, index: faiss.Index) -> Searcher:
    """The index with the manifest's search parameters applied; re-ranking reads the rows it needs from the
    stored shards with file reads (pread), so a served 10M-vector index's resident memory does not grow by
    the page-cache folios a mapped read pulls in (indexer.rows; bench/bench_scale.py)."""
    params = SearchParams.parse(info.search_params)
    rows = StoredRows(store.map_vectors(version, info.embeddings), file_reads=True) if params.rerank else None
    return Searcher(index, params, rows)


def _search(searcher: Searcher, queries: np.ndarray, k: int, allowed: np.ndarray | None = None):
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if allowed is not None and len(allowed) == 0:
        return [[] for _ in queries]
    scores, ids = searcher.search(queries, k, allowed)
    return [
        [(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0] for row_ids, row_scores in zip(ids, scores)
    ]
