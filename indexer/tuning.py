"""Build the index `indexer.selection` chose, tune its search parameters, and search with them.

`build_vector_index(vectors, budget_bytes, recall)` is the entry point. It trains the best candidate on
a sample (inner product over unit vectors) and adds every vector but the last 1,000 (at most a tenth):
those are the held-out queries. Ground truth is exact search over the indexed rows; the search-time
parameters are the cheapest reaching the recall@10 target, then the held-out rows are added too. A
candidate that cannot reach the target gives way to the next one.

Why hold the queries out of the index instead of sampling indexed rows (autofaiss's way): a vector
that is in the index finds its own graph or list neighbours far too easily. HNSW32 on 30k x 64 clustered
vectors, tuned on indexed rows (own row left out): recall@10 0.974 at efSearch=16; the same setting on
fresh queries from the same distribution: 0.936. The last rows are a fair sample when rows come in no
particular order (synthetic sets); for a folder they are its last files by path.

Search parameters are one string, stored in the manifest and applied by the reader:

    nprobe=24            IVF: inverted lists visited per query (faiss.ParameterSpace)
    efSearch=48          HNSW: candidate list size (faiss.ParameterSpace)
    nprobe=64,rerank=4   also re-score the k*4 best candidates exactly against the stored float16
                         embeddings and keep the k best (xmodal's, not faiss's: PQ codes alone stop
                         near recall@10 0.67 on 512-d vectors; see indexer/selection.py)

Latency is what one query costs alone on one thread (`faiss.omp_set_num_threads(1)`), which is how a
server answering concurrent requests spends it; on this 2-core shared machine a single query with two
OpenMP threads was 3-8x slower than with one (Flat, 100k x 512: 38-48 ms vs 11-12 ms).

Memory-mapping (checked with faiss-cpu 1.15): `faiss.read_index(path, faiss.IO_FLAG_MMAP)` keeps an
IVF index's inverted lists (codes and ids, all but the coarse quantizer) in the file, read-only
(OnDiskInvertedLists over the file written by a plain `faiss.write_index`: no special layout needed);
for Flat and HNSW it has no effect. `IO_FLAG_MMAP_IFC` maps any index zero-copy (Flat, HNSW's vectors,
IVF lists) but combining both flags fails for IVF ("mmap only supported for File objects"). The reader
maps IVF indexes with IO_FLAG_MMAP and loads Flat and HNSW into memory, as before.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import faiss
import numpy as np

from indexer.selection import (
    DEFAULT_LATENCY_MS,
    PQ_TRAIN_POINTS,
    TRAIN_POINTS_PER_LIST,
    IndexChoice,
    choose_index_keys,
    estimate_bytes,
)

log = logging.getLogger(__name__)

K = 10  # recall@K is what the targets mean
TUNE_QUERIES = 1000
LATENCY_QUERIES = 200
RERANK_FACTORS = (0, 2, 4, 8, 16, 32)
EF_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 2048, 4096)
OPQ_ITERATIONS = 20  # faiss's default is 50; 20 bounds training time on small machines (not compared for recall)
BLAS_THRESHOLD = 20  # faiss < 1.15's default; see blas_for_small_batches
TIE_TOLERANCE = 1e-5  # a result scoring within this of the true k-th score counts as a true neighbour


class RecallNotReached(RuntimeError):
    """A candidate index could not reach the recall target at any search parameters we try."""

    def __init__(self, key: str, target: float, best_recall: float, best_params: str):
        self.key, self.target, self.best_recall, self.best_params = key, target, best_recall, best_params
        super().__init__(f"{key} reaches recall@{K} {best_recall:.3f} at best ({best_params}), under the {target} target")


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
        faiss.ParameterSpace().set_index_parameters(index, parsed.faiss)
    return parsed


def is_ivf(key: str) -> bool:
    return "IVF" in key


def read_flags(key: str) -> int:
    """faiss.read_index flags for serving an index of this key: IVF inverted lists stay memory-mapped."""
    return faiss.IO_FLAG_MMAP if is_ivf(key) else 0


class StoredRows:
    """Rows by id over the float16 shards (memory-mapped arrays, row i of the whole = id i) or one array."""

    def __init__(self, shards: list[np.ndarray] | np.ndarray):
        self.shards = [shards] if isinstance(shards, np.ndarray) else list(shards)
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def take(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.shards) == 1:
            return np.asarray(self.shards[0][ids], dtype=np.float32)
        shard_of = np.searchsorted(self.starts, ids, side="right") - 1
        out = np.empty((len(ids), self.shards[0].shape[1]), np.float32)
        for shard in np.unique(shard_of):
            mask = shard_of == shard
            out[mask] = self.shards[shard][ids[mask] - self.starts[shard]]
        return out


class Searcher:
    """An index with its search parameters applied; re-ranks from the stored rows when they ask for it."""

    def __init__(self, index: faiss.Index, params: str | SearchParams | None = "", rows: StoredRows | None = None):
        self.index = index
        self.params = apply_search_params(index, params)
        if self.params.rerank and rows is None:
            raise ValueError(f"search parameters {self.params} re-rank, which needs the stored vectors")
        self.rows = rows

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
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
        if not self.params.rerank:
            return scores, candidates
        exact = exact_scores(self.rows, queries, candidates)
        best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        scores, ids = np.take_along_axis(exact, best, 1), np.take_along_axis(candidates, best, 1)
        ids[scores == -np.inf] = -1
        return scores, ids

    def _selecting(self, selector: faiss.IDSelector) -> faiss.SearchParameters:
        """Search parameters carrying `selector` and the tuned values: a faiss IVF index refuses plain
        SearchParameters, and its nprobe would otherwise fall back to the parameters' default of 1."""
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
        hnsw = getattr(faiss.downcast_index(self.index), "hnsw", None)
        if hnsw is not None:
            return faiss.SearchParametersHNSW(sel=selector, efSearch=hnsw.efSearch)
        return faiss.SearchParameters(sel=selector)


