"""Build the index `indexer.selection` chose: train it on a sample, add every row, tune, add the queries.

`build_vector_index(vectors, budget_bytes, recall)` is the entry point. It holds the last rows out of
the index as tuning queries (indexer.tuning), and a candidate that cannot reach the recall target gives
way to the next one. Rows are read a chunk at a time from StoredRows, so memory stays bounded by the
training sample whatever the row count.
Measurements and rejected variants: docs/decisions/index-tuning.md
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import faiss
import numpy as np

from xmodal.indexer.parallel_fill import Fill, add_placed, can_fill_in_parallel, fill_in_parallel, later_list_sizes
from xmodal.indexer.recall import K
from xmodal.indexer.rows import StoredRows, as_rows
from xmodal.indexer.searcher import is_ivf
from xmodal.indexer.selection import (
    DEFAULT_LATENCY_MS,
    PQ_TRAIN_POINTS,
    TRAIN_POINTS_PER_LIST,
    IndexChoice,
    choose_index_keys,
    estimate_bytes,
)
from xmodal.indexer.tuning import TUNE_QUERIES, RecallNotReached, held_out_count, tune_search_params

log = logging.getLogger(__name__)

OPQ_ITERATIONS = 20  # faiss's default is 50; 20 bounds training time on small machines (not compared for recall)
BLAS_THRESHOLD = 20  # faiss < 1.15's default; see blas_for_small_batches
ADD_BLOCK = 100_000  # rows an HNSW build adds at a time (and every build did before streaming): see add_ranges
ADD_ROWS = 32_768  # float32 rows a Flat or IVF build adds at a time (64 MiB at 512-d)


def add_ranges(n: int, kind: str) -> list[tuple[int, int]]:
    """Row ranges a build adds at a time: bounded float32 chunks, cut where the index stays the same.

    Rows used to be added 100,000 at a time (a float32 copy of all rows existed anyway). An IVF index
    encodes every vector on its own, but the BLAS products before it (an OPQ rotation, the coarse
    assignment) round a row's sums by the shape of its chunk: at 512-d, rows of a 32,768-row OPQ
    rotation changed in their last bit when the chunk was cut at row 20,000. So the chunks are fixed
    (they restart at every 100,000th row) and a parallel fill's pieces cut the same ones
    (parallel_fill.piece_ranges). An HNSW graph depends on its add batches (each is inserted level by
    level): it keeps 100,000-row chunks, 200 MB of float32 at 512-d beside a 2.2 GiB graph.
    """
    out = []
    for start in range(0, n, ADD_BLOCK):
        stop = min(start + ADD_BLOCK, n)
        step = ADD_BLOCK if kind == "hnsw" else ADD_ROWS
        out += [(low, min(low + step, stop)) for low in range(start, stop, step)]
    return out


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
    fill: Fill | None = None,
) -> BuiltIndex:
    """The best index for `vectors` (unit rows) within `budget_bytes`, tuned to `recall`@10.

    `vectors`: an array, or StoredRows over the memory-mapped float16 shards (what a build passes): rows
    are read a chunk at a time, the training sample and the tuning queries as a whole, so apart from the
    index itself memory stays bounded by the training sample (selection's train sizes: about 100k rows
    at 1M), whatever n is. The result does not depend on which: same sample, same index.
    Small sets (n < 10,000, or exact search within `latency_ms`) get exact `Flat`, untuned, as before.
    `fill`: workers that fill an IVF index in parallel pieces, merged (indexer.parallel_fill; same index).
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
        index, seconds = train_and_add(rows.head(indexed), choice, train_ids, size_lists_for=rows, fill=fill)
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
    fill: Fill | None = None,
) -> tuple[faiss.Index, dict]:
    """faiss.index_factory(dim, key, inner product), trained on vectors[train_ids], holding every vector
    (added a chunk at a time: see add_ranges).

    An IVF index gets its inverted lists sized before the adds (see add_to_sized_lists), for
    `size_lists_for` when given: rows that start with `vectors` and go on with rows added later.
    With `fill`, an IVF index over stored shard files is filled by its workers in pieces and merged
    (indexer.parallel_fill): the same index, built on several cores or nodes.
    """
    rows = as_rows(vectors)
    index = faiss.index_factory(rows.dim, choice.key, faiss.METRIC_INNER_PRODUCT)
    extracted = faiss.try_extract_index_ivf(index)
    if extracted is not None:
        ivf = faiss.downcast_index(extracted)
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False  # we never search with polysemous codes; it was 90% of PQ training
    if isinstance(index, faiss.IndexPreTransform):
        chain = index.chain  # a C++ std::vector; faiss's stubs call it a Python list
        for i in range(chain.size()):  # type: ignore[attr-defined]
            transform = faiss.downcast_VectorTransform(chain.at(i))  # type: ignore[attr-defined]
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = OPQ_ITERATIONS
    seconds = {}
    with blas_for_small_batches():
        started = time.perf_counter()
        if not index.is_trained:
            index.train(rows.take(train_ids))
        seconds["train"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        if fill is not None and can_fill_in_parallel(index, rows):
            fill_in_parallel(index, rows, fill, planned=size_lists_for or rows)
        elif faiss.try_extract_index_ivf(index) is not None:
            add_to_sized_lists(index, rows, size_lists_for or rows)
        else:
            for start, stop in add_ranges(len(rows), choice.kind):
                index.add(rows.block(start, stop))
        seconds["add"] = round(time.perf_counter() - started, 3)
    return index, seconds


def add_to_sized_lists(index: faiss.Index, rows: StoredRows, planned: StoredRows) -> None:
    """Add `rows` to a trained IVF index (or OPQ + IVF) whose lists are first sized for all of `planned`.

    Adding row by row, faiss grows each inverted list as a std::vector does, doubling its capacity: at
    1M x 512 IVF2048,Flat the lists held ~1.5x their 1.95 GiB of codes, and a list being regrown holds
    its old and new copy at once. Here each row's list is found first (the coarse quantizer's nearest
    centroid, exactly what add does; 8 bytes a row), every list reserved once at its final size, and the
    rows added with those assignments (IndexIVF.add_core), so the lists never regrow. The index is the
    same byte for byte. Rows of `planned` past `rows` (the tuning queries) are added later with a plain
    add and fit the room left for them. The workers of a parallel fill add their pieces the same way
    (parallel_fill.add_placed), so both fills give the same index.
    """
    ranges = add_ranges(len(rows), "ivf")
    add_placed(index, rows, ranges, faiss.omp_get_max_threads(), later_list_sizes(index, planned, len(rows)))


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
