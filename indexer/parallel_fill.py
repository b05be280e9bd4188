"""Fill a trained IVF index in parallel, piece by piece, and merge the pieces into one index.

autofaiss's recipe for billions of vectors: train the empty index once (on a sample drawn across all
rows), give every worker a copy of it and a contiguous range of rows, let each add its range with
the rows' global ids, and append the filled pieces' inverted lists in row order (faiss.merge_into).
Every IVF list then holds the same ids in the same order with the same codes as one serial add:
the merged index is the serial one, byte for byte (tests/unit/indexer/test_parallel_fill.py). For that
both compute each chunk's BLAS products (the OPQ rotation, the coarse assignment) on one BLAS thread
(placements): BLAS splits a product's sums by its thread count, and an OPQ index filled by a serial
2-thread add and by 1-thread workers differed in one code byte of 64M at 1M x 512 (bench_scale.py).

Workers are processes here (a spawn pool: faiss's OpenMP threads do not survive fork) or Ray tasks
when the build runs on Ray (`RayFill`). They read the float16 rows from the stored shard files
(pread: nothing is pickled but file names) and write their piece next to them, a folder every Ray
node sees. Once all pieces are on disk the main process sizes the merged lists once for all of them
and merges a piece at a time: its memory is the merged index plus one piece. Flat and HNSW are not
filled this way (an HNSW graph depends on its insertion order; Flat has nothing to parallelise).

The merged index is built in RAM (738 MB at 10M x OPQ64 + PQ64). faiss's merge_ondisk (OnDiskInvertedLists in a
separate .ivfdata file) is not used: the index file names that file by absolute path, which the version
folder's atomic rename breaks; an index bigger than RAM is served memory-mapped from its one file instead.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Protocol, TypeVar

import faiss
import numpy as np

from xmodal.indexer.rows import ShardFile, StoredRows, mapped_file

log = logging.getLogger(__name__)
T = TypeVar("T")

PIECE_ROWS = 500_000  # rows a worker fills at a time: its piece is this many rows' codes and ids
ALIGN = 100_000  # piece boundaries fall on the serial add's chunk boundaries (faiss_build.ADD_BLOCK)


@dataclass(frozen=True)
class Piece:
    """One worker's job: rows [start, stop) of the shard files, added to a copy of the trained index."""

    number: int
    start: int
    stop: int
    shards: tuple[tuple[ShardFile, int], ...]  # (file, rows) of every shard, in row order
    trained: str  # the trained, empty index's file
    out: str  # where the filled piece goes
    threads: int  # faiss threads in the worker


class Fill(Protocol):
    """Runs fill_piece over pieces, yielding each piece's (file, list sizes) in piece order."""

    workers: int
    scratch: Path | None  # where pieces are written (None: beside the shards read)

    def map(self, pieces: list[Piece]) -> Iterator[tuple[str, np.ndarray]]: ...


class ProcessFill:
    """A pool of `workers` spawned processes on this machine, each with cores/workers faiss threads."""

    def __init__(self, workers: int, scratch: Path | None = None):
        self.workers, self.scratch = max(1, workers), scratch

    def map(self, pieces: list[Piece]) -> Iterator[tuple[str, np.ndarray]]:
        with ProcessPoolExecutor(self.workers, mp_context=get_context("spawn")) as pool:
            yield from pool.map(fill_piece, pieces)


class RayFill:
    """Ray tasks on the cluster the Ray build ran on (connected on first use, disconnected after):
    `address` is RayOptions.address ("local" starts a cluster on this machine again)."""

    def __init__(self, address: str = "local", workers: int = 0, scratch: Path | None = None):
        self.address, self.scratch = address, scratch  # scratch: on storage every node sees
        self.workers = workers  # 0: as many tasks at once as the cluster has CPUs

    def map(self, pieces: list[Piece]) -> Iterator[tuple[str, np.ndarray]]:
        import ray

        if self.address == "local":
            ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        else:
            ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
        try:
            task = ray.remote(num_cpus=1)(fill_piece)
            yield from ray.get([task.remote(piece) for piece in pieces])
        finally:
            ray.shutdown()


