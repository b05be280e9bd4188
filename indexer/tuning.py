"""Build the index `indexer.selection` chose, tune its search parameters, and search with them.

`build_vector_index(vectors, budget_bytes, recall)` is the entry point. It trains the best candidate on
a sample (inner product over unit vectors) and adds every vector but the last 1,000 (at most a tenth):
those are the held-out queries. Ground truth is exact search over the indexed rows; the search-time
parameters are the cheapest whose recall@10 reaches the target with 95% confidence (tune_search_params),
then the held-out rows are added too. A
candidate that cannot reach the target gives way to the next one.

Memory: a build passes the rows as StoredRows over its memory-mapped float16 shards, and nothing here
holds all of them in float32: training takes the sampled rows only (selection's train sizes), adds go a
chunk at a time (add_ranges), and the tuning queries' exact neighbours are a running top-k merge over
blocks of rows. What a build holds beyond the index is the training sample and faiss's training copies
of it (about 100k rows at 1M); bench/bench_build_memory.py measures it.

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
import mmap
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import faiss
import numpy as np

from xmodal.indexer.selection import (
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
CONFIDENCE_Z = 1.645  # one-sided 95%: tuning asks the recall's lower bound, not its mean, to reach the target
TIE_TOLERANCE = 1e-5  # a result scoring within this of the true k-th score counts as a true neighbour
ADD_BLOCK = 100_000  # rows an HNSW build adds at a time (and every build did before streaming): see add_ranges
ADD_ROWS = 32_768  # float32 rows a Flat or IVF build adds at a time (64 MiB at 512-d)


class RecallNotReached(RuntimeError):
    """A candidate index could not reach the recall target at any search parameters we try."""

    def __init__(self, key: str, target: float, best_recall: float, best_params: str):
        self.key, self.target, self.best_recall, self.best_params = key, target, best_recall, best_params
        super().__init__(
            f"{key} reaches recall@{K} {best_recall:.3f} at best ({best_params}), under the {target} target"
        )


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
    """Rows by id over the float16 shards (memory-mapped arrays, row i of the whole = id i) or one array.

    A build reads its rows through this too, so that no float32 copy of all of them ever exists: `block`
    gives a range of rows, `take` any rows, both as float32. With `file_reads=True` (a build's rows),
    memory-mapped shards are read with plain file reads (pread) instead of through the mapping: reading a
    mapped row maps the whole page-cache folio around it into this process (on this machine's ext4,
    kernel 6.18: 10 random rows mapped 16 MB, 100 rows 82 MB of a 100 MB shard; no madvise hint
    changed it), so tuning's re-ranking reads would count all shards, 1 GB at 1M x 512, in the build's
    RSS. The page cache serves both. The reader reads through the mapping (it keeps its pages).
    """

    def __init__(self, shards: list[np.ndarray] | np.ndarray, *, file_reads: bool = False):
        self.shards = [shards] if isinstance(shards, np.ndarray) else list(shards)
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.file_reads = file_reads
        self.files = [_mapped_file(s) if file_reads else None for s in self.shards]

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def dim(self) -> int:
        return int(self.shards[0].shape[1])

    def head(self, count: int) -> StoredRows:
        """The first `count` rows (views: nothing is read)."""
        shards, left = [], count
        for shard in self.shards:
            if left <= 0:
                break
            shards.append(shard[:left])
            left -= len(shards[-1])
        return StoredRows(shards or [self.shards[0][:0]], file_reads=self.file_reads)

    def block(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as one contiguous float32 array."""
        parts = []
        for number, shard in enumerate(self.shards):
            low, high = max(start - self.starts[number], 0), min(stop - self.starts[number], len(shard))
            if low < high:
                file = self.files[number]
                parts.append(shard[low:high] if file is None else file.range(low, high))
        if not parts:
            return np.empty((0, self.dim), np.float32)
        if len(parts) == 1:
            return np.ascontiguousarray(parts[0], np.float32)
        return np.concatenate(parts, dtype=np.float32)

    def take(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if len(self.shards) == 1:
            return np.asarray(self._rows(0, ids), dtype=np.float32)
        shard_of = np.searchsorted(self.starts, ids, side="right") - 1
        out = np.empty((len(ids), self.dim), np.float32)
        for shard in np.unique(shard_of):
            mask = shard_of == shard
            out[mask] = self._rows(shard, ids[mask] - self.starts[shard])
        return out

    def _rows(self, number: int, rows: np.ndarray) -> np.ndarray:
        file = self.files[number]
        return self.shards[number][rows] if file is None else file.rows(rows)


@dataclass(frozen=True)
class _ShardFile:
    """A C-ordered array stored in a file from byte `offset` on: rows read with pread, nothing mapped."""

    path: str
    offset: int
    dtype: np.dtype
    dim: int

    def range(self, low: int, high: int) -> np.ndarray:
        row_bytes = self.dim * self.dtype.itemsize
        data = np.fromfile(self.path, self.dtype, (high - low) * self.dim, offset=self.offset + low * row_bytes)
        if len(data) != (high - low) * self.dim:
            raise OSError(f"{self.path}: rows {low}-{high} are past the end of the file")
        return data.reshape(high - low, self.dim)

    def rows(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.dim), self.dtype)
        row_bytes = self.dim * self.dtype.itemsize
        view = memoryview(out.reshape(-1).view(np.uint8))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, row in enumerate(rows.tolist()):
                target = view[i * row_bytes : (i + 1) * row_bytes]
                if os.preadv(fd, [target], self.offset + row * row_bytes) != row_bytes:
                    raise OSError(f"{self.path}: row {row} is past the end of the file")
        finally:
            os.close(fd)
        return out


def _mapped_file(array: np.ndarray) -> _ShardFile | None:
    """Where a memory-mapped array (np.load(..., mmap_mode="r")), or a view of its first rows, lies in
    its file; None for arrays in RAM and views it cannot place."""
    base = array
    while isinstance(base, np.ndarray) and not isinstance(base.base, mmap.mmap):
        base = base.base
    if not (
        isinstance(base, np.memmap)
        and base.filename
        and base.flags.c_contiguous
        and array.flags.c_contiguous
        and array.ndim == 2
        and array.ctypes.data == base.ctypes.data
    ):
        return None
    return _ShardFile(base.filename, base.offset, array.dtype, array.shape[1])


def as_rows(vectors: np.ndarray | StoredRows) -> StoredRows:
    return vectors if isinstance(vectors, StoredRows) else StoredRows(np.asarray(vectors))


def add_ranges(n: int, kind: str) -> list[tuple[int, int]]:
    """Row ranges a build adds at a time: bounded float32 chunks, cut where the index stays the same.

    Rows used to be added 100,000 at a time (a float32 copy of all rows existed anyway). An IVF index
    assigns and encodes every vector on its own (IndexIVF::add_core then works in slices of 65,536), so
    smaller chunks give the same index byte for byte (checked for IVF-Flat, IVF-PQ and OPQ with chunks of
    32,768 and 20,000 rows); they restart at every 100,000th row all the same. An HNSW graph depends on
    its add batches (each is inserted level by level): it keeps 100,000-row chunks, 200 MB of float32 at
    512-d beside a 2.2 GiB graph.
    """
    out = []
    for start in range(0, n, ADD_BLOCK):
        stop = min(start + ADD_BLOCK, n)
        step = ADD_BLOCK if kind == "hnsw" else ADD_ROWS
        out += [(low, min(low + step, stop)) for low in range(start, stop, step)]
    return out


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
    tried: tuple[tuple[str, float, float], ...] = ()  # (params, recall, its lower bound) evaluated, in order


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
    tried: tuple[tuple[str, float, float], ...] = ()  # (search params, recall@10, lower bound) while tuning

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
    vectors: np.ndarray | StoredRows,
    budget_bytes: int | None = None,
    recall: float = 0.95,
    *,
    latency_ms: float | None = DEFAULT_LATENCY_MS,
    key: str | None = None,
    seed: int = 0,
    tune_queries: int = TUNE_QUERIES,
) -> BuiltIndex:
    """The best index for `vectors` (unit rows) within `budget_bytes`, tuned to `recall`@10.

    `vectors`: an array, or StoredRows over the memory-mapped float16 shards (what a build passes): rows
    are read a chunk at a time, the training sample and the tuning queries as a whole, so apart from the
    index itself memory stays bounded by the training sample (selection's train sizes: about 100k rows
    at 1M), whatever n is. The result does not depend on which: same sample, same index.
    Small sets (n < 10,000, or exact search within `latency_ms`) get exact `Flat`, untuned, as before.
    `key` forces a faiss factory string instead of choosing (its budget is not checked).
    Raises selection.NoIndexFits when nothing fits, RecallNotReached when no candidate reaches `recall`.
    """
    rows = as_rows(vectors)
    n, dim = len(rows), rows.dim
    candidates = (
        [describe_key(key, n, dim)]
        if key
        else choose_index_keys(n, dim, budget_bytes, recall=recall, latency_ms=latency_ms)
    )
    rejected: list[str] = []
    failure: RecallNotReached | None = None
    for choice in candidates:
        started = time.perf_counter()
        if choice.kind == "flat":
            index = faiss.index_factory(dim, "Flat", faiss.METRIC_INNER_PRODUCT)
            for start, stop in add_ranges(n, choice.kind):
                index.add(rows.block(start, stop))
            return BuiltIndex(
                index, choice, "", None, None, {"add": round(time.perf_counter() - started, 3)}, tuple(rejected)
            )
        log.info("building %s for %d x %d vectors (%s)", choice.key, n, dim, choice.reason)
        indexed = n - held_out_count(n, tune_queries)  # the last rows are the tuning queries, added after
        rng = np.random.default_rng(seed)
        train_size = min(choice.train_size, indexed)
        train_ids = np.sort(rng.choice(indexed, train_size, replace=False)) if train_size else np.array([], int)
        index, seconds = train_and_add(rows.head(indexed), choice, train_ids, size_lists_for=rows)
        queries = rows.block(indexed, n)
        tune_started = time.perf_counter()
        try:
            tuning = tune_search_params(index, choice, rows.head(indexed), queries, recall)
        except RecallNotReached as exc:
            log.warning("%s; trying the next candidate", exc)
            rejected.append(str(exc))
            failure = exc
            continue
        seconds["tune"] = round(time.perf_counter() - tune_started, 3)
        index.add(queries)
        log.info(
            "%s: %s gives recall@%d %.3f at %.2f ms a query",
            choice.key,
            tuning.params,
            K,
            tuning.recall,
            tuning.query_ms,
        )
        return BuiltIndex(
            index,
            choice,
            tuning.params,
            round(tuning.recall, 4),
            round(tuning.query_ms, 3),
            seconds,
            tuple(rejected),
            tuning.tried,
        )
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
    return IndexChoice(
        key, kind, size, train, exact=kind == "flat", mmap=is_ivf(key), rerank=compressed, reason="given by hand"
    )


