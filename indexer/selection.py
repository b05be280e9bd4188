"""Which FAISS index to build: a pure function of vector count, dimension, memory budget and targets.

No faiss import: `choose_index_keys` can run before anything is loaded, e.g. to refuse a budget up front.
indexer.faiss_build builds the first candidate, tunes it and falls back to the next one. In rank order:
exact `Flat` for small sets (or when one exact query fits `latency_ms`), `HNSW32,Flat`, `IVF{nlist},Flat`,
then OPQ/IVF-PQ for tight budgets, searched with re-ranking from the stored float16 embeddings.
Measurements and rejected variants: docs/decisions/index-selection.md
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from xmodal.models.errors import InvalidInput

SMALL_N = 10_000  # below this, exact search is always cheap and ANN training has too little data
FLAT_NS_PER_ELEMENT = 0.25  # one exact query, one thread: ~0.23 ns per (vector x dimension), measured
DEFAULT_LATENCY_MS = 10.0
HNSW_M = 32
HNSW_BYTES_PER_VECTOR = 8 * HNSW_M + 16  # level-0 links (2M int32) + upper levels, level and offset tables
MIN_POINTS_PER_LIST = 39  # faiss k-means warns below 39 training points per centroid
TRAIN_POINTS_PER_LIST = 50
PQ_TRAIN_POINTS = 65_536  # 256 centroids x 256 points: faiss's cap for PQ k-means
PQ_CODE_SIZES = (128, 96, 64, 48, 32, 24, 16, 12, 8, 4)  # bytes per vector, largest first
OPQ_MIN_DIMS_PER_CODE = 8  # OPQ ranks above plain PQ when dim / m >= this
ID_BYTES = 8  # IVF stores an int64 id per vector


class NoIndexFits(InvalidInput):
    """No index for these vectors fits the memory budget."""

    def __init__(self, n: int, dim: int, budget_bytes: int, smallest: IndexChoice | None):
        self.n, self.dim, self.budget_bytes, self.smallest = n, dim, budget_bytes, smallest
        need = (
            f"the smallest, {smallest.key}, needs about {format_bytes(smallest.memory_bytes)}"
            if smallest
            else "no compressed index applies to so few vectors (needs exact Flat)"
        )
        super().__init__(f"no index for {n:,} vectors of dimension {dim} fits in {format_bytes(budget_bytes)}: {need}")


@dataclass(frozen=True)
class IndexChoice:
    """One candidate index, with what it costs."""

    key: str  # faiss.index_factory description
    kind: str  # "flat", "hnsw", "ivf_flat", "opq_ivf_pq", "ivf_pq"
    memory_bytes: int  # estimated size of the index: its file, and the RAM it takes once loaded
    train_size: int  # vectors to train on (0: no training)
    exact: bool  # search results equal brute force without tuning
    mmap: bool  # the server can memory-map its inverted lists (IVF)
    rerank: bool  # needs re-ranking from the stored embeddings to reach high recall
    reason: str

    @property
    def nlist(self) -> int:
        match = re.search(r"IVF(\d+)", self.key)
        return int(match.group(1)) if match else 0


def choose_index_keys(
    n: int,
    dim: int,
    budget_bytes: int | None = None,
    *,
    recall: float = 0.95,
    latency_ms: float | None = DEFAULT_LATENCY_MS,
) -> list[IndexChoice]:
    """Candidate indexes for `n` unit vectors of `dim`, best first, each within `budget_bytes`.

    `recall` is the recall@10 target: 1.0 allows only exact search. `latency_ms` is the time one exact
    query may take for Flat to rank first (None: no limit). Raises NoIndexFits when none fits.
    """
    if n < 1 or dim < 1:
        raise ValueError(f"need at least one vector and one dimension, got n={n}, dim={dim}")
    if not 0 < recall <= 1:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    flat = _flat(n, dim)
    flat_ms = n * dim * FLAT_NS_PER_ELEMENT / 1e6
    fast_enough = latency_ms is None or flat_ms <= latency_ms
    if n < SMALL_N or recall >= 1.0:
        ranked = [flat]
    else:
        ranked = [flat] if fast_enough else []
        nlist = ivf_lists(n)
        ranked += [_hnsw(n, dim), _ivf_flat(n, dim, nlist)]
        ranked += _pq_candidates(n, dim, nlist, budget_bytes)
        if not fast_enough:
            ranked.append(
                IndexChoice(
                    **{
                        **flat.__dict__,
                        "reason": (
                            f"exact fallback: one query is estimated at {flat_ms:.1f} ms, over the {latency_ms:g} ms target"
                        ),
                    }
                )
            )
    if budget_bytes is None:
        return ranked
    fitting = [choice for choice in ranked if choice.memory_bytes <= budget_bytes]
    if not fitting:
        raise NoIndexFits(n, dim, budget_bytes, min(ranked, key=lambda c: c.memory_bytes) if ranked else None)
    return fitting


def choose_index_key(n: int, dim: int, budget_bytes: int | None = None, **targets) -> str:
    """The best candidate's factory string."""
    return choose_index_keys(n, dim, budget_bytes, **targets)[0].key


