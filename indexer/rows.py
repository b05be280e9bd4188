"""Stored embedding rows read by id or range as float32, without a float32 copy of them all.

The float16 shards of a version are memory-mapped; a build reads them with plain file reads (see
StoredRows) so that re-ranking and ground truth do not map whole shards into its memory.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

import numpy as np


class StoredRows:
    """Rows by id over the float16 shards (memory-mapped arrays, row i of the whole = id i) or one array.

    A build reads its rows through this too, so that no float32 copy of all of them ever exists: `block`
    gives a range of rows, `take` any rows, both as float32. With `file_reads=True` (a build's rows),
    memory-mapped shards are read with plain file reads (pread) instead of through the mapping: reading a
    mapped row maps the whole page-cache folio around it into this process (on this machine's ext4,
    kernel 6.18: 10 random rows mapped 16 MB, 100 rows 82 MB of a 100 MB shard; no madvise hint
    changed it), so tuning's re-ranking reads would count all shards, 1 GB at 1M x 512, in the build's
    RSS. The page cache serves both. The reader's re-ranking reads by pread too (bench/bench_scale.py).
    """

    def __init__(self, shards: list[np.ndarray] | np.ndarray, *, file_reads: bool = False):
        self.shards = [shards] if isinstance(shards, np.ndarray) else list(shards)
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.file_reads = file_reads
        self.files = [mapped_file(s) if file_reads else None for s in self.shards]

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
class ShardFile:
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
        view = out.reshape(-1).view(np.uint8).data
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, row in enumerate(rows.tolist()):
                target = view[i * row_bytes : (i + 1) * row_bytes]
                if os.preadv(fd, [target], self.offset + row * row_bytes) != row_bytes:
                    raise OSError(f"{self.path}: row {row} is past the end of the file")
        finally:
            os.close(fd)
        return out


def mapped_file(array: np.ndarray) -> ShardFile | None:
    """Where a memory-mapped array (np.load(..., mmap_mode="r")), or a view of its first rows, lies in
    its file; None for arrays in RAM and views it cannot place."""
    base: np.ndarray | None = array
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
    return ShardFile(base.filename, base.offset, array.dtype, array.shape[1])


def as_rows(vectors: np.ndarray | StoredRows) -> StoredRows:
    return vectors if isinstance(vectors, StoredRows) else StoredRows(np.asarray(vectors))
