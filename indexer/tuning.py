"""Tune an index's search parameters: the cheapest setting whose recall@10 reaches the target.

The queries are rows held out of the index (the last ones): a vector searched from inside the index
finds its own neighbours far too easily. "Reaching" means the one-sided 95% lower bound of the mean
recall (indexer.recall.RecallBench), and among settings that reach it the fastest single query wins.
Measurements and rejected variants: docs/decisions/index-tuning.md
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

import faiss
import numpy as np

from xmodal.indexer.recall import K, RecallBench
from xmodal.indexer.rows import StoredRows, as_rows
from xmodal.indexer.searcher import Searcher, SearchParams
from xmodal.indexer.selection import IndexChoice

log = logging.getLogger(__name__)

TUNE_QUERIES = 1000
RERANK_FACTORS = (0, 2, 4, 8, 16, 32)
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)


class RecallNotReached(RuntimeError):
    """A candidate index could not reach the recall target at any search parameters we try."""

    def __init__(self, key: str, target: float, best_recall: float, best_params: str):
        self.key, self.target, self.best_recall, self.best_params = key, target, best_recall, best_params
        super().__init__(
            f"{key} reaches recall@{K} {best_recall:.3f} at best ({best_params}), under the {target} target"
        )


@dataclass(frozen=True)
class Tuning:
    params: str
    recall: float  # recall@10 on the held-out queries at `params`
    query_ms: float  # median time of one query alone, one thread
    tried: tuple[tuple[str, float, float], ...] = ()  # (params, recall, its lower bound) evaluated, in order


def held_out_count(n: int, queries: int = TUNE_QUERIES) -> int:
    """How many of the last rows are held out of the index while tuning: `queries`, at most a tenth."""
    return max(1, min(queries, n // 10))


def tune_search_params(
    index: faiss.Index,
    choice: IndexChoice,
    indexed: np.ndarray | StoredRows,
    queries: np.ndarray,
    recall: float = 0.95,
) -> Tuning:
    """The search parameters reaching `recall`@10 on `queries` with the lowest latency.

    "Reaching" means with confidence: the one-sided 95% lower bound of the mean recall over the
    queries (RecallBench.recall_bound), not the mean itself, must reach `recall`. A setting whose mean
    only just passed on the tuning queries fell short on fresh ones: real (trained-model) embeddings,
    IVF512,Flat at nprobe=1, 0.955 on the tuning queries and 0.939 on fresh ones.

    `index` holds exactly the rows `indexed` (ids = row numbers); `queries` must not be among them:
    a vector searched from inside the index finds its own graph or list neighbours far too easily (HNSW
    tuned on in-index rows: 0.974 recall@10 at efSearch=16; the same setting on fresh queries: 0.936).
    """
    rows = as_rows(indexed)
    bench = RecallBench(rows, queries)

    def measure(params: SearchParams) -> float:
        value, bound = bench.recall_bound(Searcher(index, params, rows))
        tried.append((str(params), round(value, 4), round(bound, 4)))
        log.debug("%s %s: recall@%d %.4f (lower bound %.4f)", choice.key, params, K, value, bound)
        return bound

    tried: list[tuple[str, float, float]] = []
    if choice.kind == "flat":
        ladders = [[SearchParams()]]
    elif choice.kind == "hnsw":
        ladders = [[SearchParams(f"efSearch={ef}") for ef in EF_SEARCH]]
    else:
        probes = probe_ladder(faiss.extract_index_ivf(index).nlist)
        depths = sorted(RERANK_FACTORS if choice.rerank else (0,), reverse=True)
        ladders = [[SearchParams(f"nprobe={p}", r) for p in probes] for r in depths]
    feasible: list[SearchParams] = []
    start, stop = 0, len(ladders[0])
    # Deepest re-ranking first: it needs the fewest lists. A shallower one never needs fewer (re-ranking
    # more candidates loses none), so its ladder starts where the deeper one reached and ends at
    # MORE_LISTS times the deepest one's lists: scanning that many more codes costs more than the
    # re-ranking it saves. Shallow ladders without this ran to every list: 85% of a 1M build
    # (docs/decisions/index-tuning.md).
    for ladder in ladders:
        found = _first_reaching(ladder[:stop], measure, recall, start)
        if found is None:
            break  # shallower re-ranking needs still more lists
        feasible.append(found[0])
        start = ladder.index(found[0])
        if len(feasible) == 1 and choice.rerank:  # several ladders: IVF-PQ's nprobe at each re-rank depth
            stop = bisect.bisect_right(probes, MORE_LISTS * probes[start])
    if not feasible:
        best = max(tried, key=lambda t: t[1])
        raise RecallNotReached(choice.key, recall, best[1], best[0])
    timed = [(bench.latency_ms(Searcher(index, params, rows)), params) for params in feasible]
    query_ms, params = min(timed, key=lambda t: t[0])
    mean = next(value for setting, value, _ in tried if setting == str(params))
    return Tuning(str(params), mean, query_ms, tuple(tried))


def probe_ladder(nlist: int) -> list[int]:
    """nprobe values to try: 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and halfway), up to nlist."""
    values, p = {nlist}, 1
    while p < nlist:
        values.update({p, p + p // 2})
        p *= 2
    return sorted(v for v in values if v <= nlist)


SATURATED = 0.002  # recall gained over two doublings below which a ladder has stopped growing
MORE_LISTS = 2  # a shallower re-rank needing more than this many times the deepest one's lists cannot win


def _first_reaching(ladder, measure, target, start=0):
    """The first (cheapest) setting of an increasing ladder, from `start` on, whose recall reaches
    target, assuming recall grows along it: doubling steps (every other rung) until one reaches, then
    the rung between. None when the ladder ends, or its recall stops growing, below the target (PQ codes
    without re-ranking do)."""
    history, previous = [], start - 1
    for position in sorted(set(range(start, len(ladder), 2)) | {len(ladder) - 1}):
        value = measure(ladder[position])
        if value >= target:
            found = (ladder[position], value)
            for between in range(position - 1, previous, -1):  # the rung skipped (at most one)
                between_value = measure(ladder[between])
                if between_value < target:
                    break
                found = (ladder[between], between_value)
            return found
        history.append(value)
        previous = position
        if len(history) >= 3 and history[-1] - history[-3] < SATURATED:
            return None
    return None
