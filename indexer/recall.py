"""Exact recall@10 and single-query latency of a searcher, against brute-force ground truth.

Ground truth is a running top-k merge over blocks of rows, so it works over memory-mapped shards
without holding them all in float32.
"""

from __future__ import annotations

import time

import faiss
import numpy as np

from xmodal.indexer.rows import StoredRows, as_rows
from xmodal.indexer.searcher import Searcher, exact_scores

K = 10  # recall@K is what the targets mean
LATENCY_QUERIES = 200
CONFIDENCE_Z = 1.645  # one-sided 95%: tuning asks the recall's lower bound, not its mean, to reach the target
TIE_TOLERANCE = 1e-5  # a result scoring within this of the true k-th score counts as a true neighbour


class RecallBench:
    """Recall@10 and latency of a searcher on queries whose exact neighbours in `rows` are known.

    A result counts as a true neighbour when its exact score reaches the true 10th score (less
    TIE_TOLERANCE): ties and exact duplicates don't make an exact answer look wrong.
    """

    def __init__(self, rows: StoredRows, queries: np.ndarray, k: int = K):
        self.rows, self.k = rows, k
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.kth_score = exact_search(rows, self.queries, k)[0][:, -1]

    def recall(self, searcher: Searcher) -> float:
        return float(self._per_query(searcher).mean())

    def recall_bound(self, searcher: Searcher) -> tuple[float, float]:
        """Mean recall and its one-sided 95% lower confidence bound (normal approximation over queries)."""
        per_query = self._per_query(searcher)
        spread = per_query.std(ddof=1) / np.sqrt(len(per_query)) if len(per_query) > 1 else 0.0
        return float(per_query.mean()), float(per_query.mean() - CONFIDENCE_Z * spread)

    def _per_query(self, searcher: Searcher) -> np.ndarray:
        _, ids = searcher.search(self.queries, self.k)
        hits = exact_scores(self.rows, self.queries, ids) >= self.kth_score[:, None] - TIE_TOLERANCE
        return hits.sum(axis=1) / min(self.k, len(self.rows))

    def latency_ms(self, searcher: Searcher, count: int = LATENCY_QUERIES, k: int = K) -> float:
        return single_query_ms(searcher, self.queries[:count], k)


def single_query_ms(searcher: Searcher, queries: np.ndarray, k: int = K) -> float:
    """Median ms of one query searched alone, on one thread (faiss's thread count restored after)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for query in queries[:5]:
            searcher.search(query[None], k)  # warm the caches (and page in a memory-mapped file)
        times = []
        for query in queries:
            started = time.perf_counter()
            searcher.search(query[None], k)
            times.append(time.perf_counter() - started)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.median(times) * 1000)


def exact_search(vectors: np.ndarray | StoredRows, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k (scores, ids), best first, via BLAS over blocks of rows (a running
    top-k merge: one block of rows in float32 at a time, also over memory-mapped shards)."""
    rows = as_rows(vectors)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(rows))
    best_scores = np.empty((len(queries), 0), np.float32)
    best_ids = np.empty((len(queries), 0), np.int64)
    block = max(k, 25_000_000 // max(len(queries), 1))  # ~100 MB of scores at a time
    for start in range(0, len(rows), block):
        scores = queries @ rows.block(start, min(start + block, len(rows))).T
        top = _top_k(scores, k)
        scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        ids = np.concatenate([best_ids, top + start], axis=1)
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_ids, order, 1)


def _top_k(scores: np.ndarray, k: int, rows_at_a_time: int = 128) -> np.ndarray:
    """Column numbers of each row's k best scores (any order), a few rows at a time: argpartition's int64
    answer for all 1,000 tuning queries x 25,000 rows at once would be 200 MB beside 100 MB of scores."""
    if scores.shape[1] <= k:
        return np.argsort(-scores, axis=1)
    top = np.empty((len(scores), k), np.int64)
    for low in range(0, len(scores), rows_at_a_time):
        top[low : low + rows_at_a_time] = np.argpartition(-scores[low : low + rows_at_a_time], k - 1, axis=1)[:, :k]
    return top