def can_fill_in_parallel(index: faiss.Index, rows: StoredRows) -> bool:
    """An IVF index over rows that all lie in shard files (so workers can read them by name)."""
    return faiss.try_extract_index_ivf(index) is not None and all(f is not None for f in _files(rows))


def fill_in_parallel(
    index: faiss.Index,
    rows: StoredRows,
    fill: Fill,
    *,
    planned: StoredRows | None = None,
    piece_rows: int | None = None,
) -> None:
    """Add every row of `rows` (ids = row numbers) to the trained, empty IVF `index`, in pieces filled by
    `fill`'s workers and merged in row order. The merged lists are sized once, for the pieces and for the
    rows of `planned` past `rows` (added later, e.g. tuning queries), as add_to_sized_lists does."""
    if index.ntotal:
        raise ValueError("fill_in_parallel fills an empty index")
    files = _files(rows)
    shards = tuple((file, len(shard)) for file, shard in zip(files, rows.shards) if file is not None)
    if len(shards) != len(files):
        raise ValueError("a parallel fill reads rows from shard files; these rows are (partly) in memory")
    folder = Path(tempfile.mkdtemp(prefix=".fill-", dir=fill.scratch or Path(shards[0][0].path).parent))
    try:
        trained = folder / "trained.faiss"
        faiss.write_index(index, str(trained))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // fill.workers) if fill.workers else 1  # Ray: one CPU a task
        pieces = [
            Piece(number, start, stop, shards, str(trained), str(folder / f"piece-{number:05d}.faiss"), threads)
            for number, (start, stop) in enumerate(piece_ranges(len(rows), piece_rows or PIECE_ROWS))
        ]
        log.info("filling %d rows in %d pieces on %s workers", len(rows), len(pieces), fill.workers or "all")
        filled = list(fill.map(pieces))  # every piece on disk before the merge: one in memory at a time
        ivf = faiss.extract_index_ivf(index)
        sizes = np.sum([piece_sizes for _, piece_sizes in filled], axis=0)
        reserve(ivf, sizes + later_list_sizes(index, planned if planned is not None else rows, len(rows)))
        for path, _ in filled:
            faiss.merge_into(index, faiss.read_index(path), False)  # appends each list; ids kept as they are
            os.remove(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def piece_ranges(n: int, piece_rows: int = PIECE_ROWS, align: int = ALIGN) -> list[tuple[int, int]]:
    """Contiguous row ranges of `piece_rows`, rounded down to a multiple of `align` (the serial add's chunks
    restart there, so a piece adds exactly the serial chunks) unless `piece_rows` is smaller (tests)."""
    step = max(align, piece_rows // align * align) if piece_rows >= align else max(1, piece_rows)
    return [(start, min(start + step, n)) for start in range(0, n, step)]


def fill_piece(piece: Piece) -> tuple[str, np.ndarray]:
    """A worker: a copy of the trained index holding rows [start, stop) with their global ids, written to
    piece.out, its lists sized once. Returns piece.out and how many rows each list got."""
    from xmodal.indexer.faiss_build import add_ranges, blas_for_small_batches

    faiss.omp_set_num_threads(piece.threads)
    index = faiss.read_index(piece.trained)
    rows = _open_rows(piece.shards)
    # the serial add's chunks (cut at the piece's ends: only pieces smaller than a chunk, in tests, are)
    ranges = [(max(low, piece.start), high) for low, high in add_ranges(piece.stop, "ivf") if high > piece.start]
    with blas_for_small_batches():
        sizes = add_placed(index, rows, ranges, piece.threads)
    faiss.write_index(index, piece.out)
    return piece.out, sizes


def add_placed(
    index: faiss.Index, rows: StoredRows, ranges: list[tuple[int, int]], threads: int, later: np.ndarray | None = None
) -> np.ndarray:
    """Add the `ranges` of `rows` (ids = row numbers) to the trained IVF inside `index`, every list
    sized once for its final length (plus `later` rows per list, added afterwards); the serial build
    and a parallel fill's workers both add this way. Returns how many of the rows each list got."""
    ivf = faiss.extract_index_ivf(index)
    assignments = [assigned for _, assigned in placements(index, rows, ranges, threads)]
    sizes = np.bincount(np.concatenate(assignments), minlength=ivf.nlist) if assignments else np.zeros(ivf.nlist, int)
    reserve(ivf, sizes if later is None else sizes + later)
    for (low, high), (block, assigned) in zip(ranges, placements(index, rows, ranges, threads, assignments)):
        ids = np.arange(low, high, dtype=np.int64)
        ivf.add_core(len(block), faiss.swig_ptr(block), faiss.swig_ptr(ids), faiss.swig_ptr(assigned))
    index.ntotal = ivf.ntotal
    return sizes


def placements(
    index: faiss.Index,
    rows: StoredRows,
    ranges: list[tuple[int, int]],
    threads: int,
    assignments: list[np.ndarray] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per range of rows, in order: the rows as the IVF inside `index` sees them (transformed) and the
    list each goes to (the coarse quantizer's nearest centroid; `assignments`, when given, instead of
    searching again). Each range is computed on one BLAS thread, `threads` ranges at a time: the
    results are the same whatever the thread count, so serial and parallel fills agree byte for byte."""
    ivf = faiss.extract_index_ivf(index)

    def place(number: int) -> tuple[np.ndarray, np.ndarray]:
        block = transform(index, rows.block(*ranges[number]))
        assigned = assignments[number] if assignments is not None else assign(ivf, block)
        return block, np.ascontiguousarray(assigned, dtype=np.int64)

    at_once = max(1, threads)
    with ThreadPoolExecutor(at_once) as pool:
        for first in range(0, len(ranges), at_once):  # a window at a time: bounded memory
            window = range(first, min(first + at_once, len(ranges)))
            yield from pool.map(lambda number: _one_blas_thread(lambda: place(number)), window)


def assign(index: faiss.Index, transformed: np.ndarray) -> np.ndarray:
    """Each transformed row's inverted list: its nearest coarse centroid (what IndexIVF.add does)."""
    return faiss.extract_index_ivf(index).quantizer.search(transformed, 1)[1][:, 0]


def _one_blas_thread(work: Callable[[], T]) -> T:
    """work() with one OpenMP (so BLAS) thread in the calling thread: the setting is per thread."""
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        return work()
    finally:
        faiss.omp_set_num_threads(previous)


def later_list_sizes(index: faiss.Index, planned: StoredRows, start: int) -> np.ndarray:
    """How many of the rows of `planned` from `start` on (added later: tuning queries) each list gets."""
    ivf = faiss.extract_index_ivf(index)
    if len(planned) <= start:
        return np.zeros(ivf.nlist, np.int64)
    later = _one_blas_thread(lambda: assign(index, transform(index, planned.block(start, len(planned)))))
    return np.bincount(later, minlength=ivf.nlist)


def reserve(ivf: faiss.IndexIVF, sizes: np.ndarray) -> None:
    """Give every list the capacity for its final size at once (std::vector keeps it when shrunk back)."""
    if ivf.invlists is None:
        raise ValueError("the IVF index has no inverted lists to size")
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    for list_no, size in enumerate(np.asarray(sizes).tolist()):
        if size:
            lists.resize(list_no, size)
            lists.resize(list_no, 0)


def transform(index: faiss.Index, block: np.ndarray) -> np.ndarray:
    """Rows as the IVF inside `index` sees them: through the chain (an OPQ rotation) of IndexPreTransform."""
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):  # type: ignore[attr-defined]
            block = faiss.downcast_VectorTransform(index.chain.at(i)).apply(block)  # type: ignore[attr-defined]
    return np.ascontiguousarray(block, dtype=np.float32)


def _files(rows: StoredRows) -> list[ShardFile | None]:
    return [file if file is not None else mapped_file(shard) for file, shard in zip(rows.files, rows.shards)]


def _open_rows(shards: tuple[tuple[ShardFile, int], ...]) -> StoredRows:
    """The rows the pieces read: every shard file from its offset, float16 memory maps read by pread."""
    arrays: list[np.ndarray] = [
        np.memmap(file.path, dtype=file.dtype, mode="r", offset=file.offset, shape=(count, file.dim))
        for file, count in shards
    ]
    return StoredRows(arrays, file_reads=True)