@dataclass(frozen=True)
class Tuning:
    params: str
    recall: float  # recall@10 on the held-out queries at `params`
    query_ms: float  # median time of one query alone, one thread
    tried: tuple[tuple[str, float], ...] = ()  # (params, recall) evaluated, in order


@dataclass(frozen=True)
class BuiltIndex:
    """A built, tuned index and what was measured; `manifest_fields()` fills a VectorIndexInfo."""

    index: faiss.Index
    choice: IndexChoice
    search_params: str
    measured_recall_at_10: float | None  # None for exact Flat (not measured: exact by construction)
    measured_query_ms: float | None
    seconds: dict[str, float] = field(default_factory=dict)
    rejected: tuple[str, ...] = ()  # candidates tried first that missed the recall target, with why
    tried: tuple[tuple[str, float], ...] = ()  # (search params, recall@10) evaluated while tuning

    @property
    def key(self) -> str:
        return self.choice.key

    def manifest_fields(self) -> dict:
        return {
            "index_key": self.key,
            "search_params": self.search_params,
            "measured_recall_at_10": self.measured_recall_at_10,
            "measured_query_ms": self.measured_query_ms,
        }


def build_vector_index(
    vectors: np.ndarray,
    budget_bytes: int | None = None,
    recall: float = 0.95,
    *,
    latency_ms: float | None = DEFAULT_LATENCY_MS,
    key: str | None = None,
    seed: int = 0,
    tune_queries: int = TUNE_QUERIES,
) -> BuiltIndex:
    """The best index for `vectors` (unit rows, float32) within `budget_bytes`, tuned to `recall`@10.

    Small sets (n < 10,000, or exact search within `latency_ms`) get exact `Flat`, untuned, as before.
    `key` forces a faiss factory string instead of choosing (its budget is not checked).
    Raises selection.NoIndexFits when nothing fits, RecallNotReached when no candidate reaches `recall`.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    candidates = [describe_key(key, n, dim)] if key else choose_index_keys(
        n, dim, budget_bytes, recall=recall, latency_ms=latency_ms)
    rejected: list[str] = []
    failure: RecallNotReached | None = None
    for choice in candidates:
        started = time.perf_counter()
        if choice.kind == "flat":
            index = faiss.index_factory(dim, "Flat", faiss.METRIC_INNER_PRODUCT)
            index.add(vectors)
            return BuiltIndex(index, choice, "", None, None, {"add": round(time.perf_counter() - started, 3)},
                              tuple(rejected))
        log.info("building %s for %d x %d vectors (%s)", choice.key, n, dim, choice.reason)
        indexed = n - held_out_count(n, tune_queries)  # the last rows are the tuning queries, added after
        rng = np.random.default_rng(seed)
        train_size = min(choice.train_size, indexed)
        train_ids = np.sort(rng.choice(indexed, train_size, replace=False)) if train_size else np.array([], int)
        index, seconds = train_and_add(vectors[:indexed], choice, train_ids)
        tune_started = time.perf_counter()
        try:
            tuning = tune_search_params(index, choice, vectors[:indexed], vectors[indexed:], recall)
        except RecallNotReached as exc:
            log.warning("%s; trying the next candidate", exc)
            rejected.append(str(exc))
            failure = exc
            continue
        seconds["tune"] = round(time.perf_counter() - tune_started, 3)
        index.add(vectors[indexed:])
        log.info("%s: %s gives recall@%d %.3f at %.2f ms a query", choice.key, tuning.params, K, tuning.recall,
                 tuning.query_ms)
        return BuiltIndex(index, choice, tuning.params, round(tuning.recall, 4), round(tuning.query_ms, 3), seconds,
                          tuple(rejected), tuning.tried)
    assert failure is not None
    raise failure


def held_out_count(n: int, queries: int = TUNE_QUERIES) -> int:
    """How many of the last rows are held out of the index while tuning: `queries`, at most a tenth."""
    return max(1, min(queries, n // 10))


def describe_key(key: str, n: int, dim: int) -> IndexChoice:
    """An IndexChoice for a factory string given by hand (`xmodal reindex --key`)."""
    try:
        size = estimate_bytes(key, n, dim)
    except ValueError:
        size = -1  # a key the selector never picks: no estimate
    probe = IndexChoice(key, "", size, 0, False, False, False, "given by hand")
    if key == "Flat":
        kind = "flat"
    elif "HNSW" in key and not is_ivf(key):
        kind = "hnsw"
    elif is_ivf(key):
        kind = "ivf_pq" if "PQ" in key else "ivf_flat"
    else:
        raise ValueError(f"index key {key!r}: xmodal builds Flat, HNSW and IVF indexes")
    compressed = "PQ" in key or "SQ" in key
    train = 0
    if is_ivf(key):
        train = min(n, max(TRAIN_POINTS_PER_LIST * probe.nlist, PQ_TRAIN_POINTS if compressed else 10_000))
    return IndexChoice(key, kind, size, train, exact=kind == "flat", mmap=is_ivf(key), rerank=compressed,
                       reason="given by hand")


def train_and_add(vectors: np.ndarray, choice: IndexChoice, train_ids: np.ndarray) -> tuple[faiss.Index, dict]:
    """faiss.index_factory(dim, key, inner product), trained on vectors[train_ids], holding every vector."""
    index = faiss.index_factory(vectors.shape[1], choice.key, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf = faiss.downcast_index(ivf)
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False  # we never search with polysemous codes; it was 90% of PQ training
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            transform = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = OPQ_ITERATIONS
    seconds = {}
    with blas_for_small_batches():
        started = time.perf_counter()
        if not index.is_trained:
            index.train(vectors[train_ids])
        seconds["train"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        for start in range(0, len(vectors), 100_000):
            index.add(vectors[start : start + 100_000])
        seconds["add"] = round(time.perf_counter() - started, 3)
    return index, seconds


@contextmanager
def blas_for_small_batches(threshold: int = BLAS_THRESHOLD):
    """Let faiss use BLAS for small distance batches while training (restored after).

    faiss 1.15 switches to BLAS only when queries x dimension >= 128,000 (it was 20 queries); PQ and OPQ
    k-means on 2-8 dimensional sub-vectors then take the slow path: OPQ16 on 20k x 64 trained in 52 s
    with it, 4.8 s with the threshold at 20; PQ32 in 20 s vs 1.4 s (2-core machine above).
    """
    before = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = threshold
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = before


def tune_search_params(
    index: faiss.Index,
    choice: IndexChoice,
    indexed: np.ndarray,
    queries: np.ndarray,
    recall: float = 0.95,
) -> Tuning:
    """The search parameters reaching `recall`@10 on `queries` with the lowest latency.

    `index` holds exactly the rows `indexed` (ids = row numbers); `queries` must not be among them:
    a vector searched from inside the index finds its own graph or list neighbours far too easily (HNSW
    tuned on in-index rows: 0.974 recall@10 at efSearch=16; the same setting on fresh queries: 0.936).
    """
    rows = StoredRows(indexed)
    bench = RecallBench(rows, queries)

    def measure(params: SearchParams) -> float:
        value = bench.recall(Searcher(index, params, rows))
        tried.append((str(params), round(value, 4)))
        log.debug("%s %s: recall@%d %.4f", choice.key, params, K, value)
        return value

    tried: list[tuple[str, float]] = []
    if choice.kind == "flat":
        ladders = [[SearchParams()]]
    elif choice.kind == "hnsw":
        ladders = [[SearchParams(f"efSearch={ef}") for ef in EF_SEARCH]]
    else:
        probes = _probe_ladder(faiss.extract_index_ivf(index).nlist)
        ladders = [[SearchParams(f"nprobe={p}", r) for p in probes] for r in (RERANK_FACTORS if choice.rerank else (0,))]
    feasible: list[tuple[SearchParams, float]] = []
    depth = len(ladders[0])  # deeper re-ranking never needs more lists: search below the last one found
    for ladder in ladders:
        found = _first_reaching(ladder[:depth], measure, recall)
        if found is None:
            continue
        position = ladder.index(found[0])
        if feasible and position + 1 == depth:
            break  # deeper re-ranking saved no lists: it would only cost more from here on
        feasible.append(found)
        depth = position + 1
        if depth == 1:
            break  # the cheapest setting reaches the target
    if not feasible:
        best = max(tried, key=lambda t: t[1])
        raise RecallNotReached(choice.key, recall, best[1], best[0])
    timed = [(bench.latency_ms(Searcher(index, params, rows)), params, value) for params, value in feasible]
    query_ms, params, value = min(timed, key=lambda t: t[0])
    return Tuning(str(params), value, query_ms, tuple(tried))


def _probe_ladder(nlist: int) -> list[int]:
    """nprobe values to try: 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and halfway), up to nlist."""
    values, p = {nlist}, 1
    while p < nlist:
        values.update({p, p + p // 2})
        p *= 2
    return sorted(v for v in values if v <= nlist)


SATURATED = 0.002  # recall gained over two doublings below which a ladder has stopped growing


def _first_reaching(ladder, measure, target):
    """The first (cheapest) setting of an increasing ladder whose recall reaches target, assuming recall
    grows along it: doubling steps (every other rung) until one reaches, then the rung between. None when
    the ladder ends, or its recall stops growing, below the target (PQ codes without re-ranking do)."""
    history, previous = [], -1
    for position in sorted(set(range(0, len(ladder), 2)) | {len(ladder) - 1}):
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


class RecallBench:
    """Recall@10 and latency of a searcher on queries whose exact neighbours in `rows` are known.

    A result counts as a true neighbour when its exact score reaches the true 10th score (less
    TIE_TOLERANCE): ties and exact duplicates don't make an exact answer look wrong.
    """

    def __init__(self, rows: StoredRows, queries: np.ndarray, k: int = K):
        self.rows, self.k = rows, k
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        vectors = rows.shards[0] if len(rows.shards) == 1 else rows.take(np.arange(len(rows)))
        self.kth_score = exact_search(vectors, self.queries, k)[0][:, -1]

    def recall(self, searcher: Searcher) -> float:
        _, ids = searcher.search(self.queries, self.k)
        hits = exact_scores(self.rows, self.queries, ids) >= self.kth_score[:, None] - TIE_TOLERANCE
        return float(hits.sum()) / (len(self.queries) * min(self.k, len(self.rows)))

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


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k (scores, ids), best first, via BLAS over blocks of rows."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, len(vectors))
    best_scores = np.empty((len(queries), 0), np.float32)
    best_ids = np.empty((len(queries), 0), np.int64)
    block = max(k, 25_000_000 // max(len(queries), 1))  # ~100 MB of scores at a time
    for start in range(0, len(vectors), block):
        scores = queries @ np.asarray(vectors[start : start + block], dtype=np.float32).T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else np.argsort(-scores, axis=1)
        scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], axis=1)
        ids = np.concatenate([best_ids, top + start], axis=1)
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, keep, 1), np.take_along_axis(ids, keep, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_ids, order, 1)