def split_budget(budget_bytes: int | None, counts: dict[str, int]) -> dict[str, int | None]:
    """One budget for all of a version's indexes, shared in proportion to their vector counts."""
    total = sum(counts.values())
    return {name: None if budget_bytes is None else budget_bytes * count // total for name, count in counts.items()}


def ivf_lists(n: int) -> int:
    """Inverted lists for n vectors: the power of two nearest 2*sqrt(n), with 39+ points a list."""
    target = 2 ** round(math.log2(max(2 * math.sqrt(n), 1)))
    cap = 2 ** int(math.log2(max(n // MIN_POINTS_PER_LIST, 1)))
    return max(1, min(target, cap))


def estimate_bytes(key: str, n: int, dim: int) -> int:
    """Estimated size of a faiss index from `choose_index_keys` (the file, and RAM once loaded)."""
    for choice in [_flat(n, dim), _hnsw(n, dim)]:
        if choice.key == key:
            return choice.memory_bytes
    match = re.fullmatch(r"(?:OPQ(\d+)_(\d+),)?IVF(\d+),(Flat|PQ(\d+))", key)
    if not match:
        raise ValueError(f"no size estimate for index key {key!r}")
    _, dout, nlist, codes, m = match.groups()
    coarse_dim = int(dout) if dout else dim
    if codes == "Flat":
        return n * (4 * dim + ID_BYTES) + nlist_bytes(int(nlist), dim)
    total = n * (int(m) + ID_BYTES) + nlist_bytes(int(nlist), coarse_dim) + 256 * coarse_dim * 4
    return total + (dim * coarse_dim * 4 if dout else 0)


def nlist_bytes(nlist: int, dim: int) -> int:
    """The coarse quantizer's centroids and the per-list bookkeeping."""
    return nlist * (4 * dim + 48)


def _flat(n: int, dim: int) -> IndexChoice:
    return IndexChoice("Flat", "flat", n * dim * 4, 0, exact=True, mmap=False, rerank=False, reason="exact search")


def _hnsw(n: int, dim: int) -> IndexChoice:
    return IndexChoice(
        f"HNSW{HNSW_M},Flat",
        "hnsw",
        n * (4 * dim + HNSW_BYTES_PER_VECTOR),
        0,
        exact=False,
        mmap=False,
        rerank=False,
        reason="graph search: lowest latency at high recall, slowest build, RAM only",
    )


def _ivf_flat(n: int, dim: int, nlist: int) -> IndexChoice:
    key = f"IVF{nlist},Flat"
    return IndexChoice(
        key,
        "ivf_flat",
        estimate_bytes(key, n, dim),
        _train_size(n, nlist),
        exact=False,
        mmap=True,
        rerank=False,
        reason="inverted lists of full vectors: memory-mappable, quick to build",
    )


def _pq_candidates(n: int, dim: int, nlist: int, budget_bytes: int | None) -> list[IndexChoice]:
    """The OPQ and the plain PQ variant with the largest code size that fits; OPQ first where it pays."""
    out = []
    for kind in ("opq_ivf_pq", "ivf_pq"):
        options = []
        for m in PQ_CODE_SIZES:
            dout = min(dim, OPQ_MIN_DIMS_PER_CODE * m)
            if dim < 4 * m or (kind == "ivf_pq" and dim % m) or dout % m:
                continue  # m equal parts of 4+ dimensions (PQ on 2-d parts trains slowly for little gain)
            key = f"OPQ{m}_{dout},IVF{nlist},PQ{m}" if kind == "opq_ivf_pq" else f"IVF{nlist},PQ{m}"
            options.append((m, key, estimate_bytes(key, n, dim)))
        if not options:
            continue
        fitting = [option for option in options if budget_bytes is None or option[2] <= budget_bytes]
        m, key, size = (
            fitting[0] if fitting else options[-1]
        )  # the largest that fits, else the smallest (refused later)
        why = f"{m}-byte codes ({dim / m:g} dimensions a sub-quantizer), re-ranked from the stored embeddings"
        if kind == "opq_ivf_pq":
            why += "; OPQ rotation pays" if dim // m >= OPQ_MIN_DIMS_PER_CODE else "; OPQ rotation gains little here"
        train = max(_train_size(n, nlist), min(n, PQ_TRAIN_POINTS))
        out.append(IndexChoice(key, kind, size, train, exact=False, mmap=True, rerank=True, reason=why))
    opq_pays = any(c.kind == "opq_ivf_pq" and dim // _code_size(c.key) >= OPQ_MIN_DIMS_PER_CODE for c in out)
    return sorted(out, key=lambda c: (c.kind == "opq_ivf_pq") != opq_pays)


def _code_size(key: str) -> int:
    return int(key.rsplit("PQ", 1)[1])


def _train_size(n: int, nlist: int) -> int:
    return min(n, max(TRAIN_POINTS_PER_LIST * nlist, 10_000))


_UNITS = {
    "": 1,
    "B": 1,
    "K": 10**3,
    "KB": 10**3,
    "M": 10**6,
    "MB": 10**6,
    "G": 10**9,
    "GB": 10**9,
    "T": 10**12,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_bytes(text: str) -> int:
    """'2GB' -> 2_000_000_000, '512MiB' -> 536_870_912, '1.5G', '1000' (bytes). Units: B, KB/MB/GB/TB
    (powers of 1000), KiB/MiB/GiB/TiB (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 2GB, 512MiB, 1.5G)")
    value = int(float(match.group(1)) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return value


def format_bytes(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"