def train_and_add(
    vectors: np.ndarray | StoredRows,
    choice: IndexChoice,
    train_ids: np.ndarray,
    *,
    size_lists_for: StoredRows | None = None,
) -> tuple[faiss.Index, dict]:
    """faiss.index_factory(dim, key, inner product), trained on vectors[train_ids], holding every vector
    (added a chunk at a time: see add_ranges).

    An IVF index gets its inverted lists sized before the adds (see add_to_sized_lists), for
    `size_lists_for` when given: rows that start with `vectors` and go on with rows added later.
    """
    rows = as_rows(vectors)
    index = faiss.index_factory(rows.dim, choice.key, faiss.METRIC_INNER_PRODUCT)
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
            index.train(rows.take(train_ids))
        seconds["train"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        if isinstance(index, faiss.IndexIVF):
            add_to_sized_lists(index, rows, size_lists_for or rows)
        else:
            for start, stop in add_ranges(len(rows), choice.kind):
                index.add(rows.block(start, stop))
        seconds["add"] = round(time.perf_counter() - started, 3)
    return index, seconds


def add_to_sized_lists(index: faiss.IndexIVF, rows: StoredRows, planned: StoredRows) -> None:
    """Add `rows` to a trained IVF index whose lists are first sized for all of `planned`.

    Adding row by row, faiss grows each inverted list as a std::vector does, doubling its capacity: at
    1M x 512 IVF2048,Flat the lists held ~1.5x their 1.95 GiB of codes, and a list being regrown holds
    its old and new copy at once. Here each row's list is found first (the coarse quantizer's nearest
    centroid, exactly what add does; 8 bytes a row), every list reserved once at its final size, and the
    rows added with those assignments (IndexIVF.add_core), so the lists never regrow. The index is the
    same byte for byte. Rows of `planned` past `rows` (the tuning queries) are added later with a plain
    add and fit the room left for them.
    """
    assignments = np.empty(len(planned), dtype=np.int64)
    for start, stop in add_ranges(len(planned), "ivf"):
        _, nearest = index.quantizer.search(planned.block(start, stop), 1)
        assignments[start:stop] = nearest[:, 0]
    lists = faiss.downcast_InvertedLists(index.invlists)
    for list_no, size in enumerate(np.bincount(assignments, minlength=index.nlist).tolist()):
        if size:
            lists.resize(list_no, size)  # std::vector keeps the capacity when shrunk back to empty
            lists.resize(list_no, 0)
    for start, stop in add_ranges(len(rows), "ivf"):
        block = rows.block(start, stop)
        assigned = np.ascontiguousarray(assignments[start:stop])
        index.add_core(len(block), faiss.swig_ptr(block), None, faiss.swig_ptr(assigned))


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
        probes = _probe_ladder(faiss.extract_index_ivf(index).nlist)
        ladders = [
            [SearchParams(f"nprobe={p}", r) for p in probes] for r in (RERANK_FACTORS if choice.rerank else (0,))
        ]
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
    timed = [(bench.latency_ms(Searcher(index, params, rows)), params) for params, _ in feasible]
    query_ms, params = min(timed, key=lambda t: t[0])
    mean = next(value for setting, value, _ in tried if setting == str(params))
    return Tuning(str(params), mean, query_ms, tuple(tried))


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
