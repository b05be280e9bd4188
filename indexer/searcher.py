"""Search an index with its stored search parameters: what the server and the reader need, nothing more.

Search parameters are one string, stored in the manifest and applied here:

    nprobe=24            IVF: inverted lists visited per query (faiss.ParameterSpace)
    efSearch=48          HNSW: candidate list size (faiss.ParameterSpace)
    nprobe=64,rerank=4   also re-score the k*4 best candidates exactly against the stored float16
                         embeddings and keep the k best (xmodal's, not faiss's)

IVF indexes are served memory-mapped (read_flags). Measurements: docs/decisions/index-tuning.md
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from xmodal.indexer.rows import StoredRows


@dataclass(frozen=True)
class SearchParams:
    """Parsed search parameters: the faiss part (ParameterSpace syntax) and xmodal's re-ranking depth."""

    faiss: str = ""
    rerank: int = 0  # re-score k * rerank candidates against the stored vectors (0: off)

    @classmethod
    def parse(cls, text: str | SearchParams | None) -> SearchParams:
        if isinstance(text, SearchParams):
            return text
        faiss_parts, rerank = [], 0
        for part in filter(None, (p.strip() for p in (text or "").split(","))):
            name, _, value = part.partition("=")
            if name == "rerank":
                rerank = int(value)
                if rerank < 0:
                    raise ValueError(f"rerank must be >= 0, got {value}")
            else:
                faiss_parts.append(part)
        return cls(",".join(faiss_parts), rerank)

    def __str__(self) -> str:
        return ",".join(filter(None, [self.faiss, f"rerank={self.rerank}" if self.rerank else ""]))


def apply_search_params(index: faiss.Index, params: str | SearchParams | None) -> SearchParams:
    """Set the faiss search parameters on `index` (e.g. "nprobe=16"); returns them parsed.

    The `rerank` part is not faiss's: `Searcher` applies it with the stored vectors.
    """
    parsed = SearchParams.parse(params)
    if parsed.faiss:
        # faiss's stubs list only the (index, int) overload; the string form is the one documented
        faiss.ParameterSpace().set_index_parameters(index, parsed.faiss)  # type: ignore[arg-type]
    return parsed


def is_ivf(key: str) -> bool:
    return "IVF" in key


def read_flags(key: str) -> int:
    """faiss.read_index flags for serving an index of this key: IVF inverted lists stay memory-mapped."""
    return faiss.IO_FLAG_MMAP if is_ivf(key) else 0


class Searcher:
    """An index with its search parameters applied; re-ranks from the stored rows when they ask for it."""

    def __init__(self, index: faiss.Index, params: str | SearchParams | None = "", rows: StoredRows | None = None):
        self.index = index
        self.params = apply_search_params(index, params)
        if self.params.rerank and rows is None:
            raise ValueError(f"search parameters {self.params} re-rank, which needs the stored vectors")
        self.rows = rows

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), best first, of shape (len(queries), min(k, candidates)); ids -1 where fewer were
        found. `allowed`: only these ids (a faiss ID selector, searched with the tuned parameters)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        limit = self.index.ntotal if allowed is None else len(allowed)
        k = min(k, limit)
        fetch = min(k * self.params.rerank, limit) if self.params.rerank else k
        if allowed is None:
            scores, candidates = self.index.search(queries, fetch)
        else:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            scores, candidates = self.index.search(queries, fetch, params=self._selecting(selector))
        if not self.params.rerank or self.rows is None:  # __init__ refuses rerank without rows
            return scores, candidates
        exact = exact_scores(self.rows, queries, candidates)
        best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        scores, ids = np.take_along_axis(exact, best, 1), np.take_along_axis(candidates, best, 1)
        ids[scores == -np.inf] = -1
        return scores, ids

    def _selecting(self, selector: faiss.IDSelector) -> faiss.SearchParameters:
        """Search parameters carrying `selector` and the tuned values: a faiss IVF index refuses plain
        SearchParameters, and its nprobe would otherwise fall back to the parameters' default of 1.
        faiss's stubs miss the keyword constructors and SearchParametersHNSW (all in faiss >= 1.7.3)."""
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)  # type: ignore[call-arg]
        hnsw = getattr(faiss.downcast_index(self.index), "hnsw", None)
        if hnsw is not None:
            return faiss.SearchParametersHNSW(sel=selector, efSearch=hnsw.efSearch)  # type: ignore[attr-defined]
        return faiss.SearchParameters(sel=selector)  # type: ignore[call-arg]


def exact_scores(rows: StoredRows, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Inner products of each query with the rows of its ids (n_queries x width); -inf where id < 0."""
    out = np.full(ids.shape, -np.inf, np.float32)
    if ids.size == 0:
        return out
    step = max(1, 16_000_000 // (ids.shape[1] * queries.shape[1]))  # ~64 MB of gathered rows at a time
    for start in range(0, len(ids), step):
        block = ids[start : start + step]
        valid = block >= 0
        gathered = rows.take(np.where(valid, block, 0).ravel()).reshape(*block.shape, -1)
        scores = np.einsum("qkd,qd->qk", gathered, queries[start : start + step])
        out[start : start + step] = np.where(valid, scores, -np.inf)
    return out
